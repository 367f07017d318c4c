//! Bad input against the real gateway: one row per way to break each request field of every
//! RPC. Each row names the RPC, how the request is broken and what must come back: the code
//! and, for INVALID_ARGUMENT, the field path, both in the `mlgw-field` trailer and leading the
//! message. The table runs after a job was recorded, and ends by checking that the job reads
//! back unchanged and that no broken request created a record. A newly checked field is a new
//! row.

use std::time::Duration;

use mlgw::api::pb::{self, upload_request};
use mlgw_tests::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// One request to one RPC.
enum Call {
    Submit(pb::SubmitJobRequest),
    GetJob(pb::GetJobRequest),
    ListJobs(pb::ListJobsRequest),
    Cancel(pb::CancelJobRequest),
    Watch(pb::WatchJobRequest),
    Logs(pb::JobLogsRequest),
    Deploy(pb::DeployRequest),
    GetEndpoint(pb::GetEndpointRequest),
    ListEndpoints(pb::ListEndpointsRequest),
    Update(pb::UpdateEndpointRequest),
    Delete(pb::DeleteEndpointRequest),
    Predict(pb::PredictRequest),
    GetTarget(pb::GetTargetRequest),
    Upload(Vec<pb::UploadRequest>),
    StatArtifact(pb::StatArtifactRequest),
    DownloadArtifact(pb::DownloadArtifactRequest),
    ListArtifacts(pb::ListArtifactsRequest),
}

struct Clients {
    training: TrainingServiceClient<Channel>,
    serving: ServingServiceClient<Channel>,
    targets: TargetServiceClient<Channel>,
    artifacts: ArtifactServiceClient<Channel>,
}

impl Call {
    fn rpc(&self) -> &'static str {
        match self {
            Call::Submit(_) => "TrainingService.Submit",
            Call::GetJob(_) => "TrainingService.Get",
            Call::ListJobs(_) => "TrainingService.List",
            Call::Cancel(_) => "TrainingService.Cancel",
            Call::Watch(_) => "TrainingService.Watch",
            Call::Logs(_) => "TrainingService.Logs",
            Call::Deploy(_) => "ServingService.Deploy",
            Call::GetEndpoint(_) => "ServingService.Get",
            Call::ListEndpoints(_) => "ServingService.List",
            Call::Update(_) => "ServingService.Update",
            Call::Delete(_) => "ServingService.Delete",
            Call::Predict(_) => "ServingService.Predict",
            Call::GetTarget(_) => "TargetService.Get",
            Call::Upload(_) => "ArtifactService.Upload",
            Call::StatArtifact(_) => "ArtifactService.Stat",
            Call::DownloadArtifact(_) => "ArtifactService.Download",
            Call::ListArtifacts(_) => "ArtifactService.List",
        }
    }

    /// Ok means the gateway accepted the request (for a stream: opened it).
    async fn send(self, c: &mut Clients) -> Result<(), Status> {
        match self {
            Call::Submit(r) => c.training.submit(r).await.map(drop),
            Call::GetJob(r) => c.training.get(r).await.map(drop),
            Call::ListJobs(r) => c.training.list(r).await.map(drop),
            Call::Cancel(r) => c.training.cancel(r).await.map(drop),
            Call::Watch(r) => c.training.watch(r).await.map(drop),
            Call::Logs(r) => c.training.logs(r).await.map(drop),
            Call::Deploy(r) => c.serving.deploy(r).await.map(drop),
            Call::GetEndpoint(r) => c.serving.get(r).await.map(drop),
            Call::ListEndpoints(r) => c.serving.list(r).await.map(drop),
            Call::Update(r) => c.serving.update(r).await.map(drop),
            Call::Delete(r) => c.serving.delete(r).await.map(drop),
            Call::Predict(r) => c.serving.predict(r).await.map(drop),
            Call::GetTarget(r) => c.targets.get(r).await.map(drop),
            Call::Upload(msgs) => c
                .artifacts
                .upload(futures::stream::iter(msgs))
                .await
                .map(drop),
            Call::StatArtifact(r) => c.artifacts.stat(r).await.map(drop),
            Call::DownloadArtifact(r) => c.artifacts.download(r).await.map(drop),
            Call::ListArtifacts(r) => c.artifacts.list(r).await.map(drop),
        }
    }
}

enum Expect {
    /// INVALID_ARGUMENT naming this field path.
    Invalid(String),
    /// Another code: a plausible id or name that names nothing is NOT_FOUND, not invalid.
    Code(Code),
}

struct Row {
    broken: &'static str,
    call: Call,
    expect: Expect,
}

fn invalid(broken: &'static str, call: Call, field: impl Into<String>) -> Row {
    Row {
        broken,
        call,
        expect: Expect::Invalid(field.into()),
    }
}

fn not_found(broken: &'static str, call: Call) -> Row {
    Row {
        broken,
        call,
        expect: Expect::Code(Code::NotFound),
    }
}

// Valid requests, each broken in one place by its row.

fn submit(f: impl FnOnce(&mut pb::SubmitJobRequest)) -> Call {
    let mut r = pb::SubmitJobRequest {
        target: "local".into(),
        spec: Some(spec(&["true"])),
        idempotency_key: String::new(),
    };
    f(&mut r);
    Call::Submit(r)
}

fn training(f: impl FnOnce(&mut pb::TrainingJobSpec)) -> Call {
    submit(|r| f(r.spec.as_mut().unwrap()))
}

fn resources(r: &mut pb::TrainingJobSpec) -> &mut pb::Resources {
    r.resources.get_or_insert_with(Default::default)
}

fn list_jobs(f: impl FnOnce(&mut pb::ListJobsRequest)) -> Call {
    let mut r = pb::ListJobsRequest::default();
    f(&mut r);
    Call::ListJobs(r)
}

fn logs(job: &str, f: impl FnOnce(&mut pb::JobLogsRequest)) -> Call {
    let mut r = pb::JobLogsRequest {
        id: job.into(),
        follow: false,
        cursor: String::new(),
    };
    f(&mut r);
    Call::Logs(r)
}

fn endpoint_spec() -> pb::EndpointSpec {
    pb::EndpointSpec {
        name: "iris".into(),
        model_uri: "file:///nowhere/model".into(),
        model_format: "sklearn".into(),
        ..Default::default()
    }
}

fn deploy(f: impl FnOnce(&mut pb::DeployRequest)) -> Call {
    let mut r = pb::DeployRequest {
        target: "local".into(),
        spec: Some(endpoint_spec()),
        idempotency_key: String::new(),
    };
    f(&mut r);
    Call::Deploy(r)
}

fn serving(f: impl FnOnce(&mut pb::EndpointSpec)) -> Call {
    deploy(|r| f(r.spec.as_mut().unwrap()))
}

fn serving_resources(f: impl FnOnce(&mut pb::Resources)) -> Call {
    serving(|s| f(s.resources.get_or_insert_with(Default::default)))
}

fn list_endpoints(f: impl FnOnce(&mut pb::ListEndpointsRequest)) -> Call {
    let mut r = pb::ListEndpointsRequest::default();
    f(&mut r);
    Call::ListEndpoints(r)
}

fn update(f: impl FnOnce(&mut pb::UpdateEndpointRequest)) -> Call {
    let mut r = pb::UpdateEndpointRequest {
        id: "iris".into(),
        spec: Some(pb::EndpointSpec {
            model_uri: "file:///nowhere/model-v2".into(),
            ..Default::default()
        }),
    };
    f(&mut r);
    Call::Update(r)
}

fn changes(f: impl FnOnce(&mut pb::EndpointSpec)) -> Call {
    update(|r| f(r.spec.as_mut().unwrap()))
}

fn predict(f: impl FnOnce(&mut pb::PredictRequest)) -> Call {
    let mut r = pb::PredictRequest {
        endpoint: "iris".into(),
        inputs: vec![pb::InferTensor {
            name: "input-0".into(),
            datatype: "FP64".into(),
            shape: vec![1, 4],
            fp64_contents: vec![5.1, 3.5, 1.4, 0.2],
            ..Default::default()
        }],
        ..Default::default()
    };
    f(&mut r);
    Call::Predict(r)
}

fn tensor(f: impl FnOnce(&mut pb::InferTensor)) -> Call {
    predict(|r| f(&mut r.inputs[0]))
}

fn target(name: impl Into<String>) -> Call {
    Call::GetTarget(pb::GetTargetRequest { name: name.into() })
}

fn upload_header() -> pb::UploadHeader {
    pb::UploadHeader {
        name: "model.bin".into(),
        kind: pb::ArtifactKind::File as i32,
        sha256: String::new(),
        size: 0,
    }
}

fn header_part(h: pb::UploadHeader) -> pb::UploadRequest {
    pb::UploadRequest {
        part: Some(upload_request::Part::Header(h)),
    }
}

fn chunk_part(data: &[u8]) -> pb::UploadRequest {
    pb::UploadRequest {
        part: Some(upload_request::Part::Chunk(data.to_vec())),
    }
}

/// An upload whose header is broken by `f`, with a little content.
fn upload(f: impl FnOnce(&mut pb::UploadHeader)) -> Call {
    let mut h = upload_header();
    f(&mut h);
    Call::Upload(vec![header_part(h), chunk_part(b"content")])
}

fn stat_artifact(uri: impl Into<String>) -> Call {
    Call::StatArtifact(pb::StatArtifactRequest { uri: uri.into() })
}

fn download_artifact(uri: impl Into<String>) -> Call {
    Call::DownloadArtifact(pb::DownloadArtifactRequest { uri: uri.into() })
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

/// Every request field of every RPC. Fields with no invalid value (`follow`,
/// `include_deleted`) have no row; the state enums do.
fn table(job: &str) -> Vec<Row> {
    let endpoint_id = format!("e-{}", "0".repeat(32));
    let job_token_for_endpoints = job.to_string();
    let endpoint_token_for_jobs = endpoint_id.clone();
    let huge_env_name = "K".repeat(MIB);
    vec![
        // TrainingService.Submit: the request.
        invalid("no spec", submit(|r| r.spec = None), "spec"),
        invalid(
            "target with a slash",
            submit(|r| r.target = "a/b".into()),
            "target",
        ),
        invalid(
            "target of 1 KiB",
            submit(|r| r.target = long(KIB)),
            "target",
        ),
        not_found(
            "a target the config does not define",
            submit(|r| r.target = "nowhere".into()),
        ),
        invalid(
            "idempotency key of 1 MiB",
            submit(|r| r.idempotency_key = long(MIB)),
            "idempotency_key",
        ),
        invalid(
            "idempotency key with a newline",
            submit(|r| r.idempotency_key = "nightly\n2026".into()),
            "idempotency_key",
        ),
        // TrainingService.Submit: the spec.
        invalid(
            "job name with a newline",
            training(|s| s.name = "a\nb".into()),
            "spec.name",
        ),
        invalid(
            "job name with a terminal escape",
            training(|s| s.name = "\u{1b}[31mred".into()),
            "spec.name",
        ),
        invalid(
            "job name of 129 bytes",
            training(|s| s.name = long(129)),
            "spec.name",
        ),
        invalid(
            "image with a space",
            training(|s| s.image = "python 3".into()),
            "spec.image",
        ),
        invalid(
            "image of 2 KiB",
            training(|s| s.image = long(2 * KIB)),
            "spec.image",
        ),
        invalid(
            "empty command",
            training(|s| s.command.clear()),
            "spec.command",
        ),
        invalid(
            "empty program",
            training(|s| s.command = vec![" ".into()]),
            "spec.command",
        ),
        invalid(
            "NUL in the program",
            training(|s| s.command = vec!["tr\0ue".into()]),
            "spec.command[0]",
        ),
        invalid(
            "NUL in a command argument",
            training(|s| s.command.push("a\0b".into())),
            "spec.command[1]",
        ),
        invalid(
            "NUL in an argument",
            training(|s| s.args = vec!["\0".into()]),
            "spec.args[0]",
        ),
        invalid(
            "argument over 64 KiB",
            training(|s| s.args = vec!["ok".into(), long(64 * KIB + 1)]),
            "spec.args[1]",
        ),
        invalid(
            "1024 arguments after the program",
            training(|s| s.args = vec![String::new(); 1024]),
            "spec.args",
        ),
        invalid(
            "environment name starting with a digit",
            training(|s| {
                s.env.insert("1BAD".into(), "x".into());
            }),
            "spec.env.1BAD",
        ),
        invalid(
            "environment name with '='",
            training(|s| {
                s.env.insert("A=B".into(), "x".into());
            }),
            "spec.env.A=B",
        ),
        invalid(
            "environment name of 1 MiB",
            training(|s| {
                s.env.insert(huge_env_name, String::new());
            }),
            format!("spec.env.{}...", "K".repeat(64)),
        ),
        invalid(
            "NUL in an environment value",
            training(|s| {
                s.env.insert("GREETING".into(), "hi\0there".into());
            }),
            "spec.env.GREETING",
        ),
        invalid(
            "1025 environment variables",
            training(|s| {
                s.env = (0..1025)
                    .map(|i| (format!("V{i}"), String::new()))
                    .collect()
            }),
            "spec.env",
        ),
        invalid(
            "empty hyperparameter name",
            training(|s| {
                s.hyperparameters.insert(String::new(), "1".into());
            }),
            "spec.hyperparameters",
        ),
        invalid(
            "hyperparameter name with a newline",
            training(|s| {
                s.hyperparameters.insert("l\nr".into(), "1".into());
            }),
            "spec.hyperparameters.l\\nr",
        ),
        invalid(
            "NUL in a hyperparameter value",
            training(|s| {
                s.hyperparameters.insert("lr".into(), "0.1\0".into());
            }),
            "spec.hyperparameters.lr",
        ),
        invalid(
            "input channel without a name",
            training(|s| {
                s.inputs = vec![pb::InputChannel {
                    name: String::new(),
                    uri: "/data".into(),
                }]
            }),
            "spec.inputs[0].name",
        ),
        invalid(
            "input channel name with a slash",
            training(|s| {
                s.inputs = vec![pb::InputChannel {
                    name: "a/b".into(),
                    uri: "/data".into(),
                }]
            }),
            "spec.inputs[0].name",
        ),
        invalid(
            "input channel given twice",
            training(|s| {
                s.inputs = vec![
                    pb::InputChannel {
                        name: "train".into(),
                        uri: "/a".into(),
                    },
                    pb::InputChannel {
                        name: "train".into(),
                        uri: "/b".into(),
                    },
                ]
            }),
            "spec.inputs[1].name",
        ),
        invalid(
            "input channel without a URI",
            training(|s| {
                s.inputs = vec![pb::InputChannel {
                    name: "train".into(),
                    uri: String::new(),
                }]
            }),
            "spec.inputs[0].uri",
        ),
        invalid(
            "input URI with a newline",
            training(|s| {
                s.inputs = vec![pb::InputChannel {
                    name: "train".into(),
                    uri: "/data\n".into(),
                }]
            }),
            "spec.inputs[0].uri",
        ),
        invalid(
            "65 input channels",
            training(|s| {
                s.inputs = (0..65)
                    .map(|i| pb::InputChannel {
                        name: format!("c{i}"),
                        uri: "/data".into(),
                    })
                    .collect()
            }),
            "spec.inputs",
        ),
        invalid(
            "code URI with a NUL",
            training(|s| s.code_uri = "s3://b/k\0".into()),
            "spec.code_uri",
        ),
        invalid(
            "code URI of 8 KiB",
            training(|s| s.code_uri = format!("s3://b/{}", long(8 * KIB))),
            "spec.code_uri",
        ),
        invalid(
            "output URI with a NUL",
            training(|s| s.output_uri = "/out\0".into()),
            "spec.output_uri",
        ),
        invalid(
            "output URI of 8 KiB",
            training(|s| s.output_uri = format!("/{}", long(8 * KIB))),
            "spec.output_uri",
        ),
        invalid(
            "relative output path (the local plugin's check)",
            training(|s| s.output_uri = "relative/dir".into()),
            "spec.output_uri",
        ),
        invalid(
            "cpu that is no quantity",
            training(|s| resources(s).cpu = "two".into()),
            "spec.resources.cpu",
        ),
        invalid(
            "memory of 1 KiB of digits",
            training(|s| resources(s).memory = "1".repeat(KIB)),
            "spec.resources.memory",
        ),
        invalid(
            "a GPU on the local target (the plugin's check)",
            training(|s| resources(s).gpus = 1),
            "spec.resources.gpus",
        ),
        invalid(
            "1025 GPUs",
            training(|s| resources(s).gpus = 1025),
            "spec.resources.gpus",
        ),
        invalid(
            "GPU type with a tab",
            training(|s| resources(s).gpu_type = "a100\t".into()),
            "spec.resources.gpu_type",
        ),
        invalid(
            "instance type of 1 KiB",
            training(|s| resources(s).instance_type = long(KIB)),
            "spec.resources.instance_type",
        ),
        invalid(
            "1025 nodes",
            training(|s| resources(s).nodes = 1025),
            "spec.resources.nodes",
        ),
        invalid(
            "two nodes on the local target (the plugin's check)",
            training(|s| resources(s).nodes = 2),
            "spec.resources.nodes",
        ),
        invalid(
            "max_runtime_seconds near 2^63",
            training(|s| s.max_runtime_seconds = (1 << 63) - 1),
            "spec.max_runtime_seconds",
        ),
        invalid(
            "max_runtime_seconds of 366 days and a second",
            training(|s| s.max_runtime_seconds = 366 * 24 * 3600 + 1),
            "spec.max_runtime_seconds",
        ),
        invalid(
            "framework with a newline",
            training(|s| s.framework = "torch\n".into()),
            "spec.framework",
        ),
        // TrainingService.Get, Cancel, Watch: the id.
        invalid(
            "empty id",
            Call::GetJob(pb::GetJobRequest { id: String::new() }),
            "id",
        ),
        invalid(
            "id of 1 KiB",
            Call::GetJob(pb::GetJobRequest { id: long(KIB) }),
            "id",
        ),
        invalid(
            "id with a NUL",
            Call::GetJob(pb::GetJobRequest { id: "j-\0".into() }),
            "id",
        ),
        invalid(
            "id with a space",
            Call::GetJob(pb::GetJobRequest { id: "j- 1".into() }),
            "id",
        ),
        not_found(
            "a plausible id that names no job",
            Call::GetJob(pb::GetJobRequest {
                id: "j-missing".into(),
            }),
        ),
        invalid(
            "id with a newline",
            Call::Cancel(pb::CancelJobRequest { id: "j-1\n".into() }),
            "id",
        ),
        not_found(
            "a plausible id that names no job",
            Call::Cancel(pb::CancelJobRequest {
                id: "j-missing".into(),
            }),
        ),
        invalid(
            "id of 1 MiB",
            Call::Watch(pb::WatchJobRequest {
                id: long(MIB),
                ..Default::default()
            }),
            "id",
        ),
        not_found(
            "a plausible id that names no job",
            Call::Watch(pb::WatchJobRequest {
                id: "j-missing".into(),
                ..Default::default()
            }),
        ),
        invalid(
            "a filter with one job's id",
            Call::Watch(pb::WatchJobRequest {
                id: "j-1".into(),
                target: "local".into(),
                ..Default::default()
            }),
            "target",
        ),
        invalid(
            "a feed position with one job's id",
            Call::Watch(pb::WatchJobRequest {
                id: "j-1".into(),
                after_feed_sequence: Some(3),
                ..Default::default()
            }),
            "after_feed_sequence",
        ),
        invalid(
            "watching every job for an unspecified state",
            Call::Watch(pb::WatchJobRequest {
                states: vec![pb::JobState::Running as i32, 0],
                ..Default::default()
            }),
            "states[1]",
        ),
        invalid(
            "watching every job for a state that does not exist",
            Call::Watch(pb::WatchJobRequest {
                states: vec![42],
                ..Default::default()
            }),
            "states[0]",
        ),
        not_found(
            "watching every job of a target that does not exist",
            Call::Watch(pb::WatchJobRequest {
                target: "nosuchtarget".into(),
                ..Default::default()
            }),
        ),
        // TrainingService.Logs.
        invalid("id with a tab", logs("j-\t", |_| {}), "id"),
        not_found(
            "a plausible id that names no job",
            logs("j-missing", |_| {}),
        ),
        invalid(
            "cursor this gateway never handed out",
            logs(job, |r| r.cursor = "garbage".into()),
            "cursor",
        ),
        invalid(
            "cursor of 1 MiB",
            logs(job, |r| r.cursor = format!("0.{}", long(MIB))),
            "cursor",
        ),
        invalid(
            "cursor with a NUL",
            logs(job, |r| r.cursor = "0.\0".into()),
            "cursor",
        ),
        // TrainingService.List.
        invalid(
            "target with a space",
            list_jobs(|r| r.target = "lo cal".into()),
            "target",
        ),
        not_found(
            "a target the config does not define",
            list_jobs(|r| r.target = "nowhere".into()),
        ),
        invalid(
            "state out of the enum",
            list_jobs(|r| r.state = 99),
            "state",
        ),
        invalid(
            "page size over 1000",
            list_jobs(|r| r.page_size = 1001),
            "page_size",
        ),
        invalid(
            "garbage page token",
            list_jobs(|r| r.page_token = "zzz".into()),
            "page_token",
        ),
        invalid(
            "an endpoint id as page token",
            list_jobs(|r| r.page_token = endpoint_token_for_jobs),
            "page_token",
        ),
        invalid(
            "page token of 1 MiB",
            list_jobs(|r| r.page_token = long(MIB)),
            "page_token",
        ),
        invalid(
            "upper-cased page token",
            list_jobs(|r| r.page_token = job.to_uppercase()),
            "page_token",
        ),
        // ServingService.Deploy: the request.
        invalid("no spec", deploy(|r| r.spec = None), "spec"),
        invalid(
            "target with a NUL",
            deploy(|r| r.target = "local\0".into()),
            "target",
        ),
        not_found(
            "a target the config does not define",
            deploy(|r| r.target = "nowhere".into()),
        ),
        invalid(
            "idempotency key of 257 bytes",
            deploy(|r| r.idempotency_key = long(257)),
            "idempotency_key",
        ),
        invalid(
            "idempotency key with a non-ASCII letter",
            deploy(|r| r.idempotency_key = "cl\u{e9}".into()),
            "idempotency_key",
        ),
        // ServingService.Deploy: the spec.
        invalid(
            "name with upper case",
            serving(|s| s.name = "Iris".into()),
            "spec.name",
        ),
        invalid(
            "name of 64 bytes",
            serving(|s| s.name = "a".repeat(64)),
            "spec.name",
        ),
        invalid(
            "empty model URI",
            serving(|s| s.model_uri.clear()),
            "spec.model_uri",
        ),
        invalid(
            "model URI with a newline",
            serving(|s| s.model_uri = "file:///m\n".into()),
            "spec.model_uri",
        ),
        invalid(
            "model URI of 8 KiB",
            serving(|s| s.model_uri = format!("file:///{}", long(8 * KIB))),
            "spec.model_uri",
        ),
        invalid(
            "empty model format",
            serving(|s| s.model_format.clear()),
            "spec.model_format",
        ),
        invalid(
            "model format with a space",
            serving(|s| s.model_format = "sk learn".into()),
            "spec.model_format",
        ),
        invalid(
            "model format the local plugin does not serve",
            serving(|s| s.model_format = "caffe".into()),
            "spec.model_format",
        ),
        invalid(
            "runtime with a newline",
            serving(|s| s.runtime = "mlserver_sklearn.SKLearnModel\n".into()),
            "spec.runtime",
        ),
        invalid(
            "runtime of 1 KiB",
            serving(|s| s.runtime = long(KIB)),
            "spec.runtime",
        ),
        invalid(
            "image with a NUL",
            serving(|s| s.image = "img\0".into()),
            "spec.image",
        ),
        invalid(
            "cpu that is no quantity",
            serving_resources(|r| r.cpu = "1 core".into()),
            "spec.resources.cpu",
        ),
        invalid(
            "memory that is no quantity",
            serving_resources(|r| r.memory = "4GB".into()),
            "spec.resources.memory",
        ),
        invalid(
            "a GPU on the local target (the plugin's check)",
            serving_resources(|r| r.gpus = 1),
            "spec.resources.gpus",
        ),
        invalid(
            "GPU type with a control character",
            serving_resources(|r| r.gpu_type = "t4\u{7}".into()),
            "spec.resources.gpu_type",
        ),
        invalid(
            "instance type with a space",
            serving_resources(|r| r.instance_type = "ml m5".into()),
            "spec.resources.instance_type",
        ),
        invalid(
            "1025 nodes",
            serving_resources(|r| r.nodes = 1025),
            "spec.resources.nodes",
        ),
        invalid(
            "1025 min replicas",
            serving(|s| {
                s.min_replicas = 1025;
                s.max_replicas = 1025;
            }),
            "spec.min_replicas",
        ),
        invalid(
            "max replicas below min replicas",
            serving(|s| {
                s.min_replicas = 3;
                s.max_replicas = 2;
            }),
            "spec.max_replicas",
        ),
        invalid(
            "two replicas on the local target (the plugin's check)",
            serving(|s| s.max_replicas = 2),
            "spec.max_replicas",
        ),
        invalid(
            "canary percent over 100",
            serving(|s| s.canary_percent = Some(101)),
            "spec.canary_percent",
        ),
        // ServingService.Get, Delete: an id or name.
        invalid(
            "empty id",
            Call::GetEndpoint(pb::GetEndpointRequest { id: String::new() }),
            "id",
        ),
        invalid(
            "id with a newline",
            Call::GetEndpoint(pb::GetEndpointRequest {
                id: "iris\n".into(),
            }),
            "id",
        ),
        not_found(
            "a name that names no endpoint",
            Call::GetEndpoint(pb::GetEndpointRequest { id: "nope".into() }),
        ),
        invalid(
            "id of 1 KiB",
            Call::Delete(pb::DeleteEndpointRequest { id: long(KIB) }),
            "id",
        ),
        not_found(
            "an id that names no endpoint",
            Call::Delete(pb::DeleteEndpointRequest {
                id: endpoint_id.clone(),
            }),
        ),
        // ServingService.List.
        invalid(
            "target of 65 bytes",
            list_endpoints(|r| r.target = long(65)),
            "target",
        ),
        invalid(
            "state out of the enum",
            list_endpoints(|r| r.state = 42),
            "state",
        ),
        invalid(
            "page size of 5000",
            list_endpoints(|r| r.page_size = 5000),
            "page_size",
        ),
        invalid(
            "garbage page token",
            list_endpoints(|r| r.page_token = "e-".into()),
            "page_token",
        ),
        invalid(
            "a job id as page token",
            list_endpoints(|r| r.page_token = job_token_for_endpoints),
            "page_token",
        ),
        // ServingService.Update: checked before the endpoint is looked up.
        invalid("id with a slash", update(|r| r.id = "../iris".into()), "id"),
        invalid("no spec", update(|r| r.spec = None), "spec"),
        invalid(
            "a new name that is no DNS label",
            changes(|s| s.name = "Iris!".into()),
            "spec.name",
        ),
        invalid(
            "model URI with a NUL",
            changes(|s| s.model_uri = "file:///m\0".into()),
            "spec.model_uri",
        ),
        invalid(
            "model format with a newline",
            changes(|s| s.model_format = "sklearn\n".into()),
            "spec.model_format",
        ),
        invalid(
            "runtime with a space",
            changes(|s| s.runtime = "a b".into()),
            "spec.runtime",
        ),
        invalid(
            "image of 2 KiB",
            changes(|s| s.image = long(2 * KIB)),
            "spec.image",
        ),
        invalid(
            "cpu that is no quantity",
            changes(|s| {
                s.resources = Some(pb::Resources {
                    cpu: "lots".into(),
                    ..Default::default()
                })
            }),
            "spec.resources.cpu",
        ),
        invalid(
            "1025 min replicas",
            changes(|s| s.min_replicas = 1025),
            "spec.min_replicas",
        ),
        invalid(
            "1025 max replicas",
            changes(|s| s.max_replicas = 1025),
            "spec.max_replicas",
        ),
        invalid(
            "canary percent over 100",
            changes(|s| s.canary_percent = Some(150)),
            "spec.canary_percent",
        ),
        not_found("a valid change to no endpoint", update(|_| {})),
        // ServingService.Predict: checked before the endpoint is looked up.
        invalid(
            "empty endpoint",
            predict(|r| r.endpoint.clear()),
            "endpoint",
        ),
        invalid(
            "endpoint with a newline",
            predict(|r| r.endpoint = "iris\n".into()),
            "endpoint",
        ),
        not_found("a valid prediction for no endpoint", predict(|_| {})),
        invalid("no inputs", predict(|r| r.inputs.clear()), "inputs"),
        invalid(
            "257 inputs",
            predict(|r| r.inputs = vec![r.inputs[0].clone(); 257]),
            "inputs",
        ),
        invalid(
            "input without a name",
            tensor(|t| t.name.clear()),
            "inputs[0].name",
        ),
        invalid(
            "input name with a NUL",
            tensor(|t| t.name = "in\0".into()),
            "inputs[0].name",
        ),
        invalid(
            "input name of 1 KiB",
            tensor(|t| t.name = long(KIB)),
            "inputs[0].name",
        ),
        invalid(
            "datatype outside the protocol",
            tensor(|t| t.datatype = "FLOAT".into()),
            "inputs[0].datatype",
        ),
        invalid(
            "datatype of 1 MiB",
            tensor(|t| t.datatype = long(MIB)),
            "inputs[0].datatype",
        ),
        invalid(
            "contents in the wrong field",
            tensor(|t| {
                t.fp64_contents.clear();
                t.int64_contents = vec![1, 2, 3, 4];
            }),
            "inputs[0].contents",
        ),
        invalid(
            "two contents fields",
            tensor(|t| t.int64_contents = vec![1, 2, 3, 4]),
            "inputs[0].contents",
        ),
        invalid(
            "negative dimension",
            tensor(|t| t.shape = vec![-1, -4]),
            "inputs[0].shape",
        ),
        invalid(
            "shape that does not hold the contents",
            tensor(|t| t.shape = vec![2, 4]),
            "inputs[0].shape",
        ),
        invalid(
            "shape whose element count wraps around to zero",
            tensor(|t| {
                t.shape = vec![1 << 32, 1 << 32];
                t.fp64_contents.clear();
            }),
            "inputs[0].shape",
        ),
        invalid(
            "empty shape with a huge dimension",
            tensor(|t| {
                t.shape = vec![0, 1 << 40];
                t.fp64_contents.clear();
            }),
            "inputs[0].shape",
        ),
        invalid(
            "33 dimensions",
            tensor(|t| {
                t.shape = vec![1; 33];
                t.fp64_contents = vec![1.0];
            }),
            "inputs[0].shape",
        ),
        invalid(
            "tensor parameter with a NUL",
            tensor(|t| {
                t.parameters.insert("content_type".into(), "np\0".into());
            }),
            "inputs[0].parameters.content_type",
        ),
        invalid(
            "tensor parameter without a name",
            tensor(|t| {
                t.parameters.insert(String::new(), "x".into());
            }),
            "inputs[0].parameters",
        ),
        invalid(
            "output without a name",
            predict(|r| r.outputs = vec![String::new()]),
            "outputs[0]",
        ),
        invalid(
            "output name with a newline",
            predict(|r| r.outputs = vec!["predict".into(), "p\n".into()]),
            "outputs[1]",
        ),
        invalid(
            "257 outputs",
            predict(|r| r.outputs = (0..257).map(|i| format!("o{i}")).collect()),
            "outputs",
        ),
        invalid(
            "request id with a newline",
            predict(|r| r.request_id = "r\n1".into()),
            "request_id",
        ),
        invalid(
            "request id of 1 KiB",
            predict(|r| r.request_id = long(KIB)),
            "request_id",
        ),
        invalid(
            "parameter with a NUL",
            predict(|r| {
                r.parameters.insert("x".into(), "\0".into());
            }),
            "parameters.x",
        ),
        invalid(
            "parameter name with a bell",
            predict(|r| {
                r.parameters.insert("a\u{7}".into(), "1".into());
            }),
            "parameters.a\\u{7}",
        ),
        // ArtifactService.Upload: the stream, then each header field; the content.
        invalid(
            "content before the header",
            Call::Upload(vec![chunk_part(b"content")]),
            "header",
        ),
        invalid("no message at all", Call::Upload(vec![]), "header"),
        invalid(
            "a second header",
            Call::Upload(vec![
                header_part(upload_header()),
                chunk_part(b"content"),
                header_part(upload_header()),
            ]),
            "header",
        ),
        invalid(
            "a message with neither part",
            Call::Upload(vec![
                header_part(upload_header()),
                pb::UploadRequest { part: None },
            ]),
            "part",
        ),
        invalid(
            "name of 1 KiB",
            upload(|h| h.name = long(KIB)),
            "header.name",
        ),
        invalid(
            "name with a newline",
            upload(|h| h.name = "a\nb".into()),
            "header.name",
        ),
        invalid(
            "kind unspecified",
            upload(|h| h.kind = pb::ArtifactKind::Unspecified as i32),
            "header.kind",
        ),
        invalid("kind 7", upload(|h| h.kind = 7), "header.kind"),
        invalid(
            "sha256 that is no digest",
            upload(|h| h.sha256 = "xyz".into()),
            "header.sha256",
        ),
        invalid(
            "sha256 of other content",
            upload(|h| h.sha256 = "0".repeat(64)),
            "header.sha256",
        ),
        invalid(
            "size over the limit",
            upload(|h| h.size = 2 << 30),
            "header.size",
        ),
        invalid(
            "size that is not what follows",
            upload(|h| h.size = 3),
            "header.size",
        ),
        invalid(
            "a directory that is no tar archive",
            upload(|h| h.kind = pb::ArtifactKind::Directory as i32),
            "chunk",
        ),
        // ArtifactService.Stat and Download.
        invalid("empty URI", stat_artifact(""), "uri"),
        invalid("URI without a scheme", stat_artifact("model.joblib"), "uri"),
        invalid(
            "sha256 that is no digest",
            stat_artifact("sha256:abc"),
            "uri",
        ),
        invalid("URI with a newline", stat_artifact("file:///a\nb"), "uri"),
        invalid(
            "URI of 8 KiB",
            stat_artifact(format!("s3://b/{}", long(8 * KIB))),
            "uri",
        ),
        not_found(
            "a digest the store does not hold",
            stat_artifact(format!("sha256:{}", "0".repeat(64))),
        ),
        not_found(
            "a bucket that is not the store's",
            stat_artifact("s3://another-bucket/default/sha256/x"),
        ),
        invalid("empty URI", download_artifact(""), "uri"),
        invalid(
            "URI without a scheme",
            download_artifact("/etc/passwd"),
            "uri",
        ),
        not_found(
            "a digest the store does not hold",
            download_artifact(format!("sha256:{}", "0".repeat(64))),
        ),
        // ArtifactService.List.
        invalid(
            "page size over 1000",
            Call::ListArtifacts(pb::ListArtifactsRequest {
                page_size: 1001,
                page_token: String::new(),
            }),
            "page_size",
        ),
        invalid(
            "a page token it never handed out",
            Call::ListArtifacts(pb::ListArtifactsRequest {
                page_size: 0,
                page_token: job.to_string(),
            }),
            "page_token",
        ),
        // TargetService.Get.
        invalid("empty name", target(""), "name"),
        invalid("name with a slash", target("local/x"), "name"),
        invalid("name of 1 KiB", target(long(KIB)), "name"),
        not_found("a name the config does not define", target("nowhere")),
    ]
}

#[tokio::test]
async fn every_bad_request_field_is_refused_and_nothing_stored_changes() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), None).await;
    let ch = gw.channel().await;
    let mut c = Clients {
        training: TrainingServiceClient::new(ch.clone()),
        serving: ServingServiceClient::new(ch.clone()),
        targets: TargetServiceClient::new(ch.clone()),
        artifacts: ArtifactServiceClient::new(ch),
    };
    // A record to keep: finished, so nothing but a broken request could change it.
    let kept = submit_and_wait(&mut c.training).await;

    let mut failures = Vec::new();
    let rows = table(&kept.id);
    let count = rows.len();
    for Row {
        broken,
        call,
        expect,
    } in rows
    {
        let rpc = call.rpc();
        let what = format!("{rpc} with {broken}");
        let err = match call.send(&mut c).await {
            Ok(()) => {
                failures.push(format!("{what}: accepted"));
                continue;
            }
            Err(e) => e,
        };
        match &expect {
            Expect::Code(code) if err.code() != *code => failures.push(format!(
                "{what}: {:?} instead of {code:?}: {}",
                err.code(),
                err.message()
            )),
            Expect::Code(_) => {}
            Expect::Invalid(field) => {
                let trailer = err.metadata().get("mlgw-field").map(|v| v.to_str().ok());
                if err.code() != Code::InvalidArgument {
                    failures.push(format!(
                        "{what}: {:?} instead of InvalidArgument: {}",
                        err.code(),
                        err.message()
                    ));
                } else if trailer != Some(Some(field.as_str())) {
                    failures.push(format!(
                        "{what}: mlgw-field {trailer:?} instead of {field:?} ({})",
                        err.message()
                    ));
                } else if !err.message().starts_with(&format!("{field}: ")) {
                    failures.push(format!(
                        "{what}: message does not lead with {field:?}: {}",
                        err.message()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing stored was lost or changed, and no broken request created a record.
    let now = c
        .training
        .get(pb::GetJobRequest {
            id: kept.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, kept, "the job reads back unchanged");
    let jobs = c
        .training
        .list(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        jobs.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&kept.id]
    );
    let endpoints = c
        .serving
        .list(pb::ListEndpointsRequest {
            include_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(endpoints.endpoints.is_empty(), "{:?}", endpoints.endpoints);
    let artifacts = c
        .artifacts
        .list(pb::ListArtifactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(artifacts.artifacts.is_empty(), "{:?}", artifacts.artifacts);
}

async fn submit_and_wait(c: &mut TrainingServiceClient<Channel>) -> pb::Job {
    let job = mlgw_tests::submit(c, "local", spec(&["true"]))
        .await
        .unwrap();
    let done = wait_job(c, &job.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    // The record as Get answers it, the same shape the check at the end reads.
    c.get(pb::GetJobRequest { id: job.id })
        .await
        .unwrap()
        .into_inner()
}

/// A zero reconcile interval used to panic the reconciler inside a gateway that went on
/// serving; now the config check refuses it and the gateway never starts.
#[tokio::test]
async fn a_zero_reconcile_interval_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mlgw.toml");
    std::fs::write(
        &config,
        "[limits]\nreconcile_interval_ms = 0\n[targets.local]\nplugin = \"local\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (_, stderr) = serve_refuses(
        BIN,
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
    )
    .await;
    assert!(
        stderr.contains("limits.reconcile_interval_ms: must be positive"),
        "{stderr}"
    );
}
