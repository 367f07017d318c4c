//! proto <-> domain, and nothing else.

use prost_types::Timestamp;

use super::pb;
use crate::artifacts::{Artifact, ArtifactKind, UploadHeader};
use crate::dataplane::{InferRequest, InferResponse, Kind, Tensor, TensorData, kind_of};
use crate::domain::{
    self, Endpoint, EndpointSpec, EndpointState, Feature, InputChannel, Job, JobState, Millis,
    Resources, TrainingSpec,
};
use crate::error::GatewayError;
use crate::runtime::Target;

fn opt(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

pub fn ts(ms: Millis) -> Timestamp {
    Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn resources_from(r: Option<pb::Resources>) -> Resources {
    let r = r.unwrap_or_default();
    Resources {
        cpu: opt(r.cpu),
        memory: opt(r.memory),
        gpus: r.gpus,
        gpu_type: opt(r.gpu_type),
        instance_type: opt(r.instance_type),
        nodes: r.nodes,
    }
}

fn resources_to(r: &Resources) -> pb::Resources {
    pb::Resources {
        cpu: r.cpu.clone().unwrap_or_default(),
        memory: r.memory.clone().unwrap_or_default(),
        gpus: r.gpus,
        gpu_type: r.gpu_type.clone().unwrap_or_default(),
        instance_type: r.instance_type.clone().unwrap_or_default(),
        nodes: r.nodes,
    }
}

pub fn training_spec(s: pb::TrainingJobSpec) -> TrainingSpec {
    TrainingSpec {
        name: s.name,
        image: opt(s.image),
        command: s.command,
        args: s.args,
        env: s.env.into_iter().collect(),
        hyperparameters: s.hyperparameters.into_iter().collect(),
        inputs: s
            .inputs
            .into_iter()
            .map(|i| InputChannel {
                name: i.name,
                uri: i.uri,
            })
            .collect(),
        output_uri: opt(s.output_uri),
        resources: resources_from(s.resources),
        max_runtime_seconds: (s.max_runtime_seconds > 0).then_some(s.max_runtime_seconds),
        framework: opt(s.framework),
        code_uri: opt(s.code_uri),
    }
}

fn training_spec_to(s: &TrainingSpec) -> pb::TrainingJobSpec {
    pb::TrainingJobSpec {
        name: s.name.clone(),
        image: s.image.clone().unwrap_or_default(),
        command: s.command.clone(),
        args: s.args.clone(),
        env: s.env.clone().into_iter().collect(),
        hyperparameters: s.hyperparameters.clone().into_iter().collect(),
        inputs: s
            .inputs
            .iter()
            .map(|i| pb::InputChannel {
                name: i.name.clone(),
                uri: i.uri.clone(),
            })
            .collect(),
        output_uri: s.output_uri.clone().unwrap_or_default(),
        resources: Some(resources_to(&s.resources)),
        max_runtime_seconds: s.max_runtime_seconds.unwrap_or(0),
        framework: s.framework.clone().unwrap_or_default(),
        code_uri: s.code_uri.clone().unwrap_or_default(),
    }
}

pub fn job_state_to(s: JobState) -> pb::JobState {
    match s {
        JobState::Pending => pb::JobState::Pending,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn job_state_from(v: i32, field: &str) -> Result<Option<JobState>, GatewayError> {
    let s = pb::JobState::try_from(v).map_err(|_| GatewayError::Invalid {
        field: field.into(),
        reason: format!("{v} is not a job state"),
    })?;
    Ok(match s {
        pb::JobState::Unspecified => None,
        pb::JobState::Pending => Some(JobState::Pending),
        pb::JobState::Running => Some(JobState::Running),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    })
}

pub fn job(j: &Job) -> pb::Job {
    pb::Job {
        id: j.id.clone(),
        target: j.target.clone(),
        spec: Some(training_spec_to(&j.spec)),
        state: job_state_to(j.state) as i32,
        message: j.message.clone(),
        backend_state: j.backend_state.clone(),
        backend_ref: j
            .backend_ref
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        output_uri: j.output_uri.clone().unwrap_or_default(),
        created_at: Some(ts(j.created_at)),
        updated_at: Some(ts(j.updated_at)),
        finished_at: j.finished_at.map(ts),
        cancel_requested: j.cancel_requested,
        tenant: j.tenant.clone(),
    }
}

pub fn job_event(j: &Job) -> pb::JobEvent {
    pb::JobEvent {
        sequence: j.sequence,
        state: job_state_to(j.state) as i32,
        message: j.message.clone(),
        time: Some(ts(j.updated_at)),
        job: Some(job(j)),
    }
}

pub fn endpoint_spec(s: pb::EndpointSpec) -> Result<EndpointSpec, GatewayError> {
    let canary_percent = match s.canary_percent {
        None => None,
        Some(p) if p <= 100 => Some(p as u8),
        Some(p) => {
            return Err(GatewayError::Invalid {
                field: "spec.canary_percent".into(),
                reason: format!("{p} is not between 0 and 100"),
            });
        }
    };
    Ok(EndpointSpec {
        name: s.name,
        model_uri: s.model_uri,
        model_format: s.model_format,
        runtime: opt(s.runtime),
        image: opt(s.image),
        resources: resources_from(s.resources),
        min_replicas: s.min_replicas,
        max_replicas: s.max_replicas,
        canary_percent,
    })
}

fn endpoint_spec_to(s: &EndpointSpec) -> pb::EndpointSpec {
    pb::EndpointSpec {
        name: s.name.clone(),
        model_uri: s.model_uri.clone(),
        model_format: s.model_format.clone(),
        runtime: s.runtime.clone().unwrap_or_default(),
        image: s.image.clone().unwrap_or_default(),
        resources: Some(resources_to(&s.resources)),
        min_replicas: s.min_replicas,
        max_replicas: s.max_replicas,
        canary_percent: s.canary_percent.map(u32::from),
    }
}

pub fn endpoint_state_to(s: EndpointState) -> pb::EndpointState {
    match s {
        EndpointState::Creating => pb::EndpointState::Creating,
        EndpointState::Ready => pb::EndpointState::Ready,
        EndpointState::Updating => pb::EndpointState::Updating,
        EndpointState::Degraded => pb::EndpointState::Degraded,
        EndpointState::Failed => pb::EndpointState::Failed,
        EndpointState::Deleted => pb::EndpointState::Deleted,
    }
}

pub fn endpoint_state_from(v: i32) -> Result<Option<EndpointState>, GatewayError> {
    let s = pb::EndpointState::try_from(v).map_err(|_| GatewayError::Invalid {
        field: "state".into(),
        reason: format!("{v} is not an endpoint state"),
    })?;
    Ok(match s {
        pb::EndpointState::Unspecified => None,
        pb::EndpointState::Creating => Some(EndpointState::Creating),
        pb::EndpointState::Ready => Some(EndpointState::Ready),
        pb::EndpointState::Updating => Some(EndpointState::Updating),
        pb::EndpointState::Degraded => Some(EndpointState::Degraded),
        pb::EndpointState::Failed => Some(EndpointState::Failed),
        pb::EndpointState::Deleted => Some(EndpointState::Deleted),
    })
}

pub fn endpoint(e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        id: e.id.clone(),
        target: e.target.clone(),
        spec: Some(endpoint_spec_to(&e.spec)),
        state: endpoint_state_to(e.state) as i32,
        message: e.message.clone(),
        backend_state: e.backend_state.clone(),
        backend_ref: e
            .backend_ref
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        url: e.url.clone().unwrap_or_default(),
        created_at: Some(ts(e.created_at)),
        updated_at: Some(ts(e.updated_at)),
        tenant: e.tenant.clone(),
    }
}

fn tensor_from(i: usize, t: pb::InferTensor) -> Result<Tensor, GatewayError> {
    let field = |f: &str| format!("inputs[{i}].{f}");
    let kind = kind_of(&t.datatype).ok_or_else(|| GatewayError::Invalid {
        field: field("datatype"),
        reason: format!(
            "{:?} is not one of BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64, BYTES",
            // Said back, but bounded: the error must stay small whatever was sent.
            t.datatype.chars().take(32).collect::<String>()
        ),
    })?;
    let filled = [
        !t.bool_contents.is_empty(),
        !t.int64_contents.is_empty(),
        !t.uint64_contents.is_empty(),
        !t.fp64_contents.is_empty(),
        !t.bytes_contents.is_empty(),
    ]
    .iter()
    .filter(|f| **f)
    .count();
    if filled > 1 {
        return Err(GatewayError::Invalid {
            field: field("contents"),
            reason: "more than one contents field is set".into(),
        });
    }
    let data = match kind {
        Kind::Bool => TensorData::Bool(t.bool_contents),
        Kind::Int => TensorData::Int(t.int64_contents),
        Kind::UInt => TensorData::UInt(t.uint64_contents),
        Kind::Float => TensorData::Float(t.fp64_contents),
        Kind::Bytes => TensorData::Bytes(t.bytes_contents),
    };
    if filled == 1 && data_len(&data) == 0 {
        return Err(GatewayError::Invalid {
            field: field("contents"),
            reason: format!(
                "contents are in the wrong field for datatype {}",
                t.datatype
            ),
        });
    }
    Ok(Tensor {
        name: t.name,
        datatype: t.datatype,
        shape: t.shape,
        parameters: t.parameters.into_iter().collect(),
        data,
    })
}

fn data_len(d: &TensorData) -> usize {
    match d {
        TensorData::Bool(v) => v.len(),
        TensorData::Int(v) => v.len(),
        TensorData::UInt(v) => v.len(),
        TensorData::Float(v) => v.len(),
        TensorData::Bytes(v) => v.len(),
    }
}

pub fn infer_request(r: pb::PredictRequest) -> Result<InferRequest, GatewayError> {
    Ok(InferRequest {
        id: r.request_id,
        inputs: r
            .inputs
            .into_iter()
            .enumerate()
            .map(|(i, t)| tensor_from(i, t))
            .collect::<Result<_, _>>()?,
        outputs: r.outputs,
        parameters: r.parameters.into_iter().collect(),
    })
}

fn tensor_to(t: Tensor) -> pb::InferTensor {
    let mut out = pb::InferTensor {
        name: t.name,
        datatype: t.datatype,
        shape: t.shape,
        parameters: t.parameters.into_iter().collect(),
        ..Default::default()
    };
    match t.data {
        TensorData::Bool(v) => out.bool_contents = v,
        TensorData::Int(v) => out.int64_contents = v,
        TensorData::UInt(v) => out.uint64_contents = v,
        TensorData::Float(v) => out.fp64_contents = v,
        TensorData::Bytes(v) => out.bytes_contents = v,
    }
    out
}

pub fn predict_response(r: InferResponse) -> pb::PredictResponse {
    pb::PredictResponse {
        model_name: r.model_name,
        model_version: r.model_version,
        request_id: r.id,
        outputs: r.outputs.into_iter().map(tensor_to).collect(),
    }
}

fn feature_to(f: Feature) -> pb::Feature {
    match f {
        Feature::Training => pb::Feature::Training,
        Feature::TrainingLogs => pb::Feature::TrainingLogs,
        Feature::TrainingCancel => pb::Feature::TrainingCancel,
        Feature::Serving => pb::Feature::Serving,
        Feature::ServingUpdate => pb::Feature::ServingUpdate,
        Feature::Canary => pb::Feature::Canary,
        Feature::Tuning => pb::Feature::Tuning,
        Feature::Batch => pb::Feature::Batch,
    }
}

/// A target as clients see it; `health` is the outcome of instantiating its plugin just now.
pub fn target(t: &Target, health: Result<(), crate::runtime::PluginError>) -> pb::Target {
    let (health, health_message) = match health {
        Ok(()) => (
            pb::TargetHealth::Healthy,
            format!("plugin sha256:{}", &t.plugin.digest[..16]),
        ),
        Err(e) => (pb::TargetHealth::Unhealthy, e.to_string()),
    };
    pb::Target {
        name: t.name.clone(),
        is_default: t.is_default,
        plugin: t.plugin.name.clone(),
        plugin_version: t.plugin.info.version.clone(),
        description: t.plugin.info.description.clone(),
        features: t
            .plugin
            .info
            .features
            .iter()
            .map(|f| feature_to(*f) as i32)
            .collect(),
        grants: t.grants.clone(),
        health: health as i32,
        health_message,
    }
}

pub fn log_line(item: crate::gateway::LogItem) -> pb::LogLine {
    let domain::LogLine {
        timestamp_ms,
        source,
        text,
    } = item.line;
    pb::LogLine {
        time: Some(ts(timestamp_ms)),
        source,
        text,
        cursor: item.cursor,
    }
}

pub fn upload_header(h: pb::UploadHeader) -> Result<UploadHeader, GatewayError> {
    let kind = match pb::ArtifactKind::try_from(h.kind) {
        Ok(pb::ArtifactKind::Unspecified) => None,
        Ok(pb::ArtifactKind::File) => Some(ArtifactKind::File),
        Ok(pb::ArtifactKind::Directory) => Some(ArtifactKind::Directory),
        Err(_) => {
            return Err(GatewayError::Invalid {
                field: "header.kind".into(),
                reason: format!("{} is not an artifact kind", h.kind),
            });
        }
    };
    Ok(UploadHeader {
        name: h.name,
        kind,
        sha256: opt(h.sha256),
        size: (h.size > 0).then_some(h.size),
    })
}

fn artifact_kind_to(k: ArtifactKind) -> pb::ArtifactKind {
    match k {
        ArtifactKind::File => pb::ArtifactKind::File,
        ArtifactKind::Directory => pb::ArtifactKind::Directory,
    }
}

pub fn artifact(a: &Artifact) -> pb::Artifact {
    pb::Artifact {
        uri: a.uri.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
        kind: artifact_kind_to(a.kind) as i32,
        name: a.name.clone(),
        created_at: Some(ts(a.created_at)),
    }
}
