//! Presigned URLs from the S3 artifact store, fetched with plain HTTP from moto's S3 on
//! loopback. The store is opened in this process (presigning is what the gateway does for a
//! target that fetches code itself; no RPC hands URLs out), and it finds its credentials where
//! the gateway does, in the environment — so this is the only test in its binary, and the
//! environment is set before anything else here reads it.
//!
//! What moto cannot show: it serves a presigned URL without checking its signature or its
//! expiry (its S3 authenticates only the Authorization header), so a URL that has outlived
//! X-Amz-Expires still works against it. The lifetime the URL carries is checked instead.

use std::time::Duration;

use mlgw::artifacts::{ArtifactError, ArtifactKind, ArtifactStore, UploadHeader};
use mlgw::config::{ArtifactStoreKind, ArtifactsConfig, S3StoreConfig};
use mlgw_tests::moto::{self, Moto};

const BUCKET: &str = "mlgw-presign";

fn query(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

#[tokio::test]
async fn a_presigned_url_fetches_the_content_with_plain_http_for_its_lifetime() {
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
}
