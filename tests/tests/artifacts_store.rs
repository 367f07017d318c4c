//! The S3 artifact store's API that the gateway's own code calls — presigned URLs, blocking
//! reads for unpacking, publishing a job's outputs — against moto's S3 on loopback, read back
//! with plain HTTP and the S3 API. The store is opened in this process (no RPC hands these
//! out), and it finds its credentials where the gateway does, in the environment — so this is
//! the only test in its binary, and the environment is set before anything else here reads it.
//!
//! Moto serves a presigned URL without checking its signature or its expiry (its S3
//! authenticates only the Authorization header), so that a URL stops working after its
//! lifetime is shown against s3rver, which refuses it as S3 does.

use std::io::Read;
use std::time::Duration;

use mlgw::artifacts::{ArtifactError, ArtifactKind, ArtifactStore, UploadHeader};
use mlgw::config::{ArtifactStoreKind, ArtifactsConfig, S3StoreConfig};
use mlgw_tests::moto::{self, Moto, S3rver};

const BUCKET: &str = "mlgw-presign";

fn query(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

#[tokio::test]
async fn presigned_urls_blocking_reads_and_published_outputs() {
    // Both servers first: the environment is set below, before anything reads it.
    let s3rver = S3rver::start("presign").await;
    let moto = Moto::start(BUCKET).await;
    for (k, v) in moto.gateway_env() {
        // SAFETY: the only test in this binary, on a current-thread runtime: no other thread
        // of this process reads the environment while it is set.
        unsafe { std::env::set_var(k, v) };
    }
    let cfg = ArtifactsConfig {
        store: ArtifactStoreKind::S3,
        s3: Some(S3StoreConfig {
            bucket: BUCKET.into(),
            prefix: "p".into(),
            region: Some(moto::REGION.into()),
            endpoint_url: Some(moto.endpoint.clone()),
            force_path_style: true,
        }),
        presign_max_seconds: 60,
        ..ArtifactsConfig::default()
    };
    let data = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&cfg, data.path()).await.unwrap();
    let body: &'static [u8] = b"weights and biases";
    let a = store
        .upload(
            "default",
            UploadHeader {
                name: "model.bin".into(),
                kind: Some(ArtifactKind::File),
                sha256: None,
                size: None,
            },
            Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(body))])),
        )
        .await
        .unwrap();

    let url = store
        .presign_get(&a.uri, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(url.starts_with(&moto.endpoint), "{url}");
    assert_eq!(query(&url, "X-Amz-Expires").as_deref(), Some("5"), "{url}");
    assert!(
        query(&url, "X-Amz-Signature").is_some_and(|s| s.len() == 64),
        "{url}"
    );
    assert!(
        query(&url, "X-Amz-Credential").is_some_and(|c| c.starts_with(moto::ACCESS_KEY_ID)),
        "{url}"
    );
    // Plain HTTP, no credentials: the URL alone is the permission.
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), body);

    // Never longer than the operator allows.
    let url = store
        .presign_get(&a.uri, Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(query(&url, "X-Amz-Expires").as_deref(), Some("60"), "{url}");

    let missing = a.uri.replace(&a.sha256, &"0".repeat(64));
    let e = store
        .presign_get(&missing, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, ArtifactError::NotFound(_)), "{e}");
    let e = store
        .presign_get("s3://another-bucket/p/x", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, ArtifactError::NotFound(_)), "{e}");

    // A blocking reader, as unpacking on the blocking pool reads it.
    let mut r = store.open_blocking("default", &a.uri).await.unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        r.read_to_end(&mut v).map(|_| v)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(read, body);

    // A job's outputs: every regular file, under the tenant's outputs prefix; never what a
    // link planted among them points at.
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(out.path().join("sub")).unwrap();
    std::fs::write(out.path().join("model.joblib"), b"model").unwrap();
    std::fs::write(out.path().join("sub/metrics.json"), b"{}").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", out.path().join("passwd")).unwrap();
    let uri = store
        .publish_dir("default", "mlgw-job1", out.path())
        .await
        .unwrap();
    assert_eq!(uri, format!("s3://{BUCKET}/p/default/outputs/mlgw-job1/"));
    assert!(store.owns(&uri));
    let mut keys = moto.keys(BUCKET, "p/default/outputs/").await;
    keys.sort();
    assert_eq!(
        keys,
        [
            "p/default/outputs/mlgw-job1/model.joblib",
            "p/default/outputs/mlgw-job1/sub/metrics.json"
        ]
    );
    assert_eq!(
        moto.get(BUCKET, "p/default/outputs/mlgw-job1/model.joblib")
            .await,
        b"model"
    );

    // A presigned URL works until its lifetime is over, then S3 refuses it.
    let cfg = ArtifactsConfig {
        s3: Some(S3StoreConfig {
            bucket: "presign".into(),
            prefix: String::new(),
            region: Some(moto::REGION.into()),
            endpoint_url: Some(s3rver.endpoint.clone()),
            force_path_style: true,
        }),
        ..cfg
    };
    let data = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(&cfg, data.path()).await.unwrap();
    let a = store
        .upload(
            "default",
            UploadHeader {
                name: "model.bin".into(),
                kind: Some(ArtifactKind::File),
                sha256: None,
                size: None,
            },
            Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(body))])),
        )
        .await
        .unwrap();
    assert_eq!(a.uri, format!("s3://presign/default/sha256/{}", a.sha256));
    let url = store
        .presign_get(&a.uri, Duration::from_secs(2))
        .await
        .unwrap();
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), body);
    let refusal = mlgw_tests::wait_for(
        Duration::from_secs(30),
        "the presigned URL to stop working",
        || {
            let url = url.clone();
            async move {
                let r = reqwest::get(&url).await.ok()?;
                if r.status() == 200 {
                    return None;
                }
                Some((r.status(), r.text().await.unwrap_or_default()))
            }
        },
    )
    .await;
    assert_eq!(refusal.0, 403, "{}", refusal.1);
    assert!(refusal.1.contains("Request has expired"), "{}", refusal.1);
    // The object is still there: a new URL fetches it again.
    let url = store
        .presign_get(&a.uri, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
}
