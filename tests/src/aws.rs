//! The AWS test server the SageMaker tests run against (tests/aws/up): moto's server with the
//! SageMaker test extension (tests/aws/moto_sagemaker_extension.py) on loopback, one endpoint
//! for SageMaker, sagemaker-runtime, CloudWatch Logs and S3. Started once per test binary, or
//! taken from `$MLGW_TEST_AWS_ENDPOINT` when the test runner already started it. One server
//! outlives many tests and runs, so every name on it must be unique (`cluster::unique`).
//!
//! How a job or endpoint behaves there is set by its tags ([`tag`]), or by the job's or the
//! model's container environment ([`env`]): see the extension's header. Read-backs go through
//! [`call`], which runs tests/aws/readback.py (boto3 from the test venv), so these tests build
//! no AWS SDK crate for SageMaker or CloudWatch.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::Value;
use tokio::process::Command;

pub use crate::moto::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};

/// moto's default account: every ARN on the server is in it.
pub const ACCOUNT_ID: &str = "123456789012";
/// An execution role for grants; moto checks none.
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/mlgw-test-sagemaker";
/// Created by `up`: for the gateway's S3 artifact store in the SageMaker tests.
pub const ARTIFACTS_BUCKET: &str = "mlgw-test-artifacts";
/// Created by `up`: the SageMaker target's inputs and outputs.
pub const SAGEMAKER_BUCKET: &str = "mlgw-test-sagemaker";
/// Where training jobs log, one stream per instance: `<job>/algo-<i>-<epoch seconds>`.
pub const TRAINING_LOG_GROUP: &str = "/aws/sagemaker/TrainingJobs";
/// Requests signed with this access key are refused as AWS refuses an unknown key
/// (UnrecognizedClientException; S3: InvalidAccessKeyId).
pub const REFUSED_ACCESS_KEY_ID: &str = "MLGWTESTREFUSED";

/// Tags on CreateTrainingJob or CreateEndpoint that drive it on the server.
pub mod tag {
    /// A job: `Completed` (default), `Failed` or `Running` (until stopped). An endpoint:
    /// `InService` (default) or `Failed`.
    pub const OUTCOME: &str = "mlgw-test:outcome";
    /// From creation to the end (default 1000).
    pub const DURATION_MS: &str = "mlgw-test:duration-ms";
    /// A failed job's FailureReason.
    pub const FAILURE_REASON: &str = "mlgw-test:failure-reason";
}

/// The same settings as environment variables, for a job without the tags (and `OUTCOME =
/// Failed` in a model's container environment fails the endpoints serving it).
pub mod env {
    pub const OUTCOME: &str = "MLGW_TEST_OUTCOME";
    pub const DURATION_MS: &str = "MLGW_TEST_DURATION_MS";
    pub const FAILURE_REASON: &str = "MLGW_TEST_FAILURE_REASON";
}

pub struct Aws {
    /// `http://127.0.0.1:<port>`, for every service.
    pub endpoint: String,
}

pub fn aws() -> &'static Aws {
    static AWS: OnceLock<Aws> = OnceLock::new();
    AWS.get_or_init(|| {
        let endpoint = match std::env::var("MLGW_TEST_AWS_ENDPOINT") {
            Ok(e) if !e.is_empty() => e,
            _ => start(),
        };
        assert!(
            endpoint.starts_with("http://127.0.0.1:"),
            "the AWS test server must be on loopback, not {endpoint}"
        );
        Aws { endpoint }
    })
}

fn start() -> String {
    let up = Path::new(env!("CARGO_MANIFEST_DIR")).join("aws/up");
    let out = std::process::Command::new(&up)
        .env("MLGW_TEST_VENV", crate::venv())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", up.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); see its output above",
        up.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .expect("up printed nothing")
        .trim()
        .to_string()
}

/// An error AWS (the test server) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// e.g. `ValidationException`, `ResourceInUse`, `ModelError`.
    pub code: String,
    pub message: String,
    pub status: u16,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}): {}", self.code, self.status, self.message)
    }
}

impl Aws {
    /// What a gateway using this server needs in its environment: the test credentials and
    /// region, and nothing from this machine's own AWS setup (no profile files, no instance
    /// metadata), so the gateway finds them through the standard AWS chain as it would real
    /// ones.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        env_with_key(ACCESS_KEY_ID)
    }

    /// As `gateway_env`, with an access key the server refuses.
    pub fn refused_gateway_env(&self) -> Vec<(String, String)> {
        env_with_key(REFUSED_ACCESS_KEY_ID)
    }

    /// The gateway's `[artifacts]` section for an S3 store in `ARTIFACTS_BUCKET` under `prefix`.
    pub fn artifacts_config(&self, prefix: &str) -> String {
        format!(
            "[artifacts]\nstore = \"s3\"\n\n[artifacts.s3]\nbucket = \"{ARTIFACTS_BUCKET}\"\nprefix = \"{prefix}\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\nforce_path_style = true\n",
            self.endpoint
        )
    }

    /// One AWS API call, e.g. `("sagemaker", "DescribeTrainingJob", json!({"TrainingJobName":
    /// name}))`; panics unless it succeeds. See tests/aws/readback.py for the JSON's shape
    /// (timestamps as ISO 8601, streamed bodies as text).
    pub async fn call(&self, service: &str, operation: &str, request: Value) -> Value {
        self.try_call(service, operation, request.clone())
            .await
            .unwrap_or_else(|e| panic!("{service} {operation} {request}: {e}"))
    }

    /// As `call`, returning the error AWS answered. Panics only if the call could not be made.
    pub async fn try_call(
        &self,
        service: &str,
        operation: &str,
        request: Value,
    ) -> Result<Value, AwsError> {
        let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("aws/readback.py");
        let out = Command::new(crate::python())
            .arg(&script)
            .args(["--endpoint", &self.endpoint, service, operation])
            .arg(request.to_string())
            .envs(env_with_key(ACCESS_KEY_ID))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let parsed = || -> Value {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "{service} {operation}: readback.py printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
        };
        match out.status.code() {
            Some(0) => Ok(parsed()),
            Some(3) => {
                let v = parsed();
                Err(AwsError {
                    code: v["Error"]["Code"].as_str().unwrap_or_default().to_string(),
                    message: v["Error"]["Message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    status: v["HTTPStatusCode"].as_u64().unwrap_or_default() as u16,
                })
            }
            _ => panic!(
                "{service} {operation} {request}: readback.py failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

fn env_with_key(key: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", key),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_REGION", REGION),
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

/// `aws().call(…)`: one AWS API call on the shared test server.
pub async fn call(service: &str, operation: &str, request: Value) -> Value {
    aws().call(service, operation, request).await
}

/// `aws().try_call(…)`.
pub async fn try_call(service: &str, operation: &str, request: Value) -> Result<Value, AwsError> {
    aws().try_call(service, operation, request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn job(name: &str, outcome: &str) -> Value {
        json!({
            "TrainingJobName": name,
            "AlgorithmSpecification": {"TrainingImage": "train:1", "TrainingInputMode": "File"},
            "RoleArn": ROLE_ARN,
            "OutputDataConfig": {"S3OutputPath": format!("s3://{SAGEMAKER_BUCKET}/out")},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 60},
            "Tags": [
                {"Key": tag::OUTCOME, "Value": outcome},
                {"Key": tag::DURATION_MS, "Value": "200"},
                {"Key": tag::FAILURE_REASON, "Value": "AlgorithmError: as asked"},
            ],
        })
    }

    /// `call` reads back what the server did, and `try_call` hands back what it refused.
    #[tokio::test]
    async fn call_reads_back_jobs_logs_and_errors() {
        let name = crate::cluster::unique("aws-rs");
        call("sagemaker", "CreateTrainingJob", job(&name, "Failed")).await;
        let done = crate::wait_for(Duration::from_secs(30), "the job to fail", || {
            let name = name.clone();
            async move {
                let d = call(
                    "sagemaker",
                    "DescribeTrainingJob",
                    json!({"TrainingJobName": name}),
                )
                .await;
                (d["TrainingJobStatus"] != "InProgress").then_some(d)
            }
        })
        .await;
        assert_eq!(done["TrainingJobStatus"], "Failed");
        assert_eq!(done["FailureReason"], "AlgorithmError: as asked");
        assert!(done["CreationTime"].as_str().unwrap().ends_with("+00:00"));

        let logs = call(
            "logs",
            "FilterLogEvents",
            json!({"logGroupName": TRAINING_LOG_GROUP, "logStreamNamePrefix": format!("{name}/")}),
        )
        .await;
        let last = logs["events"].as_array().unwrap().last().unwrap();
        assert_eq!(last["message"], "algo-1 error: AlgorithmError: as asked");

        let again = try_call("sagemaker", "CreateTrainingJob", job(&name, "Completed")).await;
        assert_eq!(again.unwrap_err().code, "ResourceInUse");
        let stop = try_call(
            "sagemaker",
            "StopTrainingJob",
            json!({"TrainingJobName": name}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (stop.code.as_str(), stop.status),
            ("ValidationException", 400)
        );
        assert!(stop.message.contains("in status Failed"), "{stop}");
    }
}
