//! proto <-> domain, and nothing else.

use prost_types::Timestamp;

use super::{oip, pb};
use crate::artifacts::{Artifact, ArtifactKind, UploadHeader};
use crate::dataplane::{
    InferRequest, InferResponse, Kind, ModelMetadata, Tensor, TensorData, TensorMeta, kind_of,
};
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

/// By value: every caller has just read the record and answers with it, so its strings move
/// into the message instead of being copied (GetJob is a read, a decode and this).
fn training_spec_to(s: TrainingSpec) -> pb::TrainingJobSpec {
    pb::TrainingJobSpec {
        resources: Some(resources_to(&s.resources)),
        name: s.name,
        image: s.image.unwrap_or_default(),
        command: s.command,
        args: s.args,
        env: s.env.into_iter().collect(),
        hyperparameters: s.hyperparameters.into_iter().collect(),
        inputs: s
            .inputs
            .into_iter()
            .map(|i| pb::InputChannel {
                name: i.name,
                uri: i.uri,
            })
            .collect(),
        output_uri: s.output_uri.unwrap_or_default(),
        max_runtime_seconds: s.max_runtime_seconds.unwrap_or(0),
        framework: s.framework.unwrap_or_default(),
        code_uri: s.code_uri.unwrap_or_default(),
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

pub fn job(j: Job) -> pb::Job {
    pb::Job {
        id: j.id,
        target: j.target,
        spec: Some(training_spec_to(j.spec)),
        state: job_state_to(j.state) as i32,
        message: j.message,
        backend_state: j.backend_state,
        backend_ref: j.backend_ref.map(|r| r.name).unwrap_or_default(),
        output_uri: j.output_uri.unwrap_or_default(),
        created_at: Some(ts(j.created_at)),
        updated_at: Some(ts(j.updated_at)),
        finished_at: j.finished_at.map(ts),
        cancel_requested: j.cancel_requested,
        tenant: j.tenant,
    }
}

pub fn job_event(j: Job) -> pb::JobEvent {
    pb::JobEvent {
        sequence: j.sequence,
        state: job_state_to(j.state) as i32,
        message: j.message.clone(),
        time: Some(ts(j.updated_at)),
        feed_sequence: j.feed_sequence,
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

// The Open Inference Protocol's own gRPC messages. Its typed contents keep narrow types
// (int32, uint32, float) in their own fields, and raw contents carry every datatype as
// little-endian bytes: both meet the data plane's widened tensors here.

fn oip_parameter(p: oip::InferParameter) -> String {
    use oip::infer_parameter::ParameterChoice as P;
    match p.parameter_choice {
        Some(P::BoolParam(b)) => b.to_string(),
        Some(P::Int64Param(i)) => i.to_string(),
        Some(P::StringParam(s)) => s,
        None => String::new(),
    }
}

fn oip_parameters(
    m: std::collections::HashMap<String, oip::InferParameter>,
) -> std::collections::BTreeMap<String, String> {
    m.into_iter().map(|(k, v)| (k, oip_parameter(v))).collect()
}

/// Bytes one element of `datatype` takes in raw contents; None for BYTES (length-prefixed).
fn raw_width(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

pub fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Round to nearest, ties to even; beyond FP16's range is infinity.
pub fn f64_to_f16(v: f64) -> u16 {
    let x = v as f32;
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    if x.is_nan() {
        return sign | 0x7e00;
    }
    let a = x.abs();
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 2f32.powi(-14) {
        // Subnormal (or zero): a multiple of 2^-24.
        return sign | (a * 2f32.powi(24)).round_ties_even() as u16;
    }
    let exp = ((bits >> 23) & 0xff) + 15 - 127;
    let mant = bits & 0x7f_ffff;
    let mut h = (exp << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

fn bf16_to_f64(b: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(b) << 16))
}

fn f64_to_bf16(v: f64) -> u16 {
    let bits = (v as f32).to_bits();
    if (v as f32).is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

fn raw_tensor_data(field: &str, datatype: &str, raw: &[u8]) -> Result<TensorData, GatewayError> {
    let invalid = |reason: String| GatewayError::Invalid {
        field: field.to_string(),
        reason,
    };
    let Some(width) = raw_width(datatype) else {
        // BYTES: each element is a 4-byte little-endian length, then that many bytes.
        let mut out = Vec::new();
        let mut rest = raw;
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return Err(invalid(format!(
                    "BYTES element {} has a truncated 4-byte length prefix",
                    out.len()
                )));
            };
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(invalid(format!(
                    "BYTES element {} says {len} bytes but {} remain",
                    out.len(),
                    tail.len()
                )));
            }
            out.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        return Ok(TensorData::Bytes(out));
    };
    if !raw.len().is_multiple_of(width) {
        return Err(invalid(format!(
            "{} bytes is not a whole number of {datatype} elements ({width} bytes each)",
            raw.len()
        )));
    }
    let chunks = raw.chunks_exact(width);
    macro_rules! le {
        ($t:ty) => {
            chunks.map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of the type's width")))
        };
    }
    Ok(match datatype {
        "BOOL" => TensorData::Bool(raw.iter().map(|b| *b != 0).collect()),
        "INT8" => TensorData::Int(le!(i8).map(i64::from).collect()),
        "INT16" => TensorData::Int(le!(i16).map(i64::from).collect()),
        "INT32" => TensorData::Int(le!(i32).map(i64::from).collect()),
        "INT64" => TensorData::Int(le!(i64).collect()),
        "UINT8" => TensorData::UInt(raw.iter().map(|b| u64::from(*b)).collect()),
        "UINT16" => TensorData::UInt(le!(u16).map(u64::from).collect()),
        "UINT32" => TensorData::UInt(le!(u32).map(u64::from).collect()),
        "UINT64" => TensorData::UInt(le!(u64).collect()),
        "FP16" => TensorData::Float(le!(u16).map(f16_to_f64).collect()),
        "BF16" => TensorData::Float(le!(u16).map(bf16_to_f64).collect()),
        "FP32" => TensorData::Float(le!(f32).map(f64::from).collect()),
        "FP64" => TensorData::Float(le!(f64).collect()),
        _ => unreachable!("raw_width knows only these"),
    })
}

/// The typed contents a datatype uses, all others empty.
fn typed_tensor_data(
    field: &str,
    datatype: &str,
    c: oip::InferTensorContents,
) -> Result<TensorData, GatewayError> {
    let invalid = |reason: String| GatewayError::Invalid {
        field: field.to_string(),
        reason,
    };
    let set = [
        ("bool_contents", !c.bool_contents.is_empty()),
        ("int_contents", !c.int_contents.is_empty()),
        ("int64_contents", !c.int64_contents.is_empty()),
        ("uint_contents", !c.uint_contents.is_empty()),
        ("uint64_contents", !c.uint64_contents.is_empty()),
        ("fp32_contents", !c.fp32_contents.is_empty()),
        ("fp64_contents", !c.fp64_contents.is_empty()),
        ("bytes_contents", !c.bytes_contents.is_empty()),
    ];
    let wanted = match datatype {
        "BOOL" => "bool_contents",
        "INT8" | "INT16" | "INT32" => "int_contents",
        "INT64" => "int64_contents",
        "UINT8" | "UINT16" | "UINT32" => "uint_contents",
        "UINT64" => "uint64_contents",
        "FP32" => "fp32_contents",
        "FP64" => "fp64_contents",
        "BYTES" => "bytes_contents",
        // FP16 and BF16 have no typed field in the protocol.
        other => {
            return match set.iter().find(|(_, s)| *s) {
                None => Ok(TensorData::Float(Vec::new())),
                Some(_) => Err(invalid(format!(
                    "{other} has no typed contents field; send it in raw_input_contents"
                ))),
            };
        }
    };
    if let Some((name, _)) = set.iter().find(|(n, s)| *s && *n != wanted) {
        return Err(invalid(format!(
            "{name} is set but datatype {datatype} uses {wanted}"
        )));
    }
    Ok(match wanted {
        "bool_contents" => TensorData::Bool(c.bool_contents),
        "int_contents" => TensorData::Int(c.int_contents.into_iter().map(i64::from).collect()),
        "int64_contents" => TensorData::Int(c.int64_contents),
        "uint_contents" => TensorData::UInt(c.uint_contents.into_iter().map(u64::from).collect()),
        "uint64_contents" => TensorData::UInt(c.uint64_contents),
        "fp32_contents" => TensorData::Float(c.fp32_contents.into_iter().map(f64::from).collect()),
        "fp64_contents" => TensorData::Float(c.fp64_contents),
        _ => TensorData::Bytes(c.bytes_contents),
    })
}

/// An OIP ModelInferRequest as the data plane's request, and whether its inputs came raw
/// (so the answer goes back raw: clients such as tritonclient read only raw outputs).
pub fn oip_infer_request(r: oip::ModelInferRequest) -> Result<(InferRequest, bool), GatewayError> {
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(GatewayError::Invalid {
            field: "raw_input_contents".into(),
            reason: format!(
                "{} entries for {} inputs: raw contents take one entry per input, in order",
                r.raw_input_contents.len(),
                r.inputs.len()
            ),
        });
    }
    let mut raws = r.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, t) in r.inputs.into_iter().enumerate() {
        let kind = kind_of(&t.datatype).ok_or_else(|| GatewayError::Invalid {
            field: format!("inputs[{i}].datatype"),
            reason: format!(
                "{:?} is not one of BOOL, INT8..INT64, UINT8..UINT64, FP16, BF16, FP32, FP64, \
                 BYTES",
                t.datatype.chars().take(32).collect::<String>()
            ),
        })?;
        let data = match (raws.next(), t.contents) {
            (Some(_), Some(c)) if c != oip::InferTensorContents::default() => {
                return Err(GatewayError::Invalid {
                    field: format!("inputs[{i}].contents"),
                    reason: "set while the request carries raw_input_contents; use one or the \
                             other"
                        .into(),
                });
            }
            (Some(bytes), _) => {
                raw_tensor_data(&format!("raw_input_contents[{i}]"), &t.datatype, &bytes)?
            }
            (None, c) => typed_tensor_data(
                &format!("inputs[{i}].contents"),
                &t.datatype,
                c.unwrap_or_default(),
            )?,
        };
        debug_assert!(
            matches!(
                (&data, kind),
                (TensorData::Bool(_), Kind::Bool)
                    | (TensorData::Int(_), Kind::Int)
                    | (TensorData::UInt(_), Kind::UInt)
                    | (TensorData::Float(_), Kind::Float)
                    | (TensorData::Bytes(_), Kind::Bytes)
            ),
            "decoded as the datatype's kind"
        );
        inputs.push(Tensor {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
            parameters: oip_parameters(t.parameters),
            data,
        });
    }
    Ok((
        InferRequest {
            id: r.id,
            inputs,
            outputs: r.outputs.into_iter().map(|o| o.name).collect(),
            parameters: oip_parameters(r.parameters),
        },
        raw,
    ))
}

fn narrow<T: TryFrom<V>, V: Copy + std::fmt::Display>(
    name: &str,
    datatype: &str,
    v: V,
) -> Result<T, GatewayError> {
    T::try_from(v).map_err(|_| {
        GatewayError::DataPlane(crate::dataplane::DataPlaneError::BadResponse(format!(
            "output {name}: {v} does not fit {datatype}"
        )))
    })
}

fn raw_output(t: &Tensor) -> Result<Vec<u8>, GatewayError> {
    let (n, dt) = (t.name.as_str(), t.datatype.as_str());
    let mut out = Vec::new();
    match &t.data {
        TensorData::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
        TensorData::Int(v) => {
            for x in v {
                match dt {
                    "INT8" => out.extend(narrow::<i8, _>(n, dt, *x)?.to_le_bytes()),
                    "INT16" => out.extend(narrow::<i16, _>(n, dt, *x)?.to_le_bytes()),
                    "INT32" => out.extend(narrow::<i32, _>(n, dt, *x)?.to_le_bytes()),
                    _ => out.extend(x.to_le_bytes()),
                }
            }
        }
        TensorData::UInt(v) => {
            for x in v {
                match dt {
                    "UINT8" => out.extend(narrow::<u8, _>(n, dt, *x)?.to_le_bytes()),
                    "UINT16" => out.extend(narrow::<u16, _>(n, dt, *x)?.to_le_bytes()),
                    "UINT32" => out.extend(narrow::<u32, _>(n, dt, *x)?.to_le_bytes()),
                    _ => out.extend(x.to_le_bytes()),
                }
            }
        }
        TensorData::Float(v) => {
            for x in v {
                match dt {
                    "FP16" => out.extend(f64_to_f16(*x).to_le_bytes()),
                    "BF16" => out.extend(f64_to_bf16(*x).to_le_bytes()),
                    "FP32" => out.extend((*x as f32).to_le_bytes()),
                    _ => out.extend(x.to_le_bytes()),
                }
            }
        }
        TensorData::Bytes(v) => {
            for b in v {
                let len = narrow::<u32, _>(n, "a BYTES element (4 GiB at most)", b.len())?;
                out.extend(len.to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    Ok(out)
}

fn typed_output(t: Tensor) -> Result<oip::InferTensorContents, GatewayError> {
    let (n, dt) = (t.name.as_str(), t.datatype.as_str());
    let mut c = oip::InferTensorContents::default();
    match t.data {
        TensorData::Bool(v) => c.bool_contents = v,
        TensorData::Int(v) if dt == "INT64" => c.int64_contents = v,
        TensorData::Int(v) => {
            c.int_contents = v
                .into_iter()
                .map(|x| narrow(n, dt, x))
                .collect::<Result<_, _>>()?
        }
        TensorData::UInt(v) if dt == "UINT64" => c.uint64_contents = v,
        TensorData::UInt(v) => {
            c.uint_contents = v
                .into_iter()
                .map(|x| narrow(n, dt, x))
                .collect::<Result<_, _>>()?
        }
        TensorData::Float(v) if dt == "FP32" => {
            c.fp32_contents = v.into_iter().map(|x| x as f32).collect()
        }
        TensorData::Float(v) => c.fp64_contents = v,
        TensorData::Bytes(v) => c.bytes_contents = v,
    }
    Ok(c)
}

/// The data plane's answer as an OIP ModelInferResponse: raw contents when the request came
/// raw or an output has no typed field (FP16, BF16), typed contents otherwise.
pub fn oip_infer_response(
    r: InferResponse,
    raw: bool,
) -> Result<oip::ModelInferResponse, GatewayError> {
    let raw = raw
        || r.outputs
            .iter()
            .any(|t| matches!(t.datatype.as_str(), "FP16" | "BF16"));
    let mut resp = oip::ModelInferResponse {
        model_name: r.model_name,
        model_version: r.model_version,
        id: r.id,
        ..Default::default()
    };
    for t in r.outputs {
        let contents = if raw {
            resp.raw_output_contents.push(raw_output(&t)?);
            None
        } else {
            Some(typed_output(t.clone())?)
        };
        resp.outputs
            .push(oip::model_infer_response::InferOutputTensor {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
                parameters: t
                    .parameters
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            oip::InferParameter {
                                parameter_choice: Some(
                                    oip::infer_parameter::ParameterChoice::StringParam(v),
                                ),
                            },
                        )
                    })
                    .collect(),
                contents,
            });
    }
    Ok(resp)
}

fn oip_tensor_meta(t: TensorMeta) -> oip::model_metadata_response::TensorMetadata {
    oip::model_metadata_response::TensorMetadata {
        name: t.name,
        datatype: t.datatype,
        shape: t.shape,
    }
}

/// An endpoint's OIP metadata: its name, its revision as the version, its target as the
/// platform, and the tensors its model server describes (if it was asked).
pub fn oip_model_metadata(
    ep: &Endpoint,
    served: Option<ModelMetadata>,
) -> oip::ModelMetadataResponse {
    let served = served.unwrap_or_default();
    oip::ModelMetadataResponse {
        name: ep.spec.name.clone(),
        versions: vec![ep.revision.to_string()],
        platform: ep.target.clone(),
        inputs: served.inputs.into_iter().map(oip_tensor_meta).collect(),
        outputs: served.outputs.into_iter().map(oip_tensor_meta).collect(),
    }
}

#[cfg(test)]
mod oip_tests {
    use super::*;

    fn input(datatype: &str, shape: Vec<i64>) -> oip::model_infer_request::InferInputTensor {
        oip::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        }
    }

    fn raw(datatype: &str, shape: Vec<i64>, bytes: Vec<u8>) -> Result<Tensor, GatewayError> {
        let (r, was_raw) = oip_infer_request(oip::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input(datatype, shape)],
            raw_input_contents: vec![bytes],
            ..Default::default()
        })?;
        assert!(was_raw);
        Ok(r.inputs.into_iter().next().unwrap())
    }

    #[test]
    fn raw_contents_decode_little_endian_per_datatype() {
        let t = raw(
            "INT16",
            vec![2],
            [-2i16, 300].iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
        .unwrap();
        assert_eq!(t.data, TensorData::Int(vec![-2, 300]));
        let t = raw("UINT8", vec![3], vec![0, 7, 255]).unwrap();
        assert_eq!(t.data, TensorData::UInt(vec![0, 7, 255]));
        let t = raw("BOOL", vec![2], vec![1, 0]).unwrap();
        assert_eq!(t.data, TensorData::Bool(vec![true, false]));
        let t = raw("FP32", vec![1], 1.5f32.to_le_bytes().to_vec()).unwrap();
        assert_eq!(t.data, TensorData::Float(vec![1.5]));
        // 1.0 and -2.5 in IEEE half precision.
        let t = raw("FP16", vec![2], vec![0x00, 0x3c, 0x00, 0xc1]).unwrap();
        assert_eq!(t.data, TensorData::Float(vec![1.0, -2.5]));
        let mut b = 2u32.to_le_bytes().to_vec();
        b.extend(b"hi");
        b.extend(0u32.to_le_bytes());
        let t = raw("BYTES", vec![2], b).unwrap();
        assert_eq!(t.data, TensorData::Bytes(vec![b"hi".to_vec(), Vec::new()]));
    }

    #[test]
    fn malformed_raw_contents_name_their_entry() {
        let e = raw("INT32", vec![1], vec![1, 2, 3]).unwrap_err();
        assert!(
            matches!(&e, GatewayError::Invalid { field, .. } if field == "raw_input_contents[0]"),
            "{e}"
        );
        let e = raw("BYTES", vec![1], vec![9, 0, 0, 0, b'a']).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("raw_input_contents[0]: BYTES element 0 says 9"),
            "{e}"
        );
        let e = oip_infer_request(oip::ModelInferRequest {
            inputs: vec![input("FP32", vec![1]), input("FP32", vec![1])],
            raw_input_contents: vec![vec![0; 4]],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("raw_input_contents: 1 entries for 2 inputs"),
            "{e}"
        );
    }

    #[test]
    fn typed_contents_use_the_datatypes_own_field() {
        let mut t = input("INT32", vec![2]);
        t.contents = Some(oip::InferTensorContents {
            int_contents: vec![-1, 5],
            ..Default::default()
        });
        let (r, was_raw) = oip_infer_request(oip::ModelInferRequest {
            inputs: vec![t.clone()],
            ..Default::default()
        })
        .unwrap();
        assert!(!was_raw);
        assert_eq!(r.inputs[0].data, TensorData::Int(vec![-1, 5]));
        t.datatype = "INT64".into();
        let e = oip_infer_request(oip::ModelInferRequest {
            inputs: vec![t],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "inputs[0].contents: int_contents is set but datatype INT64 uses int64_contents"
        );
    }

    #[test]
    fn outputs_go_back_raw_or_typed_as_asked() {
        let resp = || InferResponse {
            model_name: "m".into(),
            outputs: vec![Tensor {
                name: "y".into(),
                datatype: "INT32".into(),
                shape: vec![2],
                parameters: Default::default(),
                data: TensorData::Int(vec![3, -4]),
            }],
            ..Default::default()
        };
        let typed = oip_infer_response(resp(), false).unwrap();
        assert_eq!(
            typed.outputs[0].contents.as_ref().unwrap().int_contents,
            [3, -4]
        );
        assert!(typed.raw_output_contents.is_empty());
        let raw = oip_infer_response(resp(), true).unwrap();
        assert!(raw.outputs[0].contents.is_none());
        assert_eq!(
            raw.raw_output_contents,
            [[3i32, -4]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>()]
        );
        let mut wide = resp();
        wide.outputs[0].data = TensorData::Int(vec![1 << 40]);
        wide.outputs[0].shape = vec![1];
        assert!(
            oip_infer_response(wide, false).is_err(),
            "does not fit INT32"
        );
    }

    #[test]
    fn half_precision_round_trips() {
        for (v, bits) in [(1.0, 0x3c00), (-2.5, 0xc100), (65504.0, 0x7bff), (0.0, 0)] {
            assert_eq!(f64_to_f16(v), bits, "{v}");
            assert_eq!(f16_to_f64(bits), v);
        }
        assert_eq!(f64_to_f16(1e6), 0x7c00, "beyond range is infinity");
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f64_to_f16(2f64.powi(-24)), 0x0001);
    }
}
