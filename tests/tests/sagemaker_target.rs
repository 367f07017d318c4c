//! The SageMaker target end to end: the real gateway with the bundled `sagemaker` plugin and
//! the host's `sagemaker` capability, against the AWS test server (tests/aws: moto with the
//! SageMaker test extension). Every check of what reached SageMaker reads it back through the
//! AWS API (`aws::call`), not through the gateway.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mlgw::api::pb;
use mlgw::domain::backend_name;
use mlgw_tests::aws::{self, ROLE_ARN, SAGEMAKER_BUCKET, aws};
use mlgw_tests::cluster::unique;
use mlgw_tests::*;
use serde_json::{Value, json};
use tonic::{Code, Status};

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1";
const SERVE_IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/serve:1";

/// A gateway with a `sagemaker` target on the test server (and the hostile fixture with the
/// same grant), its inputs and outputs under `prefix` in the test bucket.
struct Setup {
    _dir: tempfile::TempDir,
    gw: Gateway,
    prefix: String,
}

fn grant(prefix: &str) -> String {
    format!(
        r#"region = "{region}"
role_arn = "{ROLE_ARN}"
endpoint_url = "{endpoint}"
input_prefixes = ["s3://{SAGEMAKER_BUCKET}/{prefix}/in/"]
output_prefixes = ["s3://{SAGEMAKER_BUCKET}/{prefix}/out/"]
tags = {{ team = "ml-platform" }}
"#,
        region = aws::REGION,
        endpoint = aws().endpoint,
    )
}

fn config(prefix: &str) -> String {
    format!(
        r#"
default_target = "local"

[plugins]
hostile = "{hostile}"

[targets.local]
plugin = "local"
[targets.local.grants.process]

[targets.sagemaker]
plugin = "sagemaker"
[targets.sagemaker.settings]
output_path = "s3://{SAGEMAKER_BUCKET}/{prefix}/out"
training_images = {{ sklearn = "{IMAGE}" }}
serving_images = {{ sklearn = "{SERVE_IMAGE}" }}
[targets.sagemaker.grants.sagemaker]
{grant}
[targets.hostile]
plugin = "hostile"
[targets.hostile.grants.sagemaker]
{grant}
"#,
        hostile = mlgw_plugin_artifacts::HOSTILE_PATH,
        grant = grant(prefix),
    )
}

impl Setup {
    async fn new() -> Self {
        Self::with_env(aws().gateway_env()).await
    }

    async fn with_env(env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = unique("sm");
        let gw =
            Gateway::start_with_env(BIN, &dir.path().join("data"), Some(&config(&prefix)), env)
                .await;
        Setup {
            _dir: dir,
            gw,
            prefix,
        }
    }

    fn input(&self, channel: &str) -> String {
        format!("s3://{SAGEMAKER_BUCKET}/{}/in/{channel}/", self.prefix)
    }
}

fn training_spec(env: &[(&str, &str)]) -> pb::TrainingJobSpec {
    pb::TrainingJobSpec {
        name: "fit".into(),
        image: IMAGE.into(),
        command: vec!["python".into(), "/opt/ml/code/train.py".into()],
        args: vec!["--epochs".into(), "2".into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        hyperparameters: HashMap::from([("lr".to_string(), "0.1".to_string())]),
        max_runtime_seconds: 600,
        ..Default::default()
    }
}

async fn describe_job(job: &pb::Job) -> Value {
    aws::call(
        "sagemaker",
        "DescribeTrainingJob",
        json!({"TrainingJobName": backend_name(&job.id)}),
    )
    .await
}

async fn tags_of(arn: &str) -> BTreeMap<String, String> {
    let t = aws::call("sagemaker", "ListTags", json!({"ResourceArn": arn})).await;
    t["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().to_string(),
                t["Value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn field(e: &Status) -> &str {
    e.metadata()
        .get("mlgw-field")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A job runs to its end on SageMaker as the spec says: the role and tags the host adds, the
/// instance type the target's table chose for the resources asked, the channels, the
/// entrypoint, and the logs of every instance in time order.
#[tokio::test]
async fn a_training_job_runs_on_sagemaker_as_specified() {
    let s = Setup::new().await;
    let mut t = s.gw.training().await;
    let mut spec = training_spec(&[("MLGW_TEST_DURATION_MS", "1500")]);
    spec.inputs = vec![pb::InputChannel {
        name: "train".into(),
        uri: s.input("train"),
    }];
    spec.resources = Some(pb::Resources {
        gpus: 1,
        gpu_type: "a10g".into(),
        nodes: 2,
        ..Default::default()
    });
    let job = submit(&mut t, "sagemaker", spec).await.expect("submit");
    let done = wait_job(&mut t, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);

    let d = describe_job(&done).await;
    assert_eq!(d["TrainingJobStatus"], "Completed");
    assert_eq!(d["RoleArn"], ROLE_ARN, "the grant's role, set by the host");
    assert_eq!(d["ResourceConfig"]["InstanceCount"], 2);
    assert_eq!(
        d["ResourceConfig"]["InstanceType"], "ml.g5.xlarge",
        "the smallest type with an A10G"
    );
    assert_eq!(
        d["AlgorithmSpecification"]["ContainerEntrypoint"],
        json!(["python", "/opt/ml/code/train.py"])
    );
    assert_eq!(
        d["AlgorithmSpecification"]["ContainerArguments"],
        json!(["--epochs", "2"])
    );
    assert_eq!(d["AlgorithmSpecification"]["TrainingImage"], IMAGE);
    let channels = d["InputDataConfig"].as_array().unwrap();
    assert_eq!(channels.len(), 1, "{channels:?}");
    assert_eq!(channels[0]["ChannelName"], "train");
    assert_eq!(
        channels[0]["DataSource"]["S3DataSource"]["S3Uri"],
        s.input("train")
    );
    assert_eq!(d["HyperParameters"]["lr"], "0.1");
    assert_eq!(d["StoppingCondition"]["MaxRuntimeInSeconds"], 600);
    assert_eq!(
        done.output_uri,
        d["ModelArtifacts"]["S3ModelArtifacts"].as_str().unwrap()
    );
    assert!(
        done.output_uri
            .starts_with(&format!("s3://{SAGEMAKER_BUCKET}/{}/out/", s.prefix)),
        "{}",
        done.output_uri
    );
    let tags = tags_of(d["TrainingJobArn"].as_str().unwrap()).await;
    assert_eq!(tags.get("mlgw:resource-id"), Some(&job.id), "{tags:?}");
    assert_eq!(
        tags.get("mlgw:target").map(String::as_str),
        Some("sagemaker")
    );
    assert_eq!(tags.get("team").map(String::as_str), Some("ml-platform"));

    // Both instances' streams, merged in time order: the test server logs the hyperparameters
    // and channels each instance saw, then its epochs.
    let lines = logs(&mut t, &job.id, false).await;
    for algo in ["algo-1", "algo-2"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(algo) && l.contains("epoch")),
            "no {algo} epoch line in {lines:?}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("lr")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("train")), "{lines:?}");
    let direct = aws::call(
        "logs",
        "FilterLogEvents",
        json!({"logGroupName": aws::TRAINING_LOG_GROUP,
               "logStreamNamePrefix": format!("{}/", backend_name(&job.id))}),
    )
    .await;
    assert_eq!(
        lines.len(),
        direct["events"].as_array().unwrap().len(),
        "every event of every stream, once: {lines:?}"
    );
}

/// Cancel stops the job on SageMaker and ends it `cancelled` only once SageMaker says Stopped;
/// a failed job ends `failed` with SageMaker's FailureReason.
#[tokio::test]
async fn cancel_stops_the_job_and_failures_carry_the_reason() {
    let s = Setup::new().await;
    let mut t = s.gw.training().await;
    let running = submit(
        &mut t,
        "sagemaker",
        training_spec(&[("MLGW_TEST_OUTCOME", "Running")]),
    )
    .await
    .expect("submit");
    let failing = submit(
        &mut t,
        "sagemaker",
        training_spec(&[
            ("MLGW_TEST_OUTCOME", "Failed"),
            ("MLGW_TEST_FAILURE_REASON", "AlgorithmError: loss is NaN"),
        ]),
    )
    .await
    .expect("submit");

    wait_for(Duration::from_secs(60), "the job to run", || {
        let mut t = t.clone();
        let id = running.id.clone();
        async move {
            let j = t.get(pb::GetJobRequest { id }).await.ok()?.into_inner();
            (state(&j) == pb::JobState::Running).then_some(())
        }
    })
    .await;
    t.cancel(pb::CancelJobRequest {
        id: running.id.clone(),
    })
    .await
    .expect("cancel");
    let done = wait_job(&mut t, &running.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Cancelled, "{}", done.message);
    let d = describe_job(&done).await;
    assert_eq!(d["TrainingJobStatus"], "Stopped", "stop really stopped it");

    let done = wait_job(&mut t, &failing.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Failed);
    assert!(
        done.message.contains("AlgorithmError: loss is NaN"),
        "{}",
        done.message
    );
    assert_eq!(describe_job(&done).await["TrainingJobStatus"], "Failed");
}

/// Deploy → predict → canary update → delete, each step read back on SageMaker.
#[tokio::test]
async fn an_endpoint_serves_takes_a_canary_and_is_deleted_everywhere() {
    let s = Setup::new().await;
    let mut t = s.gw.training().await;
    let job = submit(&mut t, "sagemaker", training_spec(&[]))
        .await
        .expect("submit");
    let done = wait_job(&mut t, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);

    let mut serving = s.gw.serving().await;
    let name = unique("iris");
    let ep = serving
        .deploy(pb::DeployRequest {
            target: "sagemaker".into(),
            spec: Some(pb::EndpointSpec {
                name: name.clone(),
                model_uri: job.id.clone(),
                model_format: "sklearn".into(),
                min_replicas: 2,
                max_replicas: 2,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("deploy")
        .into_inner();
    let ready = wait_endpoint(&serving, &ep.id, "the endpoint to be ready", |e| {
        e.state == pb::EndpointState::Ready as i32
    })
    .await;
    let sm_name = backend_name(&ep.id);
    let d = aws::call(
        "sagemaker",
        "DescribeEndpoint",
        json!({"EndpointName": sm_name}),
    )
    .await;
    assert_eq!(d["EndpointStatus"], "InService");
    let first_config = d["EndpointConfigName"].as_str().unwrap().to_string();
    let c = aws::call(
        "sagemaker",
        "DescribeEndpointConfig",
        json!({"EndpointConfigName": first_config}),
    )
    .await;
    let v = &c["ProductionVariants"][0];
    assert_eq!(v["InitialInstanceCount"], 2, "min replicas: {c}");
    let model = aws::call(
        "sagemaker",
        "DescribeModel",
        json!({"ModelName": v["ModelName"]}),
    )
    .await;
    assert_eq!(model["ExecutionRoleArn"], ROLE_ARN);
    assert_eq!(model["PrimaryContainer"]["Image"], SERVE_IMAGE);
    assert_eq!(model["PrimaryContainer"]["ModelDataUrl"], done.output_uri);

    // Predictions through InvokeEndpoint, signed by the host. The answer is the test server's
    // fixed rule (floor of each row's sum, mod 3), not a model's.
    let rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]];
    let resp = serving
        .predict(pb::PredictRequest {
            endpoint: ready.id.clone(),
            inputs: vec![pb::InferTensor {
                name: "input-0".into(),
                datatype: "FP64".into(),
                shape: vec![2, 4],
                fp64_contents: rows.iter().flatten().copied().collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("predict")
        .into_inner();
    let want: Vec<i64> = rows
        .iter()
        .map(|r| (r.iter().sum::<f64>().floor() as i64) % 3)
        .collect();
    assert_eq!(resp.outputs[0].int64_contents, want);

    // A canary of 10 %: two variants, 90 and 10, on a new config.
    let updating = serving
        .update(pb::UpdateEndpointRequest {
            id: ep.id.clone(),
            spec: Some(pb::EndpointSpec {
                model_uri: done.output_uri.clone(),
                canary_percent: Some(10),
                ..Default::default()
            }),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updating.state, pb::EndpointState::Updating as i32);
    wait_endpoint(&serving, &ep.id, "the canary to be ready", |e| {
        e.state == pb::EndpointState::Ready as i32
    })
    .await;
    let d = aws::call(
        "sagemaker",
        "DescribeEndpoint",
        json!({"EndpointName": sm_name}),
    )
    .await;
    let canary_config = d["EndpointConfigName"].as_str().unwrap().to_string();
    assert_ne!(canary_config, first_config);
    let c = aws::call(
        "sagemaker",
        "DescribeEndpointConfig",
        json!({"EndpointConfigName": canary_config}),
    )
    .await;
    let mut weights: Vec<f64> = c["ProductionVariants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["InitialVariantWeight"].as_f64().unwrap())
        .collect();
    weights.sort_by(f64::total_cmp);
    assert_eq!(weights, [10.0, 90.0], "{c}");

    serving
        .delete(pb::DeleteEndpointRequest { id: ep.id.clone() })
        .await
        .expect("delete");
    wait_for(
        Duration::from_secs(60),
        "SageMaker to have no endpoint, config or model of it",
        || {
            let sm_name = sm_name.clone();
            async move {
                // moto's ListModels ignores NameContains: filter here, for all three.
                let mut left = Vec::new();
                for (op, list, key) in [
                    ("ListEndpoints", "Endpoints", "EndpointName"),
                    (
                        "ListEndpointConfigs",
                        "EndpointConfigs",
                        "EndpointConfigName",
                    ),
                    ("ListModels", "Models", "ModelName"),
                ] {
                    let l = aws::call("sagemaker", op, json!({"NameContains": sm_name})).await;
                    left.extend(
                        l[list]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter_map(|m| m[key].as_str())
                            .filter(|n| n.starts_with(sm_name.as_str()))
                            .map(str::to_string),
                    );
                }
                left.is_empty().then_some(())
            }
        },
    )
    .await;
}

/// What SageMaker cannot take is `INVALID_ARGUMENT` naming the field, before anything is
/// created; nothing already stored is lost.
#[tokio::test]
async fn bad_specs_name_the_field_and_create_nothing() {
    let s = Setup::new().await;
    let mut t = s.gw.training().await;
    let kept = submit(&mut t, "sagemaker", training_spec(&[]))
        .await
        .expect("submit");

    let mut non_s3 = training_spec(&[]);
    non_s3.inputs = vec![pb::InputChannel {
        name: "train".into(),
        uri: "file:///data/train".into(),
    }];
    let mut unknown_type = training_spec(&[]);
    unknown_type.resources = Some(pb::Resources {
        instance_type: "ml.nonexistent.huge".into(),
        ..Default::default()
    });
    let mut no_image = training_spec(&[]);
    no_image.image = String::new();
    no_image.framework = "tensorflow".into();
    let mut bad_channel = training_spec(&[]);
    bad_channel.inputs = vec![pb::InputChannel {
        name: "train data!".into(),
        uri: s.input("train"),
    }];
    for (spec, want) in [
        (non_s3, "spec.inputs[0].uri"),
        (unknown_type, "spec.resources.instance_type"),
        (no_image, "spec.framework"),
        (bad_channel, "spec.inputs[0].name"),
    ] {
        let err = submit(&mut t, "sagemaker", spec).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{want}: {}",
            err.message()
        );
        assert_eq!(field(&err), want, "{}", err.message());
    }
    let listed = t
        .list(pb::ListJobsRequest {
            target: "sagemaker".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&kept.id],
        "only the good job is stored"
    );
    let on_server = aws::call(
        "sagemaker",
        "ListTrainingJobs",
        json!({"NameContains": "mlgw-", "MaxResults": 100}),
    )
    .await;
    let mine: Vec<&Value> = on_server["TrainingJobSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["TrainingJobName"] == backend_name(&kept.id))
        .collect();
    assert_eq!(mine.len(), 1);
    wait_job(&mut t, &kept.id, Duration::from_secs(120)).await;
}

/// A plugin naming another job's resources is denied by the host before a request leaves,
/// and one reading outside the grant's S3 prefixes is refused too.
#[tokio::test]
async fn a_plugin_cannot_touch_what_is_not_its_own() {
    let s = Setup::new().await;
    // A job that is not the plugin's, running on the same account.
    let victim = unique("mlgw-victim");
    aws::call(
        "sagemaker",
        "CreateTrainingJob",
        json!({
            "TrainingJobName": victim,
            "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
            "RoleArn": ROLE_ARN,
            "OutputDataConfig": {"S3OutputPath": format!("s3://{SAGEMAKER_BUCKET}/victim")},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 600},
            "Tags": [{"Key": aws::tag::OUTCOME, "Value": "Running"}],
        }),
    )
    .await;
    let mut t = s.gw.training().await;
    let mut spec = spec(&["irrelevant"]);
    spec.name = "sagemaker-not-mine".into();
    spec.output_uri = format!("s3://{SAGEMAKER_BUCKET}/{}/out/", s.prefix);
    spec.inputs = vec![pb::InputChannel {
        name: "train".into(),
        uri: s.input("train"),
    }];
    spec.args = vec![victim.clone(), format!("s3://{SAGEMAKER_BUCKET}/victim/")];
    let err = submit(&mut t, "hostile", spec).await.unwrap_err();
    // Every call on the victim's name was denied (else the plugin says "escaped"); the last,
    // its own job reading outside the grant, is refused by the host's S3 check.
    assert!(!err.message().contains("escaped"), "{}", err.message());
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::InvalidArgument),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    assert!(err.message().contains("s3://"), "{}", err.message());

    let d = aws::call(
        "sagemaker",
        "DescribeTrainingJob",
        json!({"TrainingJobName": victim}),
    )
    .await;
    assert_eq!(d["TrainingJobStatus"], "InProgress", "the victim runs on");
    for (op, list, key) in [
        ("ListModels", "Models", "ModelName"),
        (
            "ListEndpointConfigs",
            "EndpointConfigs",
            "EndpointConfigName",
        ),
        ("ListEndpoints", "Endpoints", "EndpointName"),
    ] {
        let l = aws::call("sagemaker", op, json!({"NameContains": victim})).await;
        assert!(
            l[list]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m[key] != victim.as_str()),
            "{op}: {l}"
        );
    }
    let hostile_jobs = aws::call(
        "sagemaker",
        "ListTrainingJobs",
        json!({"NameContains": victim, "MaxResults": 100}),
    )
    .await;
    assert_eq!(
        hostile_jobs["TrainingJobSummaries"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "no second job under the victim's name: {hostile_jobs}"
    );
    aws::call(
        "sagemaker",
        "StopTrainingJob",
        json!({"TrainingJobName": victim}),
    )
    .await;
}

/// Credentials SageMaker refuses make the target unhealthy, with AWS's reason, in
/// TargetService and `mlgw targets`; the gateway serves its other targets regardless.
#[tokio::test]
async fn refused_credentials_show_as_the_targets_health() {
    let s = Setup::with_env(aws().refused_gateway_env()).await;
    let mut targets =
        mlgw::api::pb::target_service_client::TargetServiceClient::new(s.gw.channel().await);
    let sm = wait_for(Duration::from_secs(60), "the target's health", || {
        let mut targets = targets.clone();
        async move {
            let t = targets
                .get(pb::GetTargetRequest {
                    name: "sagemaker".into(),
                })
                .await
                .ok()?
                .into_inner();
            (t.health == pb::TargetHealth::Unhealthy as i32).then_some(t)
        }
    })
    .await;
    assert!(
        sm.health_message.contains("UnrecognizedClient")
            || sm.health_message.contains("security token"),
        "{}",
        sm.health_message
    );
    let local = targets
        .get(pb::GetTargetRequest {
            name: "local".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(local.health, pb::TargetHealth::Healthy as i32);

    let out = tokio::process::Command::new(BIN)
        .args(["targets", "--server", &s.gw.addr])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("sagemaker "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("unhealthy"), "{text}");

    // The local target still runs jobs.
    let mut t = s.gw.training().await;
    let job = submit(&mut t, "local", spec(&["true"])).await.unwrap();
    let done = wait_job(&mut t, &job.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
}
