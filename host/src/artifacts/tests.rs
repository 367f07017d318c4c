use std::path::Path;

use tar::EntryType;

use super::*;

/// One tar member written byte by byte, so that tests can write what `tar::Builder` refuses
/// to (`..`, absolute paths).
pub(crate) fn member(out: &mut Vec<u8>, name: &str, t: EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(t);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn tarball(members: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, link, data) in members {
        member(&mut out, name, *t, link, data);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn check(bytes: &[u8], limit: u64) -> Result<(), ArtifactError> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    archive::check_file(f.path(), limit)
}

fn refused(bytes: &[u8]) -> String {
    match check(bytes, 1 << 30) {
        Err(ArtifactError::Invalid { field, reason }) => {
            assert_eq!(field, "chunk");
            reason
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const F: EntryType = EntryType::Regular;
const D: EntryType = EntryType::Directory;
const L: EntryType = EntryType::Symlink;

#[test]
fn a_tidy_archive_passes_plain_and_gzipped() {
    let t = tarball(&[
        ("./", D, "", b""),
        ("src/", D, "", b""),
        ("src/train.py", F, "", b"print(1)"),
        ("src/main.py", L, "train.py", b""),
        ("lib", L, "src", b""),
        ("up", L, "src/..", b""),
        ("hard", EntryType::Link, "src/train.py", b""),
    ]);
    check(&t, 1 << 20).unwrap();
    check(&gzip(&t), 1 << 20).unwrap();
}

#[test]
fn entries_that_leave_the_directory_are_refused_by_name() {
    for (members, entry, why) in [
        (vec![("../x", F, "", &b"x"[..])], "../x", "\"..\""),
        (vec![("a/../../x", F, "", b"x")], "a/../../x", "\"..\""),
        (vec![("/etc/x", F, "", b"x")], "/etc/x", "absolute path"),
        (vec![("out", L, "../secret", b"")], "out", "leads out"),
        (vec![("out", L, "/etc/passwd", b"")], "out", "absolute path"),
        (
            vec![("dev", EntryType::Char, "", b"")],
            "dev",
            "device or FIFO",
        ),
        (
            vec![("blk", EntryType::Block, "", b"")],
            "blk",
            "device or FIFO",
        ),
        (
            vec![("fifo", EntryType::Fifo, "", b"")],
            "fifo",
            "device or FIFO",
        ),
        (
            vec![("h", EntryType::Link, "../etc/passwd", b"")],
            "h",
            "hard link",
        ),
        (
            vec![("h", EntryType::Link, "missing", b"")],
            "h",
            "not a file earlier",
        ),
        // Each link stays inside on its own; followed together they leave.
        (
            vec![
                ("d/", D, "", b""),
                ("d/b", L, "..", b""),
                ("d/c", L, "b/..", b""),
            ],
            "d/c",
            "leads out",
        ),
        // Writing below a link writes wherever it points.
        (
            vec![("l", L, "d", b""), ("d/", D, "", b""), ("l/x", F, "", b"x")],
            "l/x",
            "below the link",
        ),
        (vec![("loop", L, "loop", b"")], "loop", "too many links"),
    ] {
        let reason = refused(&tarball(&members));
        assert!(
            reason.contains(&format!("entry {entry:?}")) && reason.contains(why),
            "{entry}: {reason}"
        );
    }
}

#[test]
fn archives_over_the_limits_or_not_archives_are_refused() {
    let t = tarball(&[("big", F, "", &[7; 4096])]);
    assert!(check(&t, 4096).is_ok());
    let e = check(&t, 4095).unwrap_err().to_string();
    assert!(e.contains("max_unpacked_bytes"), "{e}");
    let reason = refused(b"");
    assert!(reason.contains("empty"), "{reason}");
    let reason = refused(&[b'x'; 2048]);
    assert!(reason.contains("not a readable tar archive"), "{reason}");

    // A PAX header the crate would read whole into memory.
    let mut big = Vec::new();
    member(
        &mut big,
        "pax",
        EntryType::XHeader,
        "",
        &vec![b'a'; 2 << 20],
    );
    member(&mut big, "f", F, "", b"x");
    big.extend_from_slice(&[0; 1024]);
    let reason = refused(&big);
    assert!(reason.contains("extended header"), "{reason}");

    // A PAX size that disagrees with its header: two parsers, two archives.
    let mut two = Vec::new();
    let rec = b"12 size=512\n";
    member(&mut two, "pax", EntryType::XHeader, "", rec);
    member(&mut two, "f", F, "", b"x");
    two.extend_from_slice(&[0; 1024]);
    let reason = refused(&two);
    assert!(reason.contains("PAX size"), "{reason}");
}

fn cfg(max_upload: u64) -> ArtifactsConfig {
    ArtifactsConfig {
        max_upload_bytes: max_upload,
        ..ArtifactsConfig::default()
    }
}

fn chunks(parts: Vec<Result<&'static [u8], ArtifactError>>) -> Chunks<'static> {
    Box::pin(futures::stream::iter(
        parts.into_iter().map(|p| p.map(Bytes::from_static)),
    ))
}

fn header(kind: ArtifactKind) -> UploadHeader {
    UploadHeader {
        name: "x".into(),
        kind: Some(kind),
        sha256: None,
        size: None,
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

async fn read_all(store: &ArtifactStore, uri: &str) -> Vec<u8> {
    let (_, mut content) = store.download("default", uri).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = content.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

#[tokio::test]
async fn the_directory_store_keeps_content_once_under_its_digest() {
    let data = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&cfg(1 << 20), data.path())
        .await
        .unwrap();
    let a = store
        .upload(
            "default",
            header(ArtifactKind::File),
            chunks(vec![Ok(b"hello "), Ok(b"world")]),
        )
        .await
        .unwrap();
    let digest = hex::encode(Sha256::digest(b"hello world"));
    assert_eq!(a.sha256, digest);
    assert_eq!(a.size, 11);
    let root = data.path().join("artifacts").canonicalize().unwrap();
    assert_eq!(
        a.uri,
        format!("file://{}/default/sha256/{digest}", root.display())
    );
    assert_eq!(read_all(&store, &a.uri).await, b"hello world");
    assert_eq!(store.stat("default", &a.uri).await.unwrap(), a);
    assert_eq!(
        store
            .stat("default", &format!("sha256:{}", digest.to_uppercase()))
            .await
            .unwrap(),
        a
    );
    let mut r = store.open_blocking("default", &a.uri).await.unwrap();
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello world");

    let again = store
        .upload(
            "default",
            UploadHeader {
                name: "other name".into(),
                ..header(ArtifactKind::File)
            },
            chunks(vec![Ok(b"hello world")]),
        )
        .await
        .unwrap();
    assert_eq!(again, a, "the same bytes are the same artifact");
    // The content and its record, nothing else; no upload left behind.
    assert_eq!(count_files(&root.join("default/sha256")), 2);
    assert_eq!(count_files(store.spool_dir()), 0);

    // Another tenant's artifact is not there for this one.
    let e = store.stat("other", &a.uri).await.unwrap_err();
    assert!(matches!(e, ArtifactError::NotFound(_)), "{e}");
    assert!(store.owns(&a.uri));
    assert!(!store.owns("s3://bucket/default/sha256/x"));
    let e = store.presign_get(&a.uri, Duration::from_secs(5)).await;
    assert!(matches!(e, Err(ArtifactError::Unsupported(_))), "{e:?}");
}

#[tokio::test]
async fn a_failed_upload_leaves_nothing_behind() {
    let data = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&cfg(8), data.path()).await.unwrap();
    let sha_dir = data.path().join("artifacts/default/sha256");
    let cases: Vec<(UploadHeader, Chunks<'static>, &str)> = vec![
        (
            header(ArtifactKind::File),
            chunks(vec![
                Ok(b"half"),
                Err(ArtifactError::Cancelled("client went away".into())),
            ]),
            "cut off",
        ),
        (
            header(ArtifactKind::File),
            chunks(vec![Ok(b"12345"), Ok(b"6789")]),
            "chunk: the upload is over",
        ),
        (
            UploadHeader {
                size: Some(9),
                ..header(ArtifactKind::File)
            },
            chunks(vec![]),
            "header.size: 9 bytes is over",
        ),
        (
            UploadHeader {
                size: Some(3),
                ..header(ArtifactKind::File)
            },
            chunks(vec![Ok(b"ab")]),
            "header.size: 2 bytes arrived",
        ),
        (
            UploadHeader {
                sha256: Some("0".repeat(64)),
                ..header(ArtifactKind::File)
            },
            chunks(vec![Ok(b"ab")]),
            "header.sha256: the content's sha256 is",
        ),
        (
            header(ArtifactKind::Directory),
            chunks(vec![Ok(b"notatar!")]),
            "chunk: not a readable tar",
        ),
        (
            UploadHeader {
                kind: None,
                ..header(ArtifactKind::File)
            },
            chunks(vec![Ok(b"ab")]),
            "header.kind: required",
        ),
    ];
    for (h, c, want) in cases {
        let e = store.upload("default", h, c).await.unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
        assert_eq!(count_files(&sha_dir), 0, "{want}: nothing stored");
        assert_eq!(count_files(store.spool_dir()), 0, "{want}: no upload left");
    }
}

#[tokio::test]
async fn uris_the_store_does_not_own_are_not_found_and_malformed_ones_invalid() {
    let data = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&cfg(1 << 20), data.path())
        .await
        .unwrap();
    let root = data.path().join("artifacts").canonicalize().unwrap();
    for uri in [
        format!("sha256:{}", "a".repeat(64)),
        "s3://bucket/default/sha256/abc".into(),
        "file:///etc/passwd".into(),
        format!(
            "file://{}/default/sha256/../../../etc/passwd",
            root.display()
        ),
        format!("file://{}/default/outputs/x", root.display()),
        "https://example.com/model.joblib".into(),
    ] {
        let e = store.stat("default", &uri).await.unwrap_err();
        assert!(matches!(e, ArtifactError::NotFound(_)), "{uri}: {e}");
    }
    for uri in ["", "no scheme", "sha256:xyz", "/abs/path", "file:///a\nb"] {
        match store.stat("default", uri).await.unwrap_err() {
            ArtifactError::Invalid { field, .. } => assert_eq!(field, "uri", "{uri:?}"),
            e => panic!("{uri:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn a_file_upload_becomes_a_directory_once_checked_as_one_and_lists_page() {
    let data = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&cfg(1 << 20), data.path())
        .await
        .unwrap();
    let t: &'static [u8] = Box::leak(tarball(&[("a.py", F, "", b"print(2)")]).into_boxed_slice());
    let f = store
        .upload("default", header(ArtifactKind::File), chunks(vec![Ok(t)]))
        .await
        .unwrap();
    assert_eq!(f.kind, ArtifactKind::File);
    let d = store
        .upload(
            "default",
            header(ArtifactKind::Directory),
            chunks(vec![Ok(t)]),
        )
        .await
        .unwrap();
    assert_eq!(
        (d.uri.as_str(), d.kind),
        (f.uri.as_str(), ArtifactKind::Directory)
    );
    for i in 0..4u8 {
        let b: &'static [u8] = Box::leak(vec![i; 3].into_boxed_slice());
        store
            .upload("default", header(ArtifactKind::File), chunks(vec![Ok(b)]))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = store.list("default", token.as_deref(), 2).await.unwrap();
        assert!(page.artifacts.len() <= 2);
        seen.extend(page.artifacts.into_iter().map(|a| (a.created_at, a.sha256)));
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    let e = store.list("default", Some("nope"), 2).await.err().unwrap();
    assert!(e.to_string().starts_with("page_token:"), "{e}");
}

#[tokio::test]
async fn publishing_copies_regular_files_and_never_what_links_point_at() {
    let data = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&cfg(1 << 20), data.path())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(out.path().join("sub")).unwrap();
    std::fs::write(out.path().join("model.joblib"), b"model").unwrap();
    std::fs::write(out.path().join("sub/metrics.json"), b"{}").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", out.path().join("leak")).unwrap();
    let uri = store
        .publish_dir("default", "mlgw-job1", out.path())
        .await
        .unwrap();
    let copy = PathBuf::from(uri.strip_prefix("file://").unwrap());
    assert_eq!(std::fs::read(copy.join("model.joblib")).unwrap(), b"model");
    assert_eq!(std::fs::read(copy.join("sub/metrics.json")).unwrap(), b"{}");
    assert!(!copy.join("leak").exists());
    assert!(store.owns(&uri));
    // Publishing again replaces the copy whole.
    std::fs::remove_file(out.path().join("sub/metrics.json")).unwrap();
    let again = store
        .publish_dir("default", "mlgw-job1", out.path())
        .await
        .unwrap();
    assert_eq!(again, uri);
    assert!(!copy.join("sub/metrics.json").exists());
    let e = store.publish_dir("default", "../x", out.path()).await;
    assert!(matches!(e, Err(ArtifactError::Invalid { .. })), "{e:?}");
}
