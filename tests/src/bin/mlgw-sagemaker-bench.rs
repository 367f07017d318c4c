//! What a SageMaker status call costs through the gateway: one job's status through the
//! target's plugin (fresh instance, WIT call, the sagemaker capability, DescribeTrainingJob)
//! against the capability's DescribeTrainingJob called natively and the bare Rust SDK call,
//! in one process and one run, in alternating rounds so machine noise hits all three alike.
//!
//! It starts the gateway in-process (a target granted `sagemaker` running the bundled
//! `sagemaker` plugin), submits one training job to that target, and then samples:
//!   sdk        the Rust SDK's DescribeTrainingJob on the capability's own client
//!   capability the capability's describe-training-job (scope check, mapping)
//!   plugin     the runtime's training-status call through the target's plugin
//!
//! cargo run --release -p mlgw-tests --bin mlgw-sagemaker-bench -- [--rounds 5] [--calls 200]
//!
//! By default it runs against the AWS test server (tests/aws/up, started for the run unless
//! $MLGW_TEST_AWS_ENDPOINT names one; MLGW_TEST_VENV must name the test venv) with its test
//! credentials and a built-in config. `--config FILE [--target NAME]` uses that config instead,
//! with AWS credentials from the standard chain (`{aws}` in the file is replaced by the test
//! server's URL, which is then started and its credentials used); `--spec FILE` is a training
//! spec as JSON (the gateway's TrainingSpec) instead of the built-in one.

use std::time::{Duration, Instant};

use mlgw::capabilities::CallIdentity;
use mlgw::config::Config;
use mlgw::domain::{BackendRef, TrainingSpec};
use mlgw_tests::aws;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn default_spec() -> TrainingSpec {
    serde_json::from_value(serde_json::json!({
        "name": "bench",
        "image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/sklearn:1.2-1",
        "command": ["python", "train.py"],
        "args": [],
        "env": {},
        "hyperparameters": {"C": "0.5"},
        "inputs": [],
        "output_uri": format!("s3://{}/bench/outputs/", aws::SAGEMAKER_BUCKET),
        "resources": {"cpu": null, "memory": null, "gpus": 0, "gpu_type": null,
                      "instance_type": "ml.m5.large", "nodes": 1},
        "max_runtime_seconds": 3600,
        "framework": "sklearn",
        "code_uri": null
    }))
    .expect("the default spec")
}

struct Stats {
    name: &'static str,
    lat: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        let mut l = self.lat.clone();
        l.sort();
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)]
    }
    fn mean(&self) -> Duration {
        self.lat.iter().sum::<Duration>() / self.lat.len() as u32
    }
}

fn main() -> anyhow::Result<()> {
    let config = arg("--config");
    let target = arg("--target").unwrap_or_else(|| "sagemaker".into());
    let rounds: usize = arg("--rounds").map_or(5, |r| r.parse().expect("--rounds N"));
    let calls: usize = arg("--calls").map_or(200, |c| c.parse().expect("--calls N"));
    let text = match &config {
        Some(path) => std::fs::read_to_string(path)?,
        None => BUILT_IN.to_string(),
    };
    // The test server is started (or found) before the async runtime, so its credentials can
    // be set while this is the only thread.
    let text = if text.contains("{aws}") {
        let server = aws::aws();
        for (k, v) in server.gateway_env() {
            // SAFETY: no other thread exists yet.
            unsafe { std::env::set_var(k, v) };
        }
        text.replace("{aws}", &server.endpoint)
    } else {
        text
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(text, target, rounds, calls))
}

/// A target on the AWS test server, its inputs and outputs under `bench/` of its bucket.
const BUILT_IN: &str = r#"
default_target = "sagemaker"

[targets.sagemaker]
plugin = "sagemaker"

[targets.sagemaker.grants.sagemaker]
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/mlgw-test-sagemaker"
endpoint_url = "{aws}"
input_prefixes = ["s3://mlgw-test-sagemaker/bench/"]
output_prefixes = ["s3://mlgw-test-sagemaker/bench/"]
"#;

async fn run(text: String, target: String, rounds: usize, calls: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text)?;
    let mut cfg = Config::load(&path)?;
    cfg.data_dir = dir.path().join("data");
    let gw = mlgw::server::build(&cfg).await?;
    let t = gw
        .runtime
        .target(&target)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no target {target} in the config"))?;
    let cap = t
        .caps
        .sagemaker
        .clone()
        .ok_or_else(|| anyhow::anyhow!("target {target} is not granted sagemaker"))?;

    let spec = match arg("--spec") {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?)?,
        None => default_spec(),
    };
    let job = gw.submit_job(&target, spec, None).await?;
    let r: BackendRef = job
        .backend_ref
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the job has no backend ref: {}", job.message))?;
    let id = CallIdentity {
        tenant: mlgw::gateway::DEFAULT_TENANT.into(),
        resource_id: job.id.clone(),
        backend_name: mlgw::domain::backend_name(&job.id),
    };
    let name = id.backend_name.clone();
    println!(
        "job {} on target {target}: SageMaker job {name}, plugin {}",
        job.id, t.plugin.name
    );

    let mut stats = [
        Stats {
            name: "sdk",
            lat: Vec::new(),
        },
        Stats {
            name: "capability",
            lat: Vec::new(),
        },
        Stats {
            name: "plugin",
            lat: Vec::new(),
        },
    ];
    // One warm-up round, not counted: connections, caches, compiled code.
    for round in 0..=rounds {
        for (i, s) in stats.iter_mut().enumerate() {
            for _ in 0..calls {
                let start = Instant::now();
                match i {
                    0 => {
                        cap.api_client()
                            .describe_training_job()
                            .training_job_name(&name)
                            .send()
                            .await?;
                    }
                    1 => {
                        cap.describe_training_job(&id, &name)
                            .await
                            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    }
                    _ => {
                        gw.runtime.training_status(&t, &job.id, &r).await?;
                    }
                }
                if round > 0 {
                    s.lat.push(start.elapsed());
                }
            }
        }
    }
    let base = stats[0].pct(0.5).as_secs_f64();
    println!("{rounds} rounds x {calls} calls each, alternating:");
    for s in &stats {
        println!(
            "  {:<10} p50 {:>7} µs  p99 {:>7} µs  mean {:>7} µs  p50 / sdk {:.2}",
            s.name,
            s.pct(0.5).as_micros(),
            s.pct(0.99).as_micros(),
            s.mean().as_micros(),
            s.pct(0.5).as_secs_f64() / base
        );
    }
    Ok(())
}
