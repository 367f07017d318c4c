//! Real S3 APIs on loopback for the artifact store's tests, one per test so each starts from an
//! empty S3, stopped when dropped. Their S3 is real HTTP with SigV4-signed requests; the
//! gateway reaches it through its own endpoint setting and the credentials `gateway_env`
//! hands it.
//!
//! - `Moto`: moto's server from the test venv (`moto[server]` in tests/requirements.txt), for
//!   everything but one thing: it serves a presigned URL without checking its signature or
//!   expiry (its S3 authenticates the Authorization header only).
//! - `S3rver`: s3rver from npm (tests/s3rver/setup installs it once), which refuses a
//!   presigned URL past its X-Amz-Expires as S3 does.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Test values only: s3rver's fixed ones (moto takes any). The point is that the gateway finds
/// them through the standard AWS chain, as it would real ones.
pub const ACCESS_KEY_ID: &str = "S3RVER";
pub const SECRET_ACCESS_KEY: &str = "S3RVER";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    _child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// An S3 client of the test's own, to read back what the gateway stored.
    pub client: Client,
}

impl Moto {
    /// Starts moto_server on a free loopback port (it picks one and says which) and waits,
    /// bounded, until its S3 answers by creating `bucket`.
    pub async fn start(bucket: &str) -> Self {
        let bin = crate::venv().join("bin/moto_server");
        assert!(
            bin.exists(),
            "no {} (run tests/setup-python: moto[server] is in tests/requirements.txt)",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting moto_server");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let endpoint = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(at) = l.find("Running on http://127.0.0.1:") {
                    return Some(l[at + "Running on ".len()..].trim().to_string());
                }
            }
            None
        })
        .await
        .expect("moto_server did not start within 60 s")
        .expect("moto_server exited before it was serving");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = client(&endpoint);
        let moto = Self {
            _child: child,
            endpoint,
            client,
        };
        crate::wait_for(Duration::from_secs(30), "moto to create a bucket", || {
            let c = moto.client.clone();
            let bucket = bucket.to_string();
            async move { c.create_bucket().bucket(bucket).send().await.ok() }
        })
        .await;
        moto
    }

    /// What a gateway using this server needs in its environment: the credentials, and
    /// nothing from this machine's own AWS setup (no profile files, no instance metadata).
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
            ("AWS_CONFIG_FILE", "/nonexistent/mlgw-test/config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/mlgw-test/credentials",
            ),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    }

    /// The gateway's `[artifacts]` section for a store in `bucket` under `prefix`.
    pub fn artifacts_config(&self, bucket: &str, prefix: &str, limits: &str) -> String {
        format!(
            "[artifacts]\nstore = \"s3\"\n{limits}\n[artifacts.s3]\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\nforce_path_style = true\n",
            self.endpoint
        )
    }

    /// Every key in `bucket` under `prefix`.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("listing the bucket");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(String::from))
            .collect()
    }

    /// An object's bytes, read with the S3 API.
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("reading s3://{bucket}/{key}: {e:?}"));
        out.body.collect().await.unwrap().into_bytes().to_vec()
    }
}

/// s3rver on a free loopback port, with `bucket` made at its start, its data in a temporary
/// directory.
pub struct S3rver {
    _child: Child,
    _data: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl S3rver {
    pub async fn start(bucket: &str) -> Self {
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("s3rver/setup");
        let out = Command::new(&setup)
            .stderr(Stdio::inherit())
            .output()
            .await
            .expect("running tests/s3rver/setup");
        assert!(out.status.success(), "tests/s3rver/setup failed");
        let entry = String::from_utf8(out.stdout).unwrap();
        let entry = entry
            .lines()
            .last()
            .expect("setup names s3rver's entry point");
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new("node")
            .arg(entry)
            .arg("-d")
            .arg(data.path())
            .args(["-a", "127.0.0.1", "-p", "0", "--no-vhost-buckets"])
            .args(["--configure-bucket", bucket])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting s3rver with node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let endpoint = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(addr) = l.strip_prefix("S3rver listening on ") {
                    return Some(format!("http://{}", addr.trim()));
                }
            }
            None
        })
        .await
        .expect("s3rver did not start within 60 s")
        .expect("s3rver exited before it was serving");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            _data: data,
            endpoint,
        }
    }
}

fn client(endpoint: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let cfg = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .http_client(http)
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "mlgw-tests",
        ))
        .build();
    Client::from_conf(cfg)
}
