//! The artifact store through the real gateway binary, on both stores: the directory store
//! under the data dir, and the S3 store against moto's S3 on loopback, read back with the S3
//! API itself. Uploads that break — cut off, oversized, mismatched, hostile tarballs — must
//! leave no object and no temporary file.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use futures::StreamExt;
use mlgw::api::pb::{self, upload_request::Part};
use mlgw_tests::moto::Moto;
use mlgw_tests::*;
use sha2::Digest;
use tonic::transport::Channel;
use tonic::{Code, Status};

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const BUCKET: &str = "mlgw-artifacts";
const PREFIX: &str = "team-a";
const MIB: usize = 1 << 20;
/// Small limits, so that going over them is cheap.
const LIMITS: &str = "max_upload_bytes = 4194304\nmax_unpacked_bytes = 8388608";
const TARGET: &str = "[targets.local]\nplugin = \"local\"\n[targets.local.grants.process]\n";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Dir,
    S3,
}

struct Setup {
    gw: Gateway,
    moto: Option<Moto>,
    _tmp: tempfile::TempDir,
}

impl Setup {
    async fn new(store: Store) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (gw, moto) = match store {
            Store::Dir => {
                let config = format!("{TARGET}[artifacts]\n{LIMITS}\n");
                (Gateway::start(BIN, &data, Some(&config)).await, None)
            }
            Store::S3 => {
                let moto = Moto::start(BUCKET).await;
                let config = format!("{TARGET}{}", moto.artifacts_config(BUCKET, PREFIX, LIMITS));
                let gw =
                    Gateway::start_with_env(BIN, &data, Some(&config), moto.gateway_env()).await;
                (gw, Some(moto))
            }
        };
        Self {
            gw,
            moto,
            _tmp: tmp,
        }
    }

    fn spool(&self) -> PathBuf {
        self.gw.data_dir.join("tmp/uploads")
    }

    fn spooled(&self) -> Vec<PathBuf> {
        files_below(&self.spool())
    }

    /// Every object the store holds, seen past the gateway: the bucket's keys under the
    /// prefix, or the content files under the store directory (records beside them aside).
    async fn stored(&self) -> Vec<String> {
        match &self.moto {
            Some(m) => m.keys(BUCKET, PREFIX).await,
            None => files_below(&self.gw.data_dir.join("artifacts"))
                .into_iter()
                .map(|p| p.display().to_string())
                .filter(|p| !p.ends_with(".json"))
                .collect(),
        }
    }

    /// The bytes stored for `uri`, read past the gateway.
    async fn read_back(&self, uri: &str) -> Vec<u8> {
        match &self.moto {
            Some(m) => {
                let key = uri
                    .strip_prefix(&format!("s3://{BUCKET}/"))
                    .unwrap_or_else(|| panic!("{uri} is not in the bucket"));
                m.get(BUCKET, key).await
            }
            None => std::fs::read(file_path(uri)).unwrap(),
        }
    }

    async fn mlgw(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(BIN)
            .arg("--server")
            .arg(&self.gw.addr)
            .args(args)
            .output()
            .await
            .unwrap()
    }
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Bytes that do not compress to nothing and differ by `seed`.
fn content(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u64 * 7919 + seed as u64 * 31) % 251) as u8)
        .collect()
}

fn header(name: &str, kind: pb::ArtifactKind, content: &[u8]) -> pb::UploadHeader {
    pb::UploadHeader {
        name: name.into(),
        kind: kind as i32,
        sha256: sha256(content),
        size: content.len() as u64,
    }
}

fn messages(header: pb::UploadHeader, content: &[u8]) -> Vec<pb::UploadRequest> {
    let mut msgs = vec![pb::UploadRequest {
        part: Some(Part::Header(header)),
    }];
    msgs.extend(content.chunks(256 * 1024).map(|c| pb::UploadRequest {
        part: Some(Part::Chunk(c.to_vec())),
    }));
    msgs
}

async fn upload(
    c: &mut ArtifactServiceClient<Channel>,
    header: pb::UploadHeader,
    content: &[u8],
) -> Result<pb::Artifact, Status> {
    c.upload(futures::stream::iter(messages(header, content)))
        .await
        .map(|r| r.into_inner())
}

async fn download(c: &mut ArtifactServiceClient<Channel>, uri: &str) -> Result<Vec<u8>, Status> {
    let mut s = c
        .download(pb::DownloadArtifactRequest { uri: uri.into() })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        assert!(chunk.data.len() <= MIB, "a chunk of {}", chunk.data.len());
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

async fn stat(c: &mut ArtifactServiceClient<Channel>, uri: &str) -> Result<pb::Artifact, Status> {
    c.stat(pb::StatArtifactRequest { uri: uri.into() })
        .await
        .map(|r| r.into_inner())
}

/// A tar member written byte by byte: `tar::Builder` refuses to write the hostile ones.
fn member(out: &mut Vec<u8>, name: &str, t: tar::EntryType, link: &str, data: &[u8]) {
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

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

/// A code directory as a tar.gz, as `mlgw artifacts put` would send it.
fn code_tarball() -> Vec<u8> {
    let mut t = Vec::new();
    member(&mut t, "src/", tar::EntryType::Directory, "", b"");
    member(
        &mut t,
        "src/train.py",
        tar::EntryType::Regular,
        "",
        b"print('hi')\n",
    );
    member(
        &mut t,
        "main.py",
        tar::EntryType::Symlink,
        "src/train.py",
        b"",
    );
    t.extend_from_slice(&[0; 1024]);
    gzip(&t)
}

async fn round_trip(store: Store) {
    let s = Setup::new(store).await;
    let mut c = s.gw.artifacts().await;
    let bytes = content(2 * MIB + 12345, 1);
    let digest = sha256(&bytes);
    // A name for people, with what HTTP headers (S3 metadata) cannot carry as it is.
    let name = "modèle v1.bin";
    let a = upload(&mut c, header(name, pb::ArtifactKind::File, &bytes), &bytes)
        .await
        .unwrap();
    assert_eq!(
        (a.sha256.as_str(), a.size, a.kind, a.name.as_str()),
        (
            digest.as_str(),
            bytes.len() as u64,
            pb::ArtifactKind::File as i32,
            name
        )
    );
    match store {
        Store::S3 => assert_eq!(
            a.uri,
            format!("s3://{BUCKET}/{PREFIX}/default/sha256/{digest}")
        ),
        Store::Dir => assert!(
            a.uri.starts_with("file:///") && a.uri.ends_with(&format!("/default/sha256/{digest}")),
            "{}",
            a.uri
        ),
    }
    assert_eq!(download(&mut c, &a.uri).await.unwrap(), bytes);
    assert_eq!(s.read_back(&a.uri).await, bytes, "stored as sent");
    assert_eq!(stat(&mut c, &a.uri).await.unwrap(), a);
    assert_eq!(stat(&mut c, &format!("sha256:{digest}")).await.unwrap(), a);
    assert_eq!(
        download(&mut c, &format!("sha256:{digest}")).await.unwrap(),
        bytes
    );

    // The same bytes again, under another name and without a digest: one object, one URI.
    let again = upload(
        &mut c,
        pb::UploadHeader {
            name: "copy.bin".into(),
            kind: pb::ArtifactKind::File as i32,
            ..Default::default()
        },
        &bytes,
    )
    .await
    .unwrap();
    assert_eq!(again, a);
    assert_eq!(s.stored().await.len(), 1, "{:?}", s.stored().await);

    // A tarball first sent as a file, then as a directory: checked as one, it is one from
    // then on — the same object, the same URI.
    let tgz = code_tarball();
    let f = upload(
        &mut c,
        header("src.tgz", pb::ArtifactKind::File, &tgz),
        &tgz,
    )
    .await
    .unwrap();
    assert_eq!(f.kind, pb::ArtifactKind::File as i32);
    let d = upload(
        &mut c,
        header("src", pb::ArtifactKind::Directory, &tgz),
        &tgz,
    )
    .await
    .unwrap();
    assert_eq!(d.kind, pb::ArtifactKind::Directory as i32);
    assert_eq!(
        (d.uri.as_str(), d.name.as_str()),
        (f.uri.as_str(), "src.tgz")
    );
    assert_eq!(
        stat(&mut c, &d.uri).await.unwrap().kind,
        pb::ArtifactKind::Directory as i32
    );
    assert_eq!(s.read_back(&d.uri).await, tgz);
    // Unpacked as a target will: through the store's own reader, with the tar crate.
    let unpacked = tempfile::tempdir().unwrap();
    let bytes_back = download(&mut c, &d.uri).await.unwrap();
    tar::Archive::new(mlgw::artifacts::archive_reader(std::io::Cursor::new(bytes_back)).unwrap())
        .unpack(unpacked.path())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(unpacked.path().join("main.py")).unwrap(),
        "print('hi')\n"
    );

    let listed = c
        .list(pb::ListArtifactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut uris: Vec<_> = listed.artifacts.iter().map(|x| x.uri.as_str()).collect();
    assert!(
        listed
            .artifacts
            .windows(2)
            .all(|w| millis(&w[0]) >= millis(&w[1])),
        "newest first: {listed:?}"
    );
    uris.sort();
    let mut want = [d.uri.as_str(), a.uri.as_str()];
    want.sort();
    assert_eq!(uris, want);
    assert_eq!(s.stored().await.len(), 2);
    assert!(s.spooled().is_empty(), "{:?}", s.spooled());
}

#[tokio::test]
async fn files_and_directories_round_trip_in_the_directory_store() {
    round_trip(Store::Dir).await;
}

#[tokio::test]
async fn files_and_directories_round_trip_in_s3() {
    round_trip(Store::S3).await;
}

fn millis(a: &pb::Artifact) -> i64 {
    a.created_at
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .unwrap_or(0)
}

fn field(e: &Status) -> &str {
    e.metadata()
        .get("mlgw-field")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn broken_uploads(store: Store) {
    let s = Setup::new(store).await;
    let mut c = s.gw.artifacts().await;

    // Cut off: the client sends the header and part of the content, then dies with its
    // stream still open — its own runtime and connection dropped, as a killed process's are.
    let bytes = content(3 * MIB, 2);
    let msgs = messages(header("cut", pb::ArtifactKind::File, &bytes), &bytes[..MIB]);
    let addr = s.gw.addr.clone();
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let stream = futures::stream::iter(msgs).chain(futures::stream::pending());
            let mut c = ArtifactServiceClient::new(ch);
            tokio::select! {
                r = c.upload(stream) => panic!("the upload ended on its own: {r:?}"),
                _ = killed => {}
            }
        });
        // Dropping the runtime drops the connection's tasks: the socket closes mid-stream.
        drop(rt);
    });
    wait_for(Duration::from_secs(30), "the upload to be spooled", || {
        let spooled = s.spooled();
        async move {
            spooled
                .iter()
                .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() as usize == MIB))
                .then_some(())
        }
    })
    .await;
    kill.send(()).unwrap();
    client.join().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the cut-off upload's temporary file to be removed",
        || {
            let empty = s.spooled().is_empty();
            async move { empty.then_some(()) }
        },
    )
    .await;
    assert!(s.stored().await.is_empty(), "{:?}", s.stored().await);

    // Over the limit, said in the header: refused before any content.
    let big = content(5 * MIB, 3);
    let e = upload(&mut c, header("big", pb::ArtifactKind::File, &big), &[])
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), field(&e)),
        (Code::InvalidArgument, "header.size"),
        "{e:?}"
    );
    assert!(e.message().contains("max_upload_bytes"), "{}", e.message());
    // Over the limit, not said: refused once the content passes it.
    let e = upload(
        &mut c,
        pb::UploadHeader {
            name: "big".into(),
            kind: pb::ArtifactKind::File as i32,
            ..Default::default()
        },
        &big,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), field(&e)),
        (Code::InvalidArgument, "chunk"),
        "{e:?}"
    );
    // Not what the header's digest says.
    let small = content(1000, 4);
    let mut h = header("x", pb::ArtifactKind::File, &small);
    h.sha256 = sha256(b"something else");
    let e = upload(&mut c, h, &small).await.unwrap_err();
    assert_eq!(
        (e.code(), field(&e)),
        (Code::InvalidArgument, "header.sha256"),
        "{e:?}"
    );
    // Shorter than the header said (a client that stopped early but closed its stream).
    let mut h = header("x", pb::ArtifactKind::File, &small);
    h.size += 1;
    let e = upload(&mut c, h, &small).await.unwrap_err();
    assert_eq!(
        (e.code(), field(&e)),
        (Code::InvalidArgument, "header.size"),
        "{e:?}"
    );

    assert!(s.stored().await.is_empty(), "{:?}", s.stored().await);
    assert!(s.spooled().is_empty(), "{:?}", s.spooled());
    // And the gateway still takes a good one.
    upload(&mut c, header("ok", pb::ArtifactKind::File, &small), &small)
        .await
        .unwrap();
    assert_eq!(s.stored().await.len(), 1);
}

#[tokio::test]
async fn broken_uploads_leave_nothing_in_the_directory_store() {
    broken_uploads(Store::Dir).await;
}

#[tokio::test]
async fn broken_uploads_leave_nothing_in_s3() {
    broken_uploads(Store::S3).await;
}

async fn hostile_tarballs(store: Store) {
    let s = Setup::new(store).await;
    let mut c = s.gw.artifacts().await;
    use tar::EntryType::*;
    for (entry, t, link, why) in [
        ("../x", Regular, "", "\"..\""),
        ("/etc/cron.d/x", Regular, "", "absolute path"),
        (
            "out",
            Symlink,
            "../../etc/passwd",
            "leads out of the directory",
        ),
        ("null", Char, "", "device or FIFO"),
    ] {
        let mut tarball = Vec::new();
        member(&mut tarball, "ok.py", Regular, "", b"x = 1\n");
        member(&mut tarball, entry, t, link, b"");
        tarball.extend_from_slice(&[0; 1024]);
        for bytes in [tarball.clone(), gzip(&tarball)] {
            let e = upload(
                &mut c,
                header("evil", pb::ArtifactKind::Directory, &bytes),
                &bytes,
            )
            .await
            .unwrap_err();
            assert_eq!(
                (e.code(), field(&e)),
                (Code::InvalidArgument, "chunk"),
                "{entry}: {e:?}"
            );
            assert!(
                e.message().contains(&format!("entry {entry:?}")) && e.message().contains(why),
                "{entry}: {}",
                e.message()
            );
        }
    }
    assert!(s.stored().await.is_empty(), "{:?}", s.stored().await);
    assert!(s.spooled().is_empty(), "{:?}", s.spooled());
}

#[tokio::test]
async fn hostile_tarballs_are_refused_naming_the_entry_in_the_directory_store() {
    hostile_tarballs(Store::Dir).await;
}

#[tokio::test]
async fn hostile_tarballs_are_refused_naming_the_entry_in_s3() {
    hostile_tarballs(Store::S3).await;
}

async fn unknown_uris(store: Store) {
    let s = Setup::new(store).await;
    let mut c = s.gw.artifacts().await;
    let zeros = "0".repeat(64);
    for uri in [
        format!("sha256:{zeros}"),
        format!("s3://{BUCKET}/{PREFIX}/default/sha256/{zeros}"),
        format!("s3://another-bucket/default/sha256/{zeros}"),
        "file:///etc/passwd".to_string(),
        "https://example.com/model.joblib".into(),
    ] {
        let e = stat(&mut c, &uri).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{uri}: {e:?}");
        let e = download(&mut c, &uri).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{uri}: {e:?}");
    }
    for uri in ["", "model.joblib", "/abs/path", "sha256:abc"] {
        let e = stat(&mut c, uri).await.unwrap_err();
        assert_eq!(
            (e.code(), field(&e)),
            (Code::InvalidArgument, "uri"),
            "{uri:?}: {e:?}"
        );
    }
}

#[tokio::test]
async fn unknown_uris_are_not_found_and_malformed_ones_invalid_in_the_directory_store() {
    unknown_uris(Store::Dir).await;
}

#[tokio::test]
async fn unknown_uris_are_not_found_and_malformed_ones_invalid_in_s3() {
    unknown_uris(Store::S3).await;
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "mlgw failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A code directory with what `.gitignore` and `.mlgwignore` leave out.
fn code_dir(root: &Path) {
    std::fs::create_dir_all(root.join("pkg/__pycache__")).unwrap();
    std::fs::write(root.join("train.py"), "print('training')\n").unwrap();
    std::fs::write(root.join("pkg/util.py"), "X = 1\n").unwrap();
    std::fs::write(root.join("pkg/__pycache__/util.pyc"), "junk").unwrap();
    std::fs::write(root.join("data.csv"), "1,2,3\n").unwrap();
    std::fs::write(root.join(".gitignore"), "__pycache__/\n").unwrap();
    std::fs::write(root.join(".mlgwignore"), "*.csv\n").unwrap();
    std::os::unix::fs::symlink("train.py", root.join("main.py")).unwrap();
}

async fn cli(store: Store) {
    let s = Setup::new(store).await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    code_dir(&src);

    let uri = stdout(&s.mlgw(&["artifacts", "put", src.to_str().unwrap()]).await)
        .trim()
        .to_string();
    assert!(
        uri.starts_with("file:///") || uri.starts_with("s3://"),
        "{uri}"
    );
    let again = stdout(&s.mlgw(&["artifacts", "put", src.to_str().unwrap()]).await);
    assert_eq!(
        again.trim(),
        uri,
        "the same code packs the same and uploads once"
    );

    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&s.mlgw(&["artifacts", "ls", "-o", "json"]).await)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["uri"], uri.as_str());
    assert_eq!(listed[0]["kind"], "directory");
    assert_eq!(listed[0]["name"], "src");
    let table = stdout(&s.mlgw(&["artifacts", "ls"]).await);
    assert!(
        table.contains(&uri) && table.contains("directory"),
        "{table}"
    );

    let dest = work.path().join("back");
    stdout(
        &s.mlgw(&["artifacts", "get", &uri, "--out", dest.to_str().unwrap()])
            .await,
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("main.py")).unwrap(),
        "print('training')\n"
    );
    assert_eq!(
        std::fs::read_link(dest.join("main.py")).unwrap(),
        Path::new("train.py")
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("pkg/util.py")).unwrap(),
        "X = 1\n"
    );
    assert!(!dest.join("data.csv").exists(), ".mlgwignore excludes");
    assert!(
        !dest.join("pkg/__pycache__").exists(),
        ".gitignore excludes"
    );

    // A file goes as it is, and comes back to a path or to stdout.
    let model = work.path().join("model.joblib");
    let bytes = content(3 * MIB / 2, 5);
    std::fs::write(&model, &bytes).unwrap();
    let file_uri = stdout(
        &s.mlgw(&["artifacts", "put", model.to_str().unwrap(), "--name", "m"])
            .await,
    )
    .trim()
    .to_string();
    let back = work.path().join("model.back");
    stdout(
        &s.mlgw(&[
            "artifacts",
            "get",
            &file_uri,
            "--out",
            back.to_str().unwrap(),
        ])
        .await,
    );
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    let piped = s.mlgw(&["artifacts", "get", &file_uri, "--out", "-"]).await;
    assert!(piped.status.success());
    assert_eq!(piped.stdout, bytes);

    // A link out of the directory: refused while packing, nothing uploaded.
    let evil = work.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(evil.join("ok.py"), "").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", evil.join("passwd")).unwrap();
    let before = s.stored().await;
    let o = s.mlgw(&["artifacts", "put", evil.to_str().unwrap()]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("evil/passwd") && err.contains("leads out of the directory"),
        "{err}"
    );
    let o = s
        .mlgw(&["submit", "--code", evil.to_str().unwrap(), "--", "true"])
        .await;
    assert!(
        !o.status.success(),
        "a job whose code was refused is not submitted"
    );
    assert_eq!(s.stored().await, before);

    // submit --code: packed and uploaded the same way; the job's record carries the URI.
    let id = stdout(
        &s.mlgw(&["submit", "--code", src.to_str().unwrap(), "--", "true"])
            .await,
    )
    .trim()
    .to_string();
    let job =
        s.gw.training()
            .await
            .get(pb::GetJobRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(job.spec.unwrap().code_uri, uri);
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&s.mlgw(&["get", &id, "-o", "json"]).await)).unwrap();
    assert_eq!(shown["code_uri"], uri.as_str());
    let jobs =
        s.gw.training()
            .await
            .list(pb::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(jobs.jobs.len(), 1, "only the job whose code was good");
}

#[tokio::test]
async fn the_cli_puts_gets_lists_and_submits_code_in_the_directory_store() {
    cli(Store::Dir).await;
}

#[tokio::test]
async fn the_cli_puts_gets_lists_and_submits_code_in_s3() {
    cli(Store::S3).await;
}

/// grpcurl and other generic tools find the service as they find the others.
#[tokio::test]
async fn the_service_answers_health_checks_and_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let s = Setup::new(Store::Dir).await;
    let r = HealthClient::new(s.gw.channel().await)
        .check(HealthCheckRequest {
            service: "mlgw.v1.ArtifactService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut refl = ServerReflectionClient::new(s.gw.channel().await)
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        refl.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "mlgw.v1.ArtifactService"),
        "{:?}",
        list.service
    );
}
