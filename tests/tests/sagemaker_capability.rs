//! The `sagemaker` host capability against a real SageMaker API on loopback (moto's server):
//! what the capability creates is read back with SageMaker's and CloudWatch Logs' own APIs,
//! refusals are shown to have sent nothing, and a gateway whose AWS credentials are missing
//! or refused reports that target unhealthy with AWS's reason while serving its other targets.
//!
//! Plain moto creates training jobs already Completed and lacks StopTrainingJob and
//! UpdateEndpoint; what it has is enough for everything here. Test log events are written
//! with CloudWatch Logs' own API, in SageMaker's group and stream names.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_sagemaker::config::{Credentials, Region};
use mlgw::api::pb;
use mlgw::capabilities::CallIdentity;
use mlgw::capabilities::sagemaker::{SagemakerCapability, TRAINING_LOG_GROUP};
use mlgw::config::{Config, SagemakerGrant, SagemakerVpc, TargetConfig};
use mlgw::contract::mlgw::backend::sagemaker::{
    Channel, EndpointConfigRequest, LogEvent, ModelRequest, ProductionVariant, TrainingJobRequest,
};
use mlgw::contract::types::{BackendError, KeyValue};
use mlgw::dataplane::{DataPlane, DataPlaneError, InferRequest, Tensor, TensorData};
use mlgw::domain::{Protocol, Route};
use mlgw_tests::moto::{ACCESS_KEY_ID, Moto, REGION, SECRET_ACCESS_KEY};
use mlgw_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const ROLE: &str = "arn:aws:iam::123456789012:role/mlgw-training";

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "mlgw-tests")
}

fn grant(endpoint: &str) -> SagemakerGrant {
    SagemakerGrant {
        region: Some(REGION.into()),
        role_arn: ROLE.into(),
        endpoint_url: Some(endpoint.into()),
        runtime_endpoint_url: None,
        logs_endpoint_url: None,
        input_prefixes: vec!["s3://mlgw-data/team-a/".into()],
        output_prefixes: vec!["s3://mlgw-models/team-a/".into()],
        tags: BTreeMap::from([("team".to_string(), "a".to_string())]),
        vpc: Some(SagemakerVpc {
            subnets: vec!["subnet-0a1b".into()],
            security_group_ids: vec!["sg-0c2d".into()],
        }),
        kms_key_id: Some("alias/mlgw-test".into()),
    }
}

async fn capability(moto: &Moto) -> SagemakerCapability {
    SagemakerCapability::connect_with("sm", &grant(&moto.endpoint), credentials())
        .await
        .expect("building the capability")
}

fn identity(resource_id: &str) -> CallIdentity {
    CallIdentity {
        tenant: "default".into(),
        resource_id: resource_id.into(),
        backend_name: mlgw::domain::backend_name(resource_id),
    }
}

/// The test's own SageMaker client, to read back what the capability did.
fn sagemaker(endpoint: &str) -> aws_sdk_sagemaker::Client {
    let cfg = aws_sdk_sagemaker::Config::builder()
        .behavior_version_latest()
        .http_client(http())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .build();
    aws_sdk_sagemaker::Client::from_conf(cfg)
}

/// The test's own CloudWatch Logs client: it writes the events SageMaker would.
fn logs(endpoint: &str) -> aws_sdk_cloudwatchlogs::Client {
    let cfg = aws_sdk_cloudwatchlogs::Config::builder()
        .behavior_version_latest()
        .http_client(http())
        .region(aws_sdk_cloudwatchlogs::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .build();
    aws_sdk_cloudwatchlogs::Client::from_conf(cfg)
}

fn http() -> aws_sdk_sagemaker::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

async fn moto() -> Moto {
    Moto::start("mlgw-data").await
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
    }
}

fn channel(name: &str, uri: &str) -> Channel {
    Channel {
        name: name.into(),
        s3_uri: uri.into(),
        s3_data_type: String::new(),
        input_mode: String::new(),
        distribution: String::new(),
        content_type: None,
    }
}

fn job(name: &str) -> TrainingJobRequest {
    TrainingJobRequest {
        name: name.into(),
        image: "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311".into(),
        entrypoint: vec!["python".into(), "train.py".into()],
        arguments: vec!["--epochs".into(), "2".into()],
        environment: vec![kv("MLGW_HP_C", "0.5")],
        hyperparameters: vec![kv("C", "0.5"), kv("epochs", "2")],
        channels: vec![
            channel("train", "s3://mlgw-data/team-a/iris/train/"),
            Channel {
                input_mode: "FastFile".into(),
                distribution: "ShardedByS3Key".into(),
                content_type: Some("text/csv".into()),
                ..channel("test", "s3://mlgw-data/team-a/iris/test.csv")
            },
        ],
        output_path: "s3://mlgw-models/team-a/outputs/".into(),
        instance_type: "ml.m5.large".into(),
        instance_count: 2,
        volume_size_gb: 30,
        max_runtime_seconds: 3600,
        spot_max_wait_seconds: Some(7200),
        checkpoint_s3_uri: Some("s3://mlgw-models/team-a/checkpoints/j1/".into()),
    }
}

async fn tags(sm: &aws_sdk_sagemaker::Client, arn: &str) -> HashMap<String, String> {
    let out = sm
        .list_tags()
        .resource_arn(arn)
        .send()
        .await
        .expect("ListTags");
    out.tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn job_names(sm: &aws_sdk_sagemaker::Client) -> Vec<String> {
    sm.list_training_jobs()
        .send()
        .await
        .expect("ListTrainingJobs")
        .training_job_summaries()
        .iter()
        .map(|s| s.training_job_name().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_training_job_carries_the_grants_role_tags_vpc_and_kms_and_the_channels_as_given() {
    let moto = moto().await;
    let cap = capability(&moto).await;
    let sm = sagemaker(&moto.endpoint);
    let id = identity("j-0193A1");
    let name = id.backend_name.clone();

    let arn = cap
        .create_training_job(&id, job(&name))
        .await
        .expect("create");
    assert!(arn.ends_with(&format!(":training-job/{name}")), "{arn}");

    let d = sm
        .describe_training_job()
        .training_job_name(&name)
        .send()
        .await
        .expect("DescribeTrainingJob");
    // The role is the grant's: the request record has no field for one.
    assert_eq!(d.role_arn(), Some(ROLE));
    let channels: Vec<_> = d
        .input_data_config()
        .iter()
        .map(|c| {
            let s3 = c.data_source().unwrap().s3_data_source().unwrap();
            (
                c.channel_name().unwrap().to_string(),
                s3.s3_uri().unwrap().to_string(),
                s3.s3_data_type().unwrap().as_str().to_string(),
                s3.s3_data_distribution_type().unwrap().as_str().to_string(),
                c.input_mode().unwrap().as_str().to_string(),
                c.content_type().map(String::from),
            )
        })
        .collect();
    let owned = |t: [&str; 5], ct: Option<&str>| {
        (
            t[0].to_string(),
            t[1].to_string(),
            t[2].to_string(),
            t[3].to_string(),
            t[4].to_string(),
            ct.map(String::from),
        )
    };
    assert_eq!(
        channels,
        [
            owned(
                [
                    "train",
                    "s3://mlgw-data/team-a/iris/train/",
                    "S3Prefix",
                    "FullyReplicated",
                    "File"
                ],
                None
            ),
            owned(
                [
                    "test",
                    "s3://mlgw-data/team-a/iris/test.csv",
                    "S3Prefix",
                    "ShardedByS3Key",
                    "FastFile"
                ],
                Some("text/csv")
            ),
        ]
    );
    let out = d.output_data_config().unwrap();
    assert_eq!(
        out.s3_output_path(),
        Some("s3://mlgw-models/team-a/outputs/")
    );
    assert_eq!(out.kms_key_id(), Some("alias/mlgw-test"));
    let vpc = d.vpc_config().unwrap();
    assert_eq!(vpc.subnets(), ["subnet-0a1b"]);
    assert_eq!(vpc.security_group_ids(), ["sg-0c2d"]);
    let rc = d.resource_config().unwrap();
    assert_eq!(rc.instance_type().unwrap().as_str(), "ml.m5.large");
    assert_eq!(rc.instance_count(), Some(2));
    assert_eq!(rc.volume_size_in_gb(), Some(30));
    assert_eq!(rc.volume_kms_key_id(), Some("alias/mlgw-test"));
    let algo = d.algorithm_specification().unwrap();
    assert_eq!(algo.container_entrypoint(), ["python", "train.py"]);
    assert_eq!(algo.container_arguments(), ["--epochs", "2"]);
    let hp = d.hyper_parameters().unwrap();
    assert_eq!((hp["C"].as_str(), hp["epochs"].as_str()), ("0.5", "2"));
    assert_eq!(d.enable_managed_spot_training(), Some(true));
    assert_eq!(
        d.stopping_condition().unwrap().max_wait_time_in_seconds(),
        Some(7200)
    );
    assert_eq!(
        d.checkpoint_config().unwrap().s3_uri(),
        Some("s3://mlgw-models/team-a/checkpoints/j1/")
    );

    let t = tags(&sm, &arn).await;
    assert_eq!(t["mlgw:resource-id"], "j-0193A1");
    assert_eq!(t["mlgw:tenant"], "default");
    assert_eq!(t["mlgw:target"], "sm");
    assert_eq!(t["team"], "a");

    // Described back through the capability, in the contract's record.
    let j = cap
        .describe_training_job(&id, &name)
        .await
        .expect("describe");
    assert_eq!(j.name, name);
    assert_eq!(j.arn, arn);
    assert_eq!(j.role_arn, ROLE);
    assert_eq!(j.status, "Completed", "plain moto completes jobs at once");
    assert_eq!(
        j.model_artifacts.as_deref(),
        Some(format!("s3://mlgw-models/team-a/outputs/{name}/output/model.tar.gz").as_str())
    );
    assert!(j.created_ms > 0);
}

#[tokio::test]
async fn a_name_or_location_outside_the_grant_is_denied_and_never_reaches_sagemaker() {
    let moto = moto().await;
    let cap = capability(&moto).await;
    let sm = sagemaker(&moto.endpoint);
    let id = identity("j-0193A2");
    let ours = id.backend_name.clone();

    // Another resource's name (here, a job of the account that is not this call's).
    let theirs = "prod-churn-model-2024";
    match cap.create_training_job(&id, job(theirs)).await {
        Err(BackendError::Denied(d)) => {
            assert_eq!(d.capability, "sagemaker");
            assert!(
                d.reason.contains(theirs) && d.reason.contains(&ours),
                "{}",
                d.reason
            );
        }
        other => panic!("expected denied, got {other:?}"),
    }
    // Another gateway resource's backend name plus what would look like a suffix of ours.
    let neighbour = format!("{ours}0");
    assert!(matches!(
        cap.create_training_job(&id, job(&neighbour)).await,
        Err(BackendError::Denied(_))
    ));
    // Our name, but data from outside the input prefixes, or output outside the outputs.
    let mut foreign_input = job(&ours);
    foreign_input.channels[1].s3_uri = "s3://mlgw-data/team-b/secrets.csv".into();
    match cap.create_training_job(&id, foreign_input).await {
        Err(BackendError::Denied(d)) => {
            assert!(d.reason.contains("channels[1].s3-uri"), "{}", d.reason);
            assert!(
                d.reason
                    .contains("targets.sm.grants.sagemaker.input_prefixes"),
                "{}",
                d.reason
            );
        }
        other => panic!("expected denied, got {other:?}"),
    }
    let mut foreign_output = job(&ours);
    foreign_output.output_path = "s3://mlgw-data/team-a/outputs/".into();
    assert!(matches!(
        cap.create_training_job(&id, foreign_output).await,
        Err(BackendError::Denied(_))
    ));
    // An input that is no S3 location at all is the spec's mistake, named by field.
    let mut local_input = job(&ours);
    local_input.channels[0].s3_uri = "file:///home/me/iris".into();
    match cap.create_training_job(&id, local_input).await {
        Err(BackendError::InvalidSpec(f)) => {
            assert_eq!(f.field, "channels[0].s3-uri");
            assert!(f.reason.contains("not an s3:// URI"), "{}", f.reason);
        }
        other => panic!("expected invalid-spec, got {other:?}"),
    }

    // SageMaker itself never saw any of them.
    assert_eq!(job_names(&sm).await, Vec::<String>::new());
    for name in [theirs, neighbour.as_str(), ours.as_str()] {
        let e = sm
            .describe_training_job()
            .training_job_name(name)
            .send()
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("Could not find"), "{name}: {e:?}");
    }
    // Asking about another resource is refused the same way, before a request.
    assert!(matches!(
        cap.describe_training_job(&id, theirs).await,
        Err(BackendError::Denied(_))
    ));
}

#[tokio::test]
async fn sagemakers_own_answers_map_onto_the_contract() {
    let moto = moto().await;
    let cap = capability(&moto).await;
    let id = identity("e-0193A3");
    let name = id.backend_name.clone();

    // SageMaker says "Could not find" in a ValidationException: not-found, AWS's words kept.
    match cap.describe_training_job(&id, &name).await {
        Err(BackendError::NotFound(m)) => {
            assert!(
                m.starts_with("DescribeTrainingJob: ") && m.contains("Could not find"),
                "{m}"
            )
        }
        other => panic!("expected not-found, got {other:?}"),
    }
    match cap.create_endpoint(&id, &name, &format!("{name}-r1")).await {
        Err(BackendError::NotFound(m)) => assert!(m.contains("Could not find"), "{m}"),
        other => panic!("expected not-found, got {other:?}"),
    }
    assert!(matches!(
        cap.delete_model(&id, &format!("{name}-r1")).await,
        Err(BackendError::NotFound(_)) | Err(BackendError::InvalidSpec(_))
    ));

    // Nothing listens: unavailable, which the reconciler backs off on.
    let mut g = grant("http://127.0.0.1:1");
    g.region = Some(REGION.into());
    let offline = SagemakerCapability::connect_with("sm", &g, credentials())
        .await
        .unwrap();
    match offline.describe_training_job(&id, &name).await {
        Err(BackendError::Unavailable(m)) => assert!(m.contains("not reached"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn serving_objects_carry_the_role_tags_and_key_and_are_read_back_and_deleted() {
    let moto = moto().await;
    let cap = capability(&moto).await;
    let sm = sagemaker(&moto.endpoint);
    let id = identity("e-0193A4");
    let name = id.backend_name.clone();
    let (model, canary, config) = (
        format!("{name}-r1"),
        format!("{name}-r1-canary"),
        format!("{name}-r1"),
    );

    for (m, data) in [
        (
            &model,
            "s3://mlgw-models/team-a/outputs/j/output/model.tar.gz",
        ),
        (&canary, "s3://mlgw-data/team-a/models/v2/"),
    ] {
        cap.create_model(
            &id,
            ModelRequest {
                name: m.clone(),
                image: "image:1".into(),
                model_data_url: Some(data.into()),
                environment: vec![kv("MLGW_MODEL_FORMAT", "sklearn")],
            },
        )
        .await
        .expect("create model");
    }
    let d = sm
        .describe_model()
        .model_name(&model)
        .send()
        .await
        .expect("DescribeModel");
    assert_eq!(d.execution_role_arn(), Some(ROLE));
    let c = d.primary_container().unwrap();
    assert_eq!(
        c.model_data_url(),
        Some("s3://mlgw-models/team-a/outputs/j/output/model.tar.gz")
    );
    assert_eq!(c.environment().unwrap()["MLGW_MODEL_FORMAT"], "sklearn");
    assert_eq!(d.vpc_config().unwrap().subnets(), ["subnet-0a1b"]);
    assert_eq!(
        tags(&sm, d.model_arn().unwrap()).await["mlgw:resource-id"],
        "e-0193A4"
    );

    let variant = |v: &str, m: &str, w: u32| ProductionVariant {
        variant_name: v.into(),
        model_name: m.into(),
        instance_type: "ml.m5.large".into(),
        initial_instance_count: 1,
        initial_weight: w,
    };
    let config_arn = cap
        .create_endpoint_config(
            &id,
            EndpointConfigRequest {
                name: config.clone(),
                variants: vec![variant("main", &model, 90), variant("canary", &canary, 10)],
            },
        )
        .await
        .expect("create endpoint config");
    let read = cap
        .describe_endpoint_config(&id, &config)
        .await
        .expect("describe endpoint config");
    let fields = |v: &ProductionVariant| {
        (
            v.variant_name.clone(),
            v.model_name.clone(),
            v.instance_type.clone(),
            v.initial_instance_count,
            v.initial_weight,
        )
    };
    assert_eq!(
        read.iter().map(fields).collect::<Vec<_>>(),
        [
            fields(&variant("main", &model, 90)),
            fields(&variant("canary", &canary, 10))
        ]
    );
    let dc = sm
        .describe_endpoint_config()
        .endpoint_config_name(&config)
        .send()
        .await
        .unwrap();
    assert_eq!(dc.kms_key_id(), Some("alias/mlgw-test"));
    assert_eq!(tags(&sm, &config_arn).await["mlgw:target"], "sm");

    let endpoint_arn = cap
        .create_endpoint(&id, &name, &config)
        .await
        .expect("create endpoint");
    assert_eq!(tags(&sm, &endpoint_arn).await["team"], "a");
    let ep = cap.describe_endpoint(&id, &name).await.expect("describe");
    assert_eq!(
        (ep.name.as_str(), ep.arn.as_str()),
        (name.as_str(), endpoint_arn.as_str())
    );
    assert_eq!(ep.config_name, config);
    assert!(!ep.status.is_empty());
    assert_eq!(
        ep.variants
            .iter()
            .map(|v| v.variant_name.as_str())
            .collect::<Vec<_>>(),
        ["main", "canary"]
    );

    cap.delete_endpoint(&id, &name)
        .await
        .expect("delete endpoint");
    cap.delete_endpoint_config(&id, &config)
        .await
        .expect("delete config");
    for m in [&model, &canary] {
        cap.delete_model(&id, m).await.expect("delete model");
    }
    assert!(matches!(
        cap.describe_endpoint(&id, &name).await,
        Err(BackendError::NotFound(_))
    ));
    assert!(sm.describe_model().model_name(&model).send().await.is_err());
}

/// Writes events into a stream of SageMaker's training log group, as its log agent does.
async fn put_events(logs: &aws_sdk_cloudwatchlogs::Client, stream: &str, events: &[(i64, &str)]) {
    let _ = logs
        .create_log_stream()
        .log_group_name(TRAINING_LOG_GROUP)
        .log_stream_name(stream)
        .send()
        .await;
    let mut put = logs
        .put_log_events()
        .log_group_name(TRAINING_LOG_GROUP)
        .log_stream_name(stream);
    for (ts, m) in events {
        put = put.log_events(
            InputLogEvent::builder()
                .timestamp(*ts)
                .message(*m)
                .build()
                .unwrap(),
        );
    }
    put.send().await.expect("PutLogEvents");
}

#[tokio::test]
async fn training_logs_merge_every_instance_in_time_order_and_a_cursor_picks_up_later_events() {
    let moto = moto().await;
    let cap = capability(&moto).await;
    let logs = logs(&moto.endpoint);
    let id = identity("j-0193A5");
    let job = id.backend_name.clone();

    // Before any job has logged (the group does not exist yet): an empty page, no error.
    let empty = cap
        .training_job_logs(&id, &job, None, 10)
        .await
        .expect("logs before the group exists");
    assert!(empty.events.is_empty());

    logs.create_log_group()
        .log_group_name(TRAINING_LOG_GROUP)
        .send()
        .await
        .expect("CreateLogGroup");
    // CloudWatch takes events from the last 14 days only.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    let (s1, s2) = (
        format!("{job}/algo-1-{}", t0 / 1000),
        format!("{job}/algo-2-{}", t0 / 1000),
    );
    put_events(
        &logs,
        &s1,
        &[(t0, "algo-1 epoch 1"), (t0 + 20, "algo-1 epoch 2")],
    )
    .await;
    put_events(
        &logs,
        &s2,
        &[(t0 + 10, "algo-2 epoch 1"), (t0 + 30, "algo-2 epoch 2")],
    )
    .await;
    // Another job whose name starts with this one's: its stream is not this job's.
    put_events(
        &logs,
        &format!("{job}-r2/algo-1-{}", t0 / 1000),
        &[(t0 + 5, "other job")],
    )
    .await;

    let first = cap
        .training_job_logs(&id, &job, None, 3)
        .await
        .expect("first page");
    let seen = |p: &mlgw::contract::mlgw::backend::sagemaker::LogEvents| {
        p.events
            .iter()
            .map(|e| {
                (
                    e.timestamp_ms as i64 - t0,
                    e.log_stream.clone(),
                    e.message.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seen(&first),
        [
            (0, s1.clone(), "algo-1 epoch 1".to_string()),
            (10, s2.clone(), "algo-2 epoch 1".to_string()),
            (20, s1.clone(), "algo-1 epoch 2".to_string()),
        ]
    );
    let second = cap
        .training_job_logs(&id, &job, Some(&first.next_cursor), 3)
        .await
        .expect("second page");
    assert_eq!(
        seen(&second),
        [(30, s2.clone(), "algo-2 epoch 2".to_string())]
    );

    // A followed log: later events, one at the very millisecond of the last one returned and
    // from another instance, are found with the same cursor, and nothing is repeated.
    put_events(
        &logs,
        &s1,
        &[(t0 + 30, "algo-1 epoch 3"), (t0 + 40, "algo-1 done")],
    )
    .await;
    let third = cap
        .training_job_logs(&id, &job, Some(&second.next_cursor), 10)
        .await
        .expect("third page");
    assert_eq!(
        seen(&third),
        [
            (30, s1.clone(), "algo-1 epoch 3".to_string()),
            (40, s1.clone(), "algo-1 done".to_string()),
        ]
    );
    let caught_up = cap
        .training_job_logs(&id, &job, Some(&third.next_cursor), 10)
        .await
        .expect("caught up");
    assert!(caught_up.events.is_empty());
    assert_eq!(caught_up.next_cursor, third.next_cursor);

    match cap
        .training_job_logs(&id, &job, Some("not-a-cursor"), 10)
        .await
    {
        Err(BackendError::InvalidSpec(f)) => assert_eq!(f.field, "cursor"),
        other => panic!("expected invalid-spec, got {other:?}"),
    }
}

fn iris_request(rows: &[[f64; 4]]) -> InferRequest {
    InferRequest {
        inputs: vec![Tensor {
            name: "input-0".into(),
            datatype: "FP64".into(),
            shape: vec![rows.len() as i64, 4],
            parameters: BTreeMap::new(),
            data: TensorData::Float(rows.iter().flatten().copied().collect()),
        }],
        ..Default::default()
    }
}

/// Queues InvokeEndpoint answers in moto (its documented test API): each new request to an
/// endpoint takes the next one.
async fn queue_answers(moto: &Moto, answers: serde_json::Value) {
    let url = format!(
        "{}/moto-api/static/sagemaker/endpoint-results",
        moto.endpoint
    );
    let res = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "results": answers }).to_string())
        .send()
        .await
        .expect("queueing InvokeEndpoint answers");
    assert!(res.status().is_success(), "{}", res.status());
}

fn plane(cap: SagemakerCapability) -> DataPlane {
    let mut cfg = Config::embedded();
    let local = cfg.targets["local"].clone();
    for name in ["sm", "bare"] {
        cfg.targets.insert(
            name.into(),
            TargetConfig {
                plugin: "hostile".into(),
                grants: Default::default(),
                ..local.clone()
            },
        );
    }
    let mut dp = DataPlane::new(&cfg).unwrap();
    dp.set_sagemaker("sm", std::sync::Arc::new(cap));
    dp
}

fn sagemaker_route(endpoint: &str) -> Route {
    Route {
        url: endpoint.into(),
        protocol: Protocol::SagemakerRuntime,
        model_name: endpoint.into(),
        headers: vec![],
    }
}

#[tokio::test]
async fn predictions_go_to_invoke_endpoint_as_oip_v2_and_other_answers_are_named_errors() {
    let moto = moto().await;
    let dp = plane(capability(&moto).await);
    let endpoint_id = "e-0193A6";
    let name = mlgw::domain::backend_name(endpoint_id);
    let route = dp.check("sm", &sagemaker_route(&name)).expect("route");

    let oip = serde_json::json!({"model_name": name, "outputs": [
        {"name": "predict", "shape": [2], "datatype": "INT64", "data": [0, 2]}
    ]});
    queue_answers(
        &moto,
        serde_json::json!([{
            "Body": oip.to_string(),
            "ContentType": "application/json",
            "InvokedProductionVariant": "main",
            "CustomAttributes": ""
        }]),
    )
    .await;

    // A route naming some other endpoint is refused, and sent nothing: the queued answer is
    // still there for the next request that does go out.
    let foreign = dp
        .check("sm", &sagemaker_route("prod-endpoint"))
        .expect("a well-formed route");
    match dp
        .infer(endpoint_id, &foreign, iris_request(&[[5.1, 3.5, 1.4, 0.2]]))
        .await
    {
        Err(DataPlaneError::RouteDenied(d)) => {
            assert!(
                d.reason.contains("prod-endpoint") && d.reason.contains(&name),
                "{d}"
            )
        }
        other => panic!("expected a refused route, got {other:?}"),
    }

    let rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]];
    let answer = dp
        .infer(endpoint_id, &route, iris_request(&rows))
        .await
        .expect("prediction");
    assert_eq!(answer.model_name, name);
    assert_eq!(answer.outputs.len(), 1);
    assert_eq!(answer.outputs[0].name, "predict");
    assert_eq!(answer.outputs[0].data, TensorData::Int(vec![0, 2]));

    // With nothing queued, moto answers its placeholder: not OIP V2, named as such.
    match dp
        .infer(endpoint_id, &route, iris_request(&[[1.0, 1.0, 1.0, 1.0]]))
        .await
    {
        Err(DataPlaneError::BadResponse(m)) => {
            assert!(m.contains(&format!("SageMaker endpoint {name}")), "{m}");
            assert!(m.contains("content type \"content_type\""), "{m}");
        }
        other => panic!("expected a bad response, got {other:?}"),
    }

    // The readiness of such a route is SageMaker's InService, not an HTTP probe.
    dp.model_ready(&route).await.expect("no HTTP probe");
    // A target without the grant cannot use such a route; a url that is no endpoint name is
    // refused too.
    let e = dp.check("bare", &sagemaker_route(&name)).unwrap_err();
    assert!(e.reason.contains("[targets.bare.grants.sagemaker]"), "{e}");
    let e = dp
        .check(
            "sm",
            &sagemaker_route("https://runtime.sagemaker.us-east-1.amazonaws.com/x"),
        )
        .unwrap_err();
    assert!(e.reason.contains("not a SageMaker endpoint name"), "{e}");
}

#[tokio::test]
async fn refused_credentials_make_the_capability_unhealthy_with_awss_reason() {
    // The AWS test server refuses this key as AWS refuses an unknown one.
    let cap = SagemakerCapability::connect_with(
        "sm",
        &grant(&aws::aws().endpoint),
        Credentials::new(aws::REFUSED_ACCESS_KEY_ID, "wrong", None, None, "test"),
    )
    .await
    .unwrap();
    let why = cap.health().await.unwrap_err();
    assert!(why.contains("refused the gateway's credentials"), "{why}");
    assert!(
        why.contains("security token included in the request is invalid"),
        "{why}"
    );
    // And a call through it waits (unavailable) rather than failing the job for good.
    let id = identity("j-0193A7");
    assert!(matches!(
        cap.describe_training_job(&id, &id.backend_name).await,
        Err(BackendError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_health_probe_is_one_request_however_many_ask_while_it_runs() {
    // An endpoint that takes each connection and closes it unanswered: a failure the AWS client
    // counts as transient and, left to itself, retries (three attempts, with backoff).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            // Counted before it is closed, so a caller that saw the close sees the count.
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    let accepted = move || accepted.load(std::sync::atomic::Ordering::SeqCst);
    let cap = SagemakerCapability::connect_with("sm", &grant(&endpoint), credentials())
        .await
        .unwrap();
    // The gateway's start-up probe and a TargetService.List arriving meanwhile.
    let (a, b) = tokio::join!(cap.health(), cap.health());
    let why = a.unwrap_err();
    assert_eq!(b.unwrap_err(), why);
    assert!(why.contains("SageMaker not reached"), "{why}");
    assert_eq!(accepted(), 1, "one probe, one attempt");
    // Within the answer's lifetime, asking again sends nothing.
    assert_eq!(cap.health().await.unwrap_err(), why);
    assert_eq!(accepted(), 1);
}

fn health_config(endpoint: &str) -> String {
    format!(
        r#"
default_target = "local"

[plugins]
hostile = "{hostile}"

[targets.local]
plugin = "local"
[targets.local.grants.process]

[targets.sm]
plugin = "hostile"
[targets.sm.grants.sagemaker]
region = "{REGION}"
role_arn = "{ROLE}"
endpoint_url = "{endpoint}"
"#,
        hostile = mlgw_plugin_artifacts::HOSTILE_PATH
    )
}

/// The gateway's AWS environment: these credentials and nothing from the machine's own setup.
fn aws_env(key: &str, secret: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("AWS_ACCESS_KEY_ID", key),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_CONFIG_FILE", "/nonexistent/mlgw-test/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/mlgw-test/credentials",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    // Other sources of the chain, blanked only if this machine sets them (the gateway inherits
    // the test's environment; an empty value counts as unset).
    for k in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        if std::env::var_os(k).is_some() {
            env.push((k.to_string(), String::new()));
        }
    }
    env
}

async fn targets(gw: &Gateway) -> HashMap<String, pb::Target> {
    let mut c = TargetServiceClient::new(gw.channel().await);
    c.list(pb::ListTargetsRequest {})
        .await
        .expect("ListTargets")
        .into_inner()
        .targets
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

async fn assert_serves_local(gw: &Gateway) {
    let mut c = gw.training().await;
    let j = submit(
        &mut c,
        "local",
        spec(&[&python(), "-c", "print('still serving')"]),
    )
    .await
    .expect("a local job while sm is unhealthy");
    let done = wait_job(&mut c, &j.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
}

#[tokio::test]
async fn a_gateway_with_refused_or_missing_credentials_starts_shows_why_and_serves_the_rest() {
    let server = aws::aws();
    for (env, reason) in [
        (
            aws_env(aws::REFUSED_ACCESS_KEY_ID, "wrong"),
            "refused the gateway's credentials",
        ),
        (
            aws_env("", ""),
            "the gateway has no AWS credentials, nothing was sent",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::start_with_env(
            BIN,
            &dir.path().join("data"),
            Some(&health_config(&server.endpoint)),
            env,
        )
        .await;
        let ts = targets(&gw).await;
        let sm = &ts["sm"];
        assert_eq!(sm.health, pb::TargetHealth::Unhealthy as i32, "{sm:?}");
        assert!(
            sm.health_message.contains("sagemaker"),
            "{}",
            sm.health_message
        );
        assert!(sm.health_message.contains(reason), "{}", sm.health_message);
        // One line: it is a cell of `mlgw targets`.
        assert!(!sm.health_message.contains('\n'), "{}", sm.health_message);
        assert!(
            sm.grants.contains(&"sagemaker".to_string()),
            "{:?}",
            sm.grants
        );
        assert_eq!(ts["local"].health, pb::TargetHealth::Healthy as i32);

        // The CLI shows the same reason.
        let out = std::process::Command::new(BIN)
            .args(["--server", &gw.addr, "targets"])
            .output()
            .expect("mlgw targets");
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{table}");
        assert!(
            table.contains("unhealthy") && table.contains(reason),
            "{table}"
        );

        assert_serves_local(&gw).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Against the AWS test server (tests/aws): jobs that run until stopped, instances that log as
// they train, endpoints that take an update, InvokeEndpoint answering OIP V2 by a fixed rule.
// The server is shared by every test of the run, so every name here is unique.

/// A grant on the AWS test server: its role, and S3 locations of this test's own.
async fn harness_capability(scope: &str) -> SagemakerCapability {
    let mut g = grant(&aws::aws().endpoint);
    g.role_arn = aws::ROLE_ARN.into();
    g.input_prefixes = vec![format!("s3://{}/{scope}/data/", aws::SAGEMAKER_BUCKET)];
    g.output_prefixes = vec![format!("s3://{}/{scope}/out/", aws::SAGEMAKER_BUCKET)];
    SagemakerCapability::connect_with("sm", &g, credentials())
        .await
        .expect("building the capability")
}

/// Whether a line starting with `start` was logged.
fn has(events: &[LogEvent], start: &str) -> bool {
    events.iter().any(|e| e.message.starts_with(start))
}

#[tokio::test]
async fn a_running_job_is_stopped_and_its_followed_log_has_every_instances_events_once_in_order() {
    let scope = cluster::unique("sm-stop");
    let cap = harness_capability(&scope).await;
    let id = identity(&cluster::unique("j"));
    let name = id.backend_name.clone();
    let bucket = aws::SAGEMAKER_BUCKET;
    let mut req = job(&name);
    req.channels = vec![channel(
        "train",
        &format!("s3://{bucket}/{scope}/data/train/"),
    )];
    req.output_path = format!("s3://{bucket}/{scope}/out/");
    req.checkpoint_s3_uri = None;
    req.spot_max_wait_seconds = None;
    // The test server runs this job until it is stopped.
    req.environment = vec![kv(aws::env::OUTCOME, "Running")];
    req.instance_count = 2;
    cap.create_training_job(&id, req.clone())
        .await
        .expect("create");
    // SageMaker refuses a second job of the same name: conflict, so a retry adopts the first.
    match cap.create_training_job(&id, req).await {
        Err(BackendError::Conflict(m)) => assert!(m.starts_with("CreateTrainingJob: "), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }

    // Follow the log with one cursor, as the plugin does, while both instances train.
    let log = RefCell::new((None::<String>, Vec::<LogEvent>::new()));
    let follow = |until: &'static [&'static str]| {
        let (log, cap, id, name) = (&log, &cap, &id, &name);
        move || async move {
            let cursor = log.borrow().0.clone();
            let page = cap
                .training_job_logs(id, name, cursor.as_deref(), 5)
                .await
                .expect("logs");
            let mut l = log.borrow_mut();
            l.1.extend(page.events);
            l.0 = Some(page.next_cursor);
            until.iter().all(|line| has(&l.1, line)).then_some(())
        }
    };
    wait_for(
        Duration::from_secs(30),
        "both instances to log their second epoch",
        follow(&["algo-1 epoch 2 ", "algo-2 epoch 2 "]),
    )
    .await;

    let running = cap
        .describe_training_job(&id, &name)
        .await
        .expect("describe");
    assert_eq!(running.status, "InProgress");
    assert_eq!(running.role_arn, aws::ROLE_ARN);
    cap.stop_training_job(&id, &name).await.expect("stop");
    wait_for(Duration::from_secs(30), "the job to stop", || {
        let (cap, id, name) = (&cap, &id, &name);
        async move {
            let j = cap.describe_training_job(id, name).await.expect("describe");
            (j.status == "Stopped").then_some(j)
        }
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "both instances to log that they stopped",
        follow(&["algo-1 stopped", "algo-2 stopped"]),
    )
    .await;
    // Caught up: nothing new, and the cursor stays where it is.
    let (cursor, ours) = log.into_inner();
    let cursor = cursor.unwrap();
    let after = cap
        .training_job_logs(&id, &name, Some(&cursor), 5)
        .await
        .expect("logs after the end");
    assert!(after.events.is_empty(), "{:?}", after.events);
    assert_eq!(after.next_cursor, cursor);

    // Every event of every instance's stream, each once, in time order: what CloudWatch holds.
    assert!(
        ours.windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms),
        "{ours:?}"
    );
    let streams: BTreeSet<&str> = ours.iter().map(|e| e.log_stream.as_str()).collect();
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(
        streams
            .iter()
            .all(|s| s.starts_with(&format!("{name}/algo-"))),
        "{streams:?}"
    );
    let held = aws::call(
        "logs",
        "FilterLogEvents",
        serde_json::json!({
            "logGroupName": TRAINING_LOG_GROUP,
            "logStreamNamePrefix": format!("{name}/"),
        }),
    )
    .await;
    let mut theirs: Vec<(u64, String, String)> = held["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["timestamp"].as_u64().unwrap(),
                e["logStreamName"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut mine: Vec<(u64, String, String)> = ours
        .into_iter()
        .map(|e| (e.timestamp_ms, e.log_stream, e.message))
        .collect();
    theirs.sort();
    mine.sort();
    assert_eq!(mine, theirs);
}

#[tokio::test]
async fn an_endpoint_takes_an_update_to_its_own_config_and_predictions_are_oip_v2() {
    let scope = cluster::unique("sm-upd");
    let cap = harness_capability(&scope).await;
    let endpoint_id = cluster::unique("e");
    let id = identity(&endpoint_id);
    let name = id.backend_name.clone();
    for r in ["r1", "r2"] {
        let object = format!("{name}-{r}");
        cap.create_model(
            &id,
            ModelRequest {
                name: object.clone(),
                image: "serve:1".into(),
                model_data_url: None,
                environment: vec![],
            },
        )
        .await
        .expect("create model");
        cap.create_endpoint_config(
            &id,
            EndpointConfigRequest {
                name: object.clone(),
                variants: vec![ProductionVariant {
                    variant_name: r.into(),
                    model_name: object,
                    instance_type: "ml.m5.large".into(),
                    initial_instance_count: 1,
                    initial_weight: 100,
                }],
            },
        )
        .await
        .expect("create endpoint config");
    }
    let in_service = |config: String| {
        let (cap, id, name) = (&cap, &id, &name);
        move || {
            let config = config.clone();
            async move {
                let e = cap.describe_endpoint(id, name).await.expect("describe");
                (e.status == "InService" && e.config_name == config).then_some(e)
            }
        }
    };
    cap.create_endpoint(&id, &name, &format!("{name}-r1"))
        .await
        .expect("create endpoint");
    wait_for(
        Duration::from_secs(30),
        "the endpoint in service",
        in_service(format!("{name}-r1")),
    )
    .await;

    // An update to another resource's config is refused before it is sent; to its own, done.
    assert!(matches!(
        cap.update_endpoint(&id, &name, "prod-config").await,
        Err(BackendError::Denied(_))
    ));
    cap.update_endpoint(&id, &name, &format!("{name}-r2"))
        .await
        .expect("update");
    let updated = wait_for(
        Duration::from_secs(30),
        "the update in service",
        in_service(format!("{name}-r2")),
    )
    .await;
    assert_eq!(
        updated
            .variants
            .iter()
            .map(|v| (v.variant_name.as_str(), v.current_weight))
            .collect::<Vec<_>>(),
        [("r2", 100)]
    );
    let held = aws::call(
        "sagemaker",
        "DescribeEndpoint",
        serde_json::json!({ "EndpointName": name }),
    )
    .await;
    assert_eq!(held["EndpointConfigName"], format!("{name}-r2"));

    // Predictions through the data plane: the server answers floor(sum of each row) mod 3.
    let dp = plane(cap);
    let route = dp.check("sm", &sagemaker_route(&name)).expect("route");
    let answer = dp
        .infer(
            &endpoint_id,
            &route,
            iris_request(&[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]),
        )
        .await
        .expect("prediction");
    assert_eq!(answer.model_name, name);
    assert_eq!(answer.outputs[0].name, "predict");
    assert_eq!(answer.outputs[0].data, TensorData::Int(vec![1, 2]));
}
