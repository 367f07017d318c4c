//! Client subcommands: each is one or a few calls on the gRPC API.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::Value;
use tonic::transport::Channel;

use super::render;
use super::{Command, Conn, Output, pack};
use crate::api::pb::{
    self, artifact_service_client::ArtifactServiceClient,
    serving_service_client::ServingServiceClient, target_service_client::TargetServiceClient,
    training_service_client::TrainingServiceClient,
};

#[derive(Args)]
pub struct SubmitArgs {
    /// Target to run on (default: the gateway's default target).
    #[arg(long, default_value = "")]
    target: String,
    #[arg(long, default_value = "")]
    name: String,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Hyperparameter KEY=VALUE, repeatable.
    #[arg(long = "hp", value_parser = key_value)]
    hyperparameters: Vec<(String, String)>,
    /// Input channel NAME=URI, repeatable.
    #[arg(long = "input", value_parser = key_value)]
    inputs: Vec<(String, String)>,
    #[arg(long, default_value = "")]
    output_uri: String,
    #[arg(long, default_value = "")]
    image: String,
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    #[arg(long, default_value = "")]
    cpu: String,
    #[arg(long, default_value = "")]
    memory: String,
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Seconds.
    #[arg(long, default_value_t = 0)]
    max_runtime: u64,
    #[arg(long, default_value = "")]
    framework: String,
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// A directory of code to upload with the job; the command runs in it on the target.
    /// `.gitignore` and `.mlgwignore` excludes apply.
    #[arg(long)]
    code: Option<std::path::PathBuf>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct DeployArgs {
    /// Endpoint name (also the model name on the model server).
    #[arg(long)]
    name: String,
    #[arg(long)]
    model_uri: String,
    /// Model format, e.g. sklearn, xgboost.
    #[arg(long = "format", default_value = "sklearn")]
    model_format: String,
    #[arg(long, default_value = "")]
    target: String,
    #[arg(long, default_value = "")]
    runtime: String,
    #[arg(long, default_value_t = 1)]
    min_replicas: u32,
    #[arg(long, default_value_t = 0)]
    max_replicas: u32,
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    #[arg(long)]
    canary_percent: Option<u32>,
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// Wait until the endpoint is ready (or failed), up to this many seconds.
    #[arg(long)]
    wait: Option<u64>,
}

#[derive(Args)]
pub struct UpdateArgs {
    endpoint: String,
    #[arg(long, default_value = "")]
    model_uri: String,
    #[arg(long = "format", default_value = "")]
    model_format: String,
    #[arg(long)]
    canary_percent: Option<u32>,
    #[arg(long)]
    wait: Option<u64>,
}

#[derive(Args)]
pub struct PredictArgs {
    endpoint: String,
    /// A JSON array of rows (e.g. '[[5.1, 3.5, 1.4, 0.2]]') or an OIP V2 request body.
    #[arg(long)]
    data: String,
    /// Datatype for a plain array.
    #[arg(long, default_value = "FP64")]
    datatype: String,
}

#[derive(clap::Subcommand)]
pub enum ArtifactsCommand {
    /// Upload a file as it is, or a directory packed as a tarball; prints the artifact URI.
    Put {
        path: std::path::PathBuf,
        /// A label (default: the file or directory name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Download an artifact: a file is written as it is, a directory is unpacked.
    Get {
        /// The URI `put` printed, or sha256:<hex>.
        uri: String,
        /// Where to (default: the artifact's name in the current directory; "-" writes a
        /// file to stdout).
        #[arg(long = "out", short = 'O')]
        out: Option<std::path::PathBuf>,
        /// Write a directory artifact's tarball instead of unpacking it.
        #[arg(long)]
        archive: bool,
    },
    /// List artifacts, newest first.
    Ls {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("cannot reach the gateway at {0}: {1}")]
    Connect(String, String),
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Pack(#[from] pack::PackError),
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        InvalidArgument => "invalid argument",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        FailedPrecondition => "failed precondition",
        Unavailable => "unavailable",
        Unimplemented => "unsupported",
        DeadlineExceeded => "deadline exceeded",
        ResourceExhausted => "resource exhausted",
        Internal => "internal error",
        _ => "error",
    }
}

async fn connect(server: &str) -> Result<Channel, ClientError> {
    let url = if server.starts_with("http://") || server.starts_with("https://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let ep = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::Usage(format!("bad server address {server:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    ep.connect()
        .await
        .map_err(|e| ClientError::Connect(url, format!("{e}")))
}

pub fn run(conn: &Conn, cmd: Command) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a runtime");
    match rt.block_on(dispatch(conn, cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn state_to_pb(s: StateArg) -> pb::JobState {
    match s {
        StateArg::Pending => pb::JobState::Pending,
        StateArg::Running => pb::JobState::Running,
        StateArg::Succeeded => pb::JobState::Succeeded,
        StateArg::Failed => pb::JobState::Failed,
        StateArg::Cancelled => pb::JobState::Cancelled,
    }
}

async fn dispatch(conn: &Conn, cmd: Command) -> Result<ExitCode, ClientError> {
    let ch = connect(&conn.server).await?;
    let mut training = TrainingServiceClient::new(ch.clone());
    let mut serving = ServingServiceClient::new(ch.clone());
    let out = conn.output;
    match cmd {
        Command::Submit(a) => {
            let mut command = a.command;
            let args = command.split_off(1);
            let code_uri = match &a.code {
                Some(dir) => {
                    if !dir.is_dir() {
                        return Err(ClientError::Usage(format!(
                            "--code {}: not a directory",
                            dir.display()
                        )));
                    }
                    upload_path(ch.clone(), dir, None).await?.uri
                }
                None => String::new(),
            };
            let job = training
                .submit(pb::SubmitJobRequest {
                    target: a.target,
                    idempotency_key: a.idempotency_key,
                    spec: Some(pb::TrainingJobSpec {
                        name: a.name,
                        image: a.image,
                        command,
                        args,
                        env: a.env.into_iter().collect(),
                        hyperparameters: a.hyperparameters.into_iter().collect(),
                        inputs: a
                            .inputs
                            .into_iter()
                            .map(|(name, uri)| pb::InputChannel { name, uri })
                            .collect(),
                        output_uri: a.output_uri,
                        resources: Some(pb::Resources {
                            cpu: a.cpu,
                            memory: a.memory,
                            gpus: a.gpus,
                            nodes: a.nodes,
                            ..Default::default()
                        }),
                        max_runtime_seconds: a.max_runtime,
                        framework: a.framework,
                        code_uri,
                    }),
                })
                .await?
                .into_inner();
            match out {
                Output::Json => render::print_json(&render::job_json(&job)),
                Output::Table => println!("{}", job.id),
            }
        }
        Command::Get { id } => {
            let job = training.get(pb::GetJobRequest { id }).await?.into_inner();
            render::job_detail(out, &job);
        }
        Command::List {
            target,
            state,
            limit,
        } => {
            let resp = training
                .list(pb::ListJobsRequest {
                    target: target.unwrap_or_default(),
                    state: state.map(state_to_pb).unwrap_or_default() as i32,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            render::jobs(out, &resp.jobs);
        }
        Command::Logs { id, follow } => {
            let mut s = training
                .logs(pb::JobLogsRequest {
                    id,
                    follow,
                    cursor: String::new(),
                })
                .await?
                .into_inner();
            while let Some(line) = s.next().await {
                let line = line?;
                match out {
                    Output::Json => render::print_json(&render::log_json(&line)),
                    Output::Table => println!("{}", line.text),
                }
            }
        }
        Command::Wait { id, timeout } => {
            let wait = async {
                let mut s = training
                    .watch(pb::WatchJobRequest {
                        id,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let mut last = None;
                while let Some(ev) = s.next().await {
                    last = Some(ev?);
                }
                Ok::<_, ClientError>(last)
            };
            let last = match timeout {
                Some(t) => match tokio::time::timeout(Duration::from_secs(t), wait).await {
                    Ok(r) => r?,
                    Err(_) => {
                        eprintln!("error: timed out after {t}s");
                        return Ok(ExitCode::from(3));
                    }
                },
                None => wait.await?,
            };
            let Some(ev) = last else {
                return Err(ClientError::Usage(
                    "the watch stream ended without an event".into(),
                ));
            };
            let job = ev.job.unwrap_or_default();
            render::job_detail(out, &job);
            return Ok(if job.state == pb::JobState::Succeeded as i32 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Cancel { id } => {
            let job = training
                .cancel(pb::CancelJobRequest { id })
                .await?
                .into_inner();
            render::job_detail(out, &job);
        }
        Command::Deploy(a) => {
            let ep = serving
                .deploy(pb::DeployRequest {
                    target: a.target,
                    idempotency_key: a.idempotency_key,
                    spec: Some(pb::EndpointSpec {
                        name: a.name,
                        model_uri: a.model_uri,
                        model_format: a.model_format,
                        runtime: a.runtime,
                        min_replicas: a.min_replicas,
                        max_replicas: a.max_replicas,
                        canary_percent: a.canary_percent,
                        resources: Some(pb::Resources {
                            gpus: a.gpus,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            return finish_endpoint(&mut serving, out, ep, a.wait).await;
        }
        Command::Update(a) => {
            let ep = serving
                .update(pb::UpdateEndpointRequest {
                    id: a.endpoint,
                    spec: Some(pb::EndpointSpec {
                        model_uri: a.model_uri,
                        model_format: a.model_format,
                        canary_percent: a.canary_percent,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            return finish_endpoint(&mut serving, out, ep, a.wait).await;
        }
        Command::Undeploy { endpoint } => {
            let ep = serving
                .delete(pb::DeleteEndpointRequest { id: endpoint })
                .await?
                .into_inner();
            render::endpoint_detail(out, &ep);
        }
        Command::Endpoints { all } => {
            let resp = serving
                .list(pb::ListEndpointsRequest {
                    include_deleted: all,
                    ..Default::default()
                })
                .await?
                .into_inner();
            render::endpoints(out, &resp.endpoints);
        }
        Command::Endpoint { endpoint } => {
            let ep = serving
                .get(pb::GetEndpointRequest { id: endpoint })
                .await?
                .into_inner();
            render::endpoint_detail(out, &ep);
        }
        Command::Predict(a) => {
            let req = predict_request(&a)?;
            let resp = serving.predict(req).await?.into_inner();
            render::prediction(out, &resp);
        }
        Command::Targets => {
            let resp = TargetServiceClient::new(ch)
                .list(pb::ListTargetsRequest {})
                .await?
                .into_inner();
            render::targets(out, &resp.targets);
        }
        Command::Artifacts { command } => return artifacts(ch, out, command).await,
        Command::Serve { .. } | Command::Supervise { .. } => unreachable!("handled by cli::run"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Packs (a directory) and uploads `path` off the async thread; refused before anything is sent
/// if packing finds what the store would refuse.
async fn upload_path(
    ch: Channel,
    path: &std::path::Path,
    name: Option<String>,
) -> Result<pb::Artifact, ClientError> {
    let p = path.to_path_buf();
    let packed = tokio::task::spawn_blocking(move || pack::prepare(&p, name))
        .await
        .map_err(|e| ClientError::Usage(format!("packing {}: {e}", path.display())))??;
    if packed.kind == pb::ArtifactKind::Directory {
        eprintln!(
            "packed {} ({} entries, {} bytes)",
            path.display(),
            packed.entries,
            packed.size
        );
    }
    Ok(pack::upload(ch, packed).await?)
}

async fn artifacts(
    ch: Channel,
    out: Output,
    cmd: ArtifactsCommand,
) -> Result<ExitCode, ClientError> {
    let mut client = ArtifactServiceClient::new(ch.clone());
    match cmd {
        ArtifactsCommand::Put { path, name } => {
            let a = upload_path(ch, &path, name).await?;
            render::artifact_uri(out, &a);
        }
        ArtifactsCommand::Get {
            uri,
            out: to,
            archive,
        } => {
            let a = client
                .stat(pb::StatArtifactRequest { uri: uri.clone() })
                .await?
                .into_inner();
            let dest = match to {
                Some(p) => p,
                None => default_name(&a),
            };
            let mut s = client
                .download(pb::DownloadArtifactRequest { uri })
                .await?
                .into_inner();
            let to_stdout = dest.as_os_str() == "-";
            let dir = a.kind == pb::ArtifactKind::Directory as i32 && !archive;
            if to_stdout && dir {
                return Err(ClientError::Usage(
                    "a directory artifact is unpacked into a directory: give --out DIR, or --archive".into(),
                ));
            }
            // Into a temporary file first: checked against its digest before it is used.
            let mut tmp = tempfile::NamedTempFile::new_in(if to_stdout || dir {
                std::env::temp_dir()
            } else {
                dest.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_else(|| ".".into())
            })
            .map_err(|e| ClientError::Usage(format!("creating a temporary file: {e}")))?;
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            while let Some(chunk) = s.next().await {
                let chunk = chunk?;
                sha2::Digest::update(&mut hasher, &chunk.data);
                std::io::Write::write_all(&mut tmp, &chunk.data)
                    .map_err(|e| ClientError::Usage(format!("writing: {e}")))?;
            }
            let got = hex::encode(sha2::Digest::finalize(hasher));
            if got != a.sha256 {
                return Err(ClientError::Usage(format!(
                    "the download's sha256 is {got}, not {}: it changed on the way",
                    a.sha256
                )));
            }
            if to_stdout {
                let mut f = tmp
                    .reopen()
                    .map_err(|e| ClientError::Usage(e.to_string()))?;
                std::io::copy(&mut f, &mut std::io::stdout())
                    .map_err(|e| ClientError::Usage(format!("writing to stdout: {e}")))?;
            } else if dir {
                let f = tmp
                    .reopen()
                    .map_err(|e| ClientError::Usage(e.to_string()))?;
                let dest2 = dest.clone();
                tokio::task::spawn_blocking(move || unpack(f, &dest2))
                    .await
                    .map_err(|e| ClientError::Usage(e.to_string()))??;
                eprintln!("unpacked into {}", dest.display());
            } else {
                tmp.persist(&dest).map_err(|e| {
                    ClientError::Usage(format!("writing {}: {}", dest.display(), e.error))
                })?;
                eprintln!("wrote {}", dest.display());
            }
        }
        ArtifactsCommand::Ls { limit } => {
            let resp = client
                .list(pb::ListArtifactsRequest {
                    page_size: limit,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            render::artifacts(out, &resp.artifacts);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The artifact's name as one path component (whatever the gateway says), else its digest.
fn default_name(a: &pb::Artifact) -> std::path::PathBuf {
    std::path::Path::new(&a.name)
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| a.sha256.chars().take(16).collect::<String>().into())
}

/// Unpacks a directory artifact into `dest`, which must not exist or be empty.
fn unpack(file: std::fs::File, dest: &std::path::Path) -> Result<(), ClientError> {
    let fail = |e: std::io::Error| ClientError::Usage(format!("{}: {e}", dest.display()));
    if dest.exists() && std::fs::read_dir(dest).map_err(fail)?.next().is_some() {
        return Err(ClientError::Usage(format!(
            "{}: not empty; unpack into a new directory",
            dest.display()
        )));
    }
    std::fs::create_dir_all(dest).map_err(fail)?;
    let mut ar = tar::Archive::new(crate::artifacts::archive_reader(file).map_err(fail)?);
    ar.unpack(dest).map_err(fail)
}

/// Prints the endpoint, after waiting for it to settle when asked to.
async fn finish_endpoint(
    serving: &mut ServingServiceClient<Channel>,
    out: Output,
    mut ep: pb::Endpoint,
    wait: Option<u64>,
) -> Result<ExitCode, ClientError> {
    if let Some(secs) = wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let settled = |s: i32| {
            s == pb::EndpointState::Ready as i32
                || s == pb::EndpointState::Failed as i32
                || s == pb::EndpointState::Deleted as i32
        };
        while !settled(ep.state) {
            if tokio::time::Instant::now() >= deadline {
                render::endpoint_detail(out, &ep);
                eprintln!("error: endpoint not ready after {secs}s");
                return Ok(ExitCode::from(3));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            ep = serving
                .get(pb::GetEndpointRequest { id: ep.id.clone() })
                .await?
                .into_inner();
        }
    }
    render::endpoint_detail(out, &ep);
    Ok(if ep.state == pb::EndpointState::Failed as i32 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn flatten(
    v: &Value,
    shape: &mut Vec<i64>,
    depth: usize,
    out: &mut Vec<f64>,
) -> Result<(), ClientError> {
    match v {
        Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len() as i64);
            } else if shape[depth] != items.len() as i64 {
                return Err(ClientError::Usage(
                    "ragged array: rows differ in length".into(),
                ));
            }
            items
                .iter()
                .try_for_each(|i| flatten(i, shape, depth + 1, out))
        }
        Value::Number(n) => {
            out.push(n.as_f64().unwrap_or(f64::NAN));
            Ok(())
        }
        Value::Bool(b) => {
            out.push(if *b { 1.0 } else { 0.0 });
            Ok(())
        }
        other => Err(ClientError::Usage(format!("not a number: {other}"))),
    }
}

fn tensor_from_json(
    name: &str,
    datatype: &str,
    data: &Value,
    shape: Option<Vec<i64>>,
) -> Result<pb::InferTensor, ClientError> {
    let mut values = Vec::new();
    let mut found_shape = Vec::new();
    flatten(data, &mut found_shape, 0, &mut values)?;
    let shape = shape.unwrap_or(found_shape);
    let mut t = pb::InferTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    };
    match crate::dataplane::kind_of(datatype) {
        Some(crate::dataplane::Kind::Float) => t.fp64_contents = values,
        Some(crate::dataplane::Kind::Int) => {
            t.int64_contents = values.iter().map(|v| *v as i64).collect()
        }
        Some(crate::dataplane::Kind::UInt) => {
            t.uint64_contents = values.iter().map(|v| *v as u64).collect()
        }
        Some(crate::dataplane::Kind::Bool) => {
            t.bool_contents = values.iter().map(|v| *v != 0.0).collect()
        }
        _ => {
            return Err(ClientError::Usage(format!(
                "datatype {datatype} is not supported from the command line"
            )));
        }
    }
    Ok(t)
}

fn predict_request(a: &PredictArgs) -> Result<pb::PredictRequest, ClientError> {
    let v: Value = serde_json::from_str(&a.data)
        .map_err(|e| ClientError::Usage(format!("--data is not JSON: {e}")))?;
    let inputs = match v.get("inputs").and_then(Value::as_array) {
        Some(inputs) => inputs
            .iter()
            .map(|i| {
                let shape = i["shape"]
                    .as_array()
                    .map(|s| s.iter().filter_map(Value::as_i64).collect());
                tensor_from_json(
                    i["name"].as_str().unwrap_or("input-0"),
                    i["datatype"].as_str().unwrap_or(&a.datatype),
                    &i["data"],
                    shape,
                )
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![tensor_from_json("input-0", &a.datatype, &v, None)?],
    };
    Ok(pb::PredictRequest {
        endpoint: a.endpoint.clone(),
        inputs,
        ..Default::default()
    })
}
