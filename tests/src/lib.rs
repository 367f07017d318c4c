//! Test harness: starts the real gateway binary on a fresh data dir, connects to it, and waits
//! on conditions with bounds (never on luck).

pub mod aws;
pub mod bench;
pub mod cluster;
pub mod model_server;
pub mod moto;

pub use model_server::{ModelServer, Seen};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mlgw::api::pb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub use mlgw::api::pb::{
    artifact_service_client::ArtifactServiceClient, serving_service_client::ServingServiceClient,
    target_service_client::TargetServiceClient, training_service_client::TrainingServiceClient,
};

/// The Python environment with scikit-learn and MLServer that `.ci/run` prepares.
pub fn venv() -> PathBuf {
    let v = std::env::var_os("MLGW_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/mlgw-venv")
        });
    assert!(
        v.join("bin/python").exists(),
        "no Python venv at {} (run tests/setup-python, or set MLGW_TEST_VENV)",
        v.display()
    );
    v
}

pub fn python() -> String {
    venv().join("bin/python").display().to_string()
}

pub struct Gateway {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    bin: PathBuf,
    config: Option<PathBuf>,
    /// Set in the gateway's environment on every (re)start, e.g. a test bucket's credentials.
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Starts `bin serve` on `data_dir` (embedded defaults unless `config` is given).
    pub async fn start(bin: &str, data_dir: &Path, config: Option<&str>) -> Self {
        Self::start_with_env(bin, data_dir, config, Vec::new()).await
    }

    /// As `start`, with `env` added to the gateway's environment.
    pub async fn start_with_env(
        bin: &str,
        data_dir: &Path,
        config: Option<&str>,
        env: Vec<(String, String)>,
    ) -> Self {
        let config = config.map(|text| {
            let p = data_dir.with_extension("toml");
            std::fs::write(&p, text).expect("writing the test config");
            p
        });
        let mut gw = Gateway {
            child: None,
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            bin: bin.into(),
            config,
            env,
        };
        gw.spawn().await;
        gw
    }

    pub async fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .unwrap();
        let path = format!(
            "{}:{}",
            venv().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("PATH", path)
            .env("MLGW_LOG", "info,mlgw=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().expect("starting the gateway");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if let Some(a) = l.strip_prefix("mlgw listening on ") {
                    return Some(a.to_string());
                }
            }
            None
        })
        .await
        .expect("gateway did not start within 120 s")
        .unwrap_or_else(|| {
            panic!(
                "gateway exited; see {}",
                self.data_dir.with_extension("log").display()
            )
        });
        // Keep draining stdout so the gateway never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.addr = addr;
        self.child = Some(child);
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connecting to the gateway")
    }

    pub async fn training(&self) -> TrainingServiceClient<Channel> {
        TrainingServiceClient::new(self.channel().await)
    }

    pub async fn serving(&self) -> ServingServiceClient<Channel> {
        ServingServiceClient::new(self.channel().await)
    }

    pub async fn artifacts(&self) -> ArtifactServiceClient<Channel> {
        ArtifactServiceClient::new(self.channel().await)
    }

    /// SIGKILL: the gateway gets no chance to clean up, as in a crash.
    pub async fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// A new gateway process on the same data dir and config.
    pub async fn restart(&mut self) {
        self.crash().await;
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

/// Polls `f` until it returns Some, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn spec(command: &[&str]) -> pb::TrainingJobSpec {
    pb::TrainingJobSpec {
        name: "test".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub async fn submit(
    c: &mut TrainingServiceClient<Channel>,
    target: &str,
    spec: pb::TrainingJobSpec,
) -> Result<pb::Job, tonic::Status> {
    c.submit(pb::SubmitJobRequest {
        target: target.into(),
        spec: Some(spec),
        idempotency_key: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Follows Watch until the job ends (bounded); returns the final job.
pub async fn wait_job(
    c: &mut TrainingServiceClient<Channel>,
    id: &str,
    timeout: Duration,
) -> pb::Job {
    use futures::StreamExt;
    let mut s = c
        .watch(pb::WatchJobRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(timeout, async {
        let mut last = None;
        while let Some(ev) = s.next().await {
            last = ev.expect("watch event").job;
        }
        last.expect("watch yielded no event")
    })
    .await
    .unwrap_or_else(|_| panic!("job {id} did not end within {timeout:?}"))
}

pub async fn logs(c: &mut TrainingServiceClient<Channel>, id: &str, follow: bool) -> Vec<String> {
    use futures::StreamExt;
    let mut s = c
        .logs(pb::JobLogsRequest {
            id: id.into(),
            follow,
            cursor: String::new(),
        })
        .await
        .expect("logs")
        .into_inner();
    let mut out = Vec::new();
    while let Some(l) = s.next().await {
        out.push(l.expect("log line").text);
    }
    out
}

pub fn state(j: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(j.state).unwrap()
}

/// Whether a pid is gone (or only a zombie awaiting its reaper).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
    }
}

pub fn file_path(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}

/// Waits (bounded) until the endpoint's record satisfies `ok`.
pub async fn wait_endpoint(
    c: &ServingServiceClient<Channel>,
    id: &str,
    what: &str,
    ok: impl Fn(&pb::Endpoint) -> bool,
) -> pb::Endpoint {
    wait_for(Duration::from_secs(120), what, || {
        let mut c = c.clone();
        let id = id.to_string();
        let ok = &ok;
        async move {
            let e = c
                .get(pb::GetEndpointRequest { id })
                .await
                .ok()?
                .into_inner();
            ok(&e).then_some(e)
        }
    })
    .await
}

/// Runs `bin serve` with `args`, which must make it refuse to start: it must exit within a
/// bound, unsuccessfully. Returns its exit code and stderr.
pub async fn serve_refuses(bin: &str, args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let child = Command::new(bin)
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the gateway started serving instead of refusing")
        .unwrap();
    assert!(!out.status.success());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real scikit-learn model for the serving tests: a training script for the local target,
/// rows to predict, and the model's own answer for them computed outside the gateway.
pub mod iris {
    pub const TRAIN: &str = r#"
import os, joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=500).fit(X, y)
joblib.dump(model, os.path.join(os.environ["MLGW_OUTPUT_DIR"], "model.joblib"))
print("accuracy", model.score(X, y))
"#;

    pub const ROWS: [[f64; 4]; 3] = [
        [5.1, 3.5, 1.4, 0.2],
        [6.7, 3.0, 5.2, 2.3],
        [5.9, 3.0, 4.2, 1.5],
    ];

    /// What the model in `model_dir` answers for `ROWS`.
    pub fn expected(model_dir: &std::path::Path) -> Vec<i64> {
        let out = std::process::Command::new(super::python())
            .arg("-c")
            .arg(format!(
                "import joblib, json; m = joblib.load('{}/model.joblib'); print(json.dumps(m.predict({:?}).tolist()))",
                model_dir.display(),
                ROWS
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}
