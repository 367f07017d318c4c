//! Names that fit. KServe derives DNS labels (at most 63 characters) from the
//! InferenceService's name and namespace: `<name>-predictor-<namespace>` for its host, Knative's
//! traffic tags prefix that with `latest-`/`prev-`, revisions append `-00001`, and raw
//! deployments label pods `app: isvc.<name>-predictor`. The gateway's backend names (38
//! characters today) overflow those in namespaces over 14 characters, so this target uses the
//! backend name when it fits and otherwise a shortened one, still deterministic (a retried
//! deploy lands on the same object) and made unique by a hash of the full backend name.

/// The longest names KServe derives from an InferenceService `name` in namespace `ns`.
pub fn derived(name: &str, ns: &str) -> Vec<String> {
    vec![
        format!("latest-{name}-predictor-{ns}"),
        format!("prev-{name}-predictor-{ns}"),
        format!("{name}-predictor-{ns}"),
        format!("{name}-predictor-00001"),
        format!("{name}-predictor-00001-private"),
        format!("isvc.{name}-predictor"),
    ]
}

pub const MAX_LABEL: usize = 63;
/// "mlgw-" trimmed to "mlgw", a hyphen and the hash: the shortest name worth having.
const MIN_NAME: usize = 4 + 1 + HASH_LEN;
const HASH_LEN: usize = 8;

/// The longest InferenceService name whose derived names all fit in namespace `ns`.
pub fn budget(ns: &str) -> Result<usize, String> {
    let longest_fixed = derived("", ns)
        .iter()
        .map(String::len)
        .max()
        .unwrap_or_default();
    let b = MAX_LABEL.saturating_sub(longest_fixed);
    if b < MIN_NAME {
        let most = MAX_LABEL - (longest_fixed - ns.len()) - MIN_NAME;
        return Err(format!(
            "namespace {ns:?} ({} characters) leaves no room for a name: KServe derives latest-<name>-predictor-<namespace>, which must fit in {MAX_LABEL} characters; use a namespace of at most {most} characters",
            ns.len()
        ));
    }
    Ok(b)
}

/// FNV-1a: stable across builds and platforms, unlike std's hasher.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The InferenceService name for `backend_name` in namespace `ns`.
pub fn isvc_name(backend_name: &str, ns: &str) -> Result<String, String> {
    let b = budget(ns)?;
    if backend_name.len() <= b && is_dns_1035(backend_name) {
        return Ok(backend_name.to_string());
    }
    let keep: String = backend_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .take(b - HASH_LEN - 1)
        .collect();
    let keep = keep.trim_end_matches('-');
    let keep = if keep.starts_with(|c: char| c.is_ascii_lowercase()) {
        keep.to_string()
    } else {
        format!("m{keep}")
            .chars()
            .take(b - HASH_LEN - 1)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string()
    };
    Ok(format!(
        "{keep}-{:0width$x}",
        fnv1a(backend_name) & 0xffff_ffff,
        width = HASH_LEN
    ))
}

/// A DNS-1123 label (Kubernetes namespaces, most object names).
pub fn is_dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LABEL
        && v.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && v.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A DNS-1035 label: what KServe accepts as an InferenceService name (it becomes a Service).
pub fn is_dns_1035(v: &str) -> bool {
    is_dns_label(v) && v.starts_with(|c: char| c.is_ascii_lowercase())
}

/// The host (with its port, if any) of an http(s) URL.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    (!host.is_empty() && !host.contains('@')).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the host's `domain::backend_name` makes of a gateway id today (38 characters).
    const BACKEND: &str = "mlgw-e0193ab4c5d6e7f8091a2b3c4d5e6f708";

    #[test]
    fn todays_backend_names_overflow_long_namespaces() {
        assert_eq!(BACKEND.len(), 38);
        assert!(
            derived(BACKEND, "team-a-production")
                .iter()
                .any(|n| n.len() > MAX_LABEL)
        );
    }

    #[test]
    fn every_derived_name_fits_in_every_allowed_namespace() {
        for len in 1..=32 {
            let ns = "n".repeat(len);
            let name = isvc_name(BACKEND, &ns).unwrap();
            assert!(is_dns_1035(&name), "{name}");
            for d in derived(&name, &ns) {
                assert!(d.len() <= MAX_LABEL, "{ns}: {d} is {} long", d.len());
            }
        }
    }

    #[test]
    fn short_namespaces_keep_the_backend_name() {
        assert_eq!(isvc_name(BACKEND, "team-a").unwrap(), BACKEND);
    }

    #[test]
    fn shortened_names_are_deterministic_and_distinct() {
        let ns = "ml-platform-production-eu1";
        let a = isvc_name(BACKEND, ns).unwrap();
        assert_eq!(a, isvc_name(BACKEND, ns).unwrap());
        assert!(a.starts_with("mlgw-e0193"), "{a}");
        assert_eq!(a.len(), budget(ns).unwrap());
        // Ids that differ only past the kept prefix still get different names.
        let other = format!("{}9", &BACKEND[..BACKEND.len() - 1]);
        assert_ne!(a, isvc_name(&other, ns).unwrap());
    }

    #[test]
    fn too_long_a_namespace_says_how_long_it_may_be() {
        let e = isvc_name(BACKEND, &"n".repeat(33)).unwrap_err();
        assert!(e.contains("at most 32 characters"), "{e}");
        assert!(isvc_name(BACKEND, &"n".repeat(32)).is_ok());
    }

    #[test]
    fn labels_and_hosts() {
        assert!(is_dns_label("team-a"));
        assert!(!is_dns_label("Team"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_1035("1a"));
        assert_eq!(
            url_host("http://a.b.example.com/v2"),
            Some("a.b.example.com")
        );
        assert_eq!(url_host("https://10.0.0.1:8443"), Some("10.0.0.1:8443"));
        assert_eq!(url_host("ftp://x"), None);
        assert_eq!(url_host("http://"), None);
        assert_eq!(url_host("http://u@h"), None);
    }
}
