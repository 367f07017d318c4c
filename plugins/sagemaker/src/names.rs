//! SageMaker's naming rules and the names this target gives its objects. Checked before a
//! request leaves, so a name SageMaker would refuse is reported against the field it came from
//! rather than as a ValidationException later.

pub use mlgw_plugin_sdk::job_env::{env_suffix, is_valid_env_name as is_env_name};
use mlgw_plugin_sdk::{BackendError, internal};

/// Training jobs, models, endpoint configs, endpoints and variants.
pub const MAX_NAME: usize = 63;
pub const MAX_CHANNEL_NAME: usize = 64;
pub const MAX_S3_URI: usize = 1024;

/// `^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$`: letters, digits and hyphens, starting and ending with
/// a letter or digit, at most 63 in all.
pub fn is_resource_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `backend_name` followed by `suffix`: the host only lets a call touch objects named so.
/// The backend name comes from the gateway, not from the request, so a name SageMaker would
/// refuse is the gateway's fault: internal, not invalid-spec.
pub fn resource_name(backend_name: &str, suffix: &str) -> Result<String, BackendError> {
    let name = format!("{backend_name}{suffix}");
    if is_resource_name(&name) {
        Ok(name)
    } else {
        Err(internal(format!(
            "the backend name {backend_name:?}{} makes {name:?} ({} characters), which SageMaker refuses: names are at most {MAX_NAME} letters, digits and hyphens, starting and ending with a letter or digit",
            if suffix.is_empty() {
                String::new()
            } else {
                format!(" with the suffix {suffix:?}")
            },
            name.len()
        )))
    }
}

/// A revision's model or endpoint config: `<backend-name>-r<revision>-<digest>`. The digest is
/// of what the object holds, so a retry of the same update lands on the same name (and adopts
/// what an interrupted attempt created) while an update with another spec at the same revision
/// (the first attempt failed, the record kept its revision) can never pick up the stale one.
pub fn revision_name(
    backend_name: &str,
    revision: u32,
    digest: u32,
) -> Result<String, BackendError> {
    resource_name(backend_name, &format!("-r{revision}-{digest:08x}"))
}

/// The revision in a name `revision_name` made, if it is one.
pub fn revision_of(backend_name: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(backend_name)?.strip_prefix("-r")?;
    let (rev, digest) = rest.split_once('-')?;
    (digest.len() == 8 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| rev.parse().ok())
        .flatten()
}

/// FNV-1a: small, stable across builds and platforms, and enough to tell two specs apart.
pub fn digest(bytes: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

/// `[A-Za-z0-9\.\-_]+`, at most 64.
pub fn is_channel_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CHANNEL_NAME
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

/// `ml.<family>.<size>`, e.g. ml.m5.large or ml.p4d.24xlarge.
pub fn is_instance_type(s: &str) -> bool {
    let mut parts = s.split('.');
    parts.next() == Some("ml")
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
}

/// `s3://bucket/...` within SageMaker's length limit; the reason why not otherwise.
pub fn check_s3_uri(uri: &str) -> Result<(), String> {
    let bucket = uri
        .strip_prefix("s3://")
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match bucket {
        None => Err(format!("{} is not an s3:// URI", shown(uri))),
        Some("") => Err(format!("{} names no bucket", shown(uri))),
        Some(_) if uri.len() > MAX_S3_URI => Err(format!(
            "the URI is {} characters; SageMaker takes at most {MAX_S3_URI}",
            uri.len()
        )),
        Some(_) => Ok(()),
    }
}

/// A value quoted for a message, cut so that an error never grows with the input.
pub fn shown(s: &str) -> String {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &s[..end])
}

/// Up to `max` items joined by ", ", then how many more there are.
pub fn listed<'a>(items: impl IntoIterator<Item = &'a str>, max: usize) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    if items.is_empty() {
        return "none".into();
    }
    let mut s = items[..items.len().min(max)].join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sagemaker_resource_names() {
        for ok in ["a", "mlgw-j0193abcd", "a--b", "A1", &"x".repeat(63)] {
            assert!(is_resource_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", "é", &"x".repeat(64)] {
            assert!(!is_resource_name(bad), "{bad}");
        }
    }

    #[test]
    fn names_are_the_backend_name_plus_a_suffix() {
        assert_eq!(resource_name("mlgw-j1", "").unwrap(), "mlgw-j1");
        assert_eq!(
            revision_name("mlgw-e1", 3, 0xab).unwrap(),
            "mlgw-e1-r3-000000ab"
        );
        assert_eq!(revision_of("mlgw-e1", "mlgw-e1-r3-000000ab"), Some(3));
        assert_eq!(revision_of("mlgw-e1", "mlgw-e1-r3"), None);
        assert_eq!(revision_of("mlgw-e1", "other-r3-000000ab"), None);
        assert_eq!(revision_of("mlgw-e1", "mlgw-e1-rx-000000ab"), None);
    }

    #[test]
    fn long_backend_names_are_refused_not_cut() {
        // The host's own names: "mlgw-" and a 33-character id.
        let host = format!("mlgw-e{}", "0".repeat(32));
        let n = revision_name(&host, u32::MAX, u32::MAX).unwrap();
        assert!(n.len() <= MAX_NAME, "{n}");

        let long = "b".repeat(50);
        assert_eq!(resource_name(&long, "").unwrap(), long);
        // 50 + "-r1-" + 8 = 62 fits; 50 + "-r10-" + 8 = 63 fits; one more digit does not.
        assert!(revision_name(&long, 10, 0).is_ok());
        match revision_name(&long, 100, 0) {
            Err(BackendError::Internal(m)) => {
                assert!(m.contains("64 characters"), "{m}");
                assert!(m.contains("-r100-00000000"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resource_name(&"j".repeat(64), ""),
            Err(BackendError::Internal(_))
        ));
        assert!(matches!(
            resource_name("mlgw_j1", ""),
            Err(BackendError::Internal(_))
        ));
    }

    #[test]
    fn digests_are_stable_and_tell_inputs_apart() {
        // Pinned: a digest that changed between builds would orphan what a retry should adopt.
        assert_eq!(digest(b""), 0xcbf29ce4 ^ 0x84222325);
        assert_eq!(digest(b"model"), digest(b"model"));
        assert_ne!(digest(b"model-a"), digest(b"model-b"));
    }

    #[test]
    fn channel_and_env_names() {
        for ok in ["train", "val.set", "a-b_c", &"c".repeat(64)] {
            assert!(is_channel_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"c".repeat(65)] {
            assert!(!is_channel_name(bad), "{bad}");
        }
        assert!(is_env_name("_A1"));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
        assert_eq!(env_suffix("learning-rate"), "LEARNING_RATE");
        assert_eq!(env_suffix("val.set"), "VAL_SET");
    }

    #[test]
    fn instance_types_and_s3_uris() {
        assert!(is_instance_type("ml.m5.large"));
        assert!(is_instance_type("ml.p4d.24xlarge"));
        for bad in [
            "m5.large",
            "ml.m5",
            "ml..large",
            "ml.m5.large.x",
            "ml.m5.la rge",
        ] {
            assert!(!is_instance_type(bad), "{bad}");
        }
        check_s3_uri("s3://bucket").unwrap();
        check_s3_uri("s3://bucket/key/").unwrap();
        assert!(check_s3_uri("s3://").unwrap_err().contains("no bucket"));
        assert!(check_s3_uri("s3:///key").unwrap_err().contains("no bucket"));
        assert!(
            check_s3_uri("file:///x")
                .unwrap_err()
                .contains("not an s3://")
        );
        let long = format!("s3://b/{}", "k".repeat(1020));
        assert!(check_s3_uri(&long).unwrap_err().contains("at most 1024"));
    }

    #[test]
    fn messages_stay_small() {
        assert_eq!(shown("ab"), "\"ab\"");
        assert!(shown(&"é".repeat(500)).len() < 200);
        assert_eq!(listed(["a", "b", "c"], 2), "a, b and 1 more");
        assert_eq!(listed([], 2), "none");
    }
}
