//! The one place WIT types and domain types meet. What comes back from a plugin is checked
//! against the limits (`Bounds`) on its way in, before anything stores or answers it.

use super::PluginError;
use super::bounds::Bounds;
use crate::domain;
use crate::runtime::BackendFailure;

pub use crate::contract::exports::mlgw::backend::plugin;
pub use crate::contract::types as wit;
pub use crate::contract::{serving, training};

pub fn resources_to_wit(r: &domain::Resources) -> wit::Resources {
    wit::Resources {
        cpu: r.cpu.clone(),
        memory: r.memory.clone(),
        gpus: r.gpus,
        gpu_type: r.gpu_type.clone(),
        instance_type: r.instance_type.clone(),
        nodes: r.nodes.max(1),
    }
}

fn kvs(m: &std::collections::BTreeMap<String, String>) -> Vec<wit::KeyValue> {
    m.iter()
        .map(|(k, v)| wit::KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

pub fn training_spec_to_wit(s: &domain::TrainingSpec) -> wit::TrainingSpec {
    wit::TrainingSpec {
        name: s.name.clone(),
        image: s.image.clone(),
        command: s.command.clone(),
        args: s.args.clone(),
        env: kvs(&s.env),
        hyperparameters: kvs(&s.hyperparameters),
        inputs: s
            .inputs
            .iter()
            .map(|i| wit::InputChannel {
                name: i.name.clone(),
                uri: i.uri.clone(),
            })
            .collect(),
        output_uri: s.output_uri.clone(),
        resources: resources_to_wit(&s.resources),
        max_runtime_seconds: s.max_runtime_seconds,
        framework: s.framework.clone(),
        code_uri: s.code_uri.clone(),
    }
}

pub fn endpoint_spec_to_wit(s: &domain::EndpointSpec) -> wit::EndpointSpec {
    wit::EndpointSpec {
        name: s.name.clone(),
        model_uri: s.model_uri.clone(),
        model_format: s.model_format.clone(),
        runtime: s.runtime.clone(),
        image: s.image.clone(),
        resources: resources_to_wit(&s.resources),
        min_replicas: s.min_replicas,
        max_replicas: s.max_replicas,
        canary_percent: s.canary_percent,
    }
}

pub fn ref_to_wit(r: &domain::BackendRef) -> wit::BackendRef {
    wit::BackendRef {
        name: r.name.clone(),
        data: r.data.clone(),
    }
}

pub fn ref_from_wit(r: wit::BackendRef, b: Bounds) -> Result<domain::BackendRef, PluginError> {
    b.text("backend-ref name", &r.name)?;
    b.ref_data("backend-ref data", &r.data)?;
    Ok(domain::BackendRef {
        name: r.name,
        data: r.data,
    })
}

pub fn job_status_from_wit(
    s: wit::JobStatus,
    b: Bounds,
) -> Result<domain::JobObservation, PluginError> {
    let (state, reason) = match s.state {
        wit::JobState::Pending => (domain::JobState::Pending, None),
        wit::JobState::Running => (domain::JobState::Running, None),
        wit::JobState::Succeeded => (domain::JobState::Succeeded, None),
        wit::JobState::Failed(r) => (domain::JobState::Failed, Some(r)),
        wit::JobState::Cancelled => (domain::JobState::Cancelled, None),
    };
    b.opt_text("failure reason", &reason)?;
    b.text("raw state", &s.raw_state)?;
    b.opt_text("status message", &s.message)?;
    b.opt_text("output URI", &s.output_uri)?;
    Ok(domain::JobObservation {
        state,
        message: reason.or(s.message).unwrap_or_default(),
        backend_state: s.raw_state,
        output_uri: s.output_uri,
        updated_ref: s.updated_ref.map(|r| ref_from_wit(r, b)).transpose()?,
    })
}

pub struct EndpointObservation {
    pub state: domain::EndpointState,
    pub message: String,
    pub backend_state: String,
    pub updated_ref: Option<domain::BackendRef>,
}

pub fn endpoint_status_from_wit(
    s: wit::EndpointStatus,
    b: Bounds,
) -> Result<EndpointObservation, PluginError> {
    let (state, reason) = match s.state {
        wit::EndpointState::Creating => (domain::EndpointState::Creating, None),
        wit::EndpointState::Ready => (domain::EndpointState::Ready, None),
        wit::EndpointState::Updating => (domain::EndpointState::Updating, None),
        wit::EndpointState::Failed(r) => (domain::EndpointState::Failed, Some(r)),
        wit::EndpointState::Deleted => (domain::EndpointState::Deleted, None),
    };
    b.opt_text("failure reason", &reason)?;
    b.text("raw state", &s.raw_state)?;
    b.opt_text("status message", &s.message)?;
    Ok(EndpointObservation {
        state,
        message: reason.or(s.message).unwrap_or_default(),
        backend_state: s.raw_state,
        updated_ref: s.updated_ref.map(|r| ref_from_wit(r, b)).transpose()?,
    })
}

/// A page of at most `asked` lines, as the contract says.
pub fn log_page_from_wit(
    p: wit::LogPage,
    asked: u32,
    b: Bounds,
) -> Result<domain::LogPage, PluginError> {
    b.text("log cursor", &p.next_cursor)?;
    let bytes: usize = p
        .lines
        .iter()
        .map(|l| l.source.len() + l.text.len() + 8)
        .sum();
    b.log_page(p.lines.len(), asked, bytes)?;
    Ok(domain::LogPage {
        lines: p
            .lines
            .into_iter()
            .map(|l| domain::LogLine {
                timestamp_ms: l.timestamp_ms,
                source: l.source,
                text: l.text,
            })
            .collect(),
        next_cursor: p.next_cursor,
        complete: p.complete,
    })
}

/// More headers than any real route needs.
const MAX_ROUTE_HEADERS: usize = 64;

pub fn route_from_wit(r: wit::Route, b: Bounds) -> Result<domain::Route, PluginError> {
    b.text("route URL", &r.url)?;
    b.text("route model name", &r.model_name)?;
    if r.headers.len() > MAX_ROUTE_HEADERS {
        return Err(PluginError::Contract {
            target: b.target.to_string(),
            message: format!(
                "the route has {} headers, more than {MAX_ROUTE_HEADERS}",
                r.headers.len()
            ),
        });
    }
    for kv in &r.headers {
        b.text("route header", &kv.key)?;
        b.text("route header value", &kv.value)?;
    }
    Ok(domain::Route {
        url: r.url,
        protocol: match r.protocol {
            wit::Protocol::OipV2 => domain::Protocol::OipV2,
            wit::Protocol::SagemakerRuntime => domain::Protocol::SagemakerRuntime,
        },
        model_name: r.model_name,
        headers: r.headers.into_iter().map(|kv| (kv.key, kv.value)).collect(),
    })
}

/// A backend's own error, its texts cut to fit: the call fails either way.
pub fn failure_from_wit(e: wit::BackendError, b: Bounds) -> BackendFailure {
    let t = |s: String| b.error_text(s);
    match e {
        wit::BackendError::InvalidSpec(f) => BackendFailure::InvalidSpec {
            field: t(f.field),
            reason: t(f.reason),
        },
        wit::BackendError::NotFound(m) => BackendFailure::NotFound(t(m)),
        wit::BackendError::Denied(d) => BackendFailure::Denied {
            capability: t(d.capability),
            reason: t(d.reason),
        },
        wit::BackendError::Unavailable(m) => BackendFailure::Unavailable(t(m)),
        wit::BackendError::Throttled(m) => BackendFailure::Throttled(t(m)),
        wit::BackendError::Conflict(m) => BackendFailure::Conflict(t(m)),
        wit::BackendError::Unsupported(m) => BackendFailure::Unsupported(t(m)),
        wit::BackendError::Internal(m) => BackendFailure::Internal(t(m)),
    }
}

pub fn info_from_wit(i: wit::BackendInfo, b: Bounds) -> Result<domain::PluginInfo, PluginError> {
    b.text("plugin name", &i.name)?;
    b.text("plugin version", &i.version)?;
    b.text("plugin description", &i.description)?;
    use domain::Feature as F;
    use wit::Features as W;
    let table = [
        (W::TRAINING, F::Training),
        (W::TRAINING_LOGS, F::TrainingLogs),
        (W::TRAINING_CANCEL, F::TrainingCancel),
        (W::SERVING, F::Serving),
        (W::SERVING_UPDATE, F::ServingUpdate),
        (W::CANARY, F::Canary),
        (W::TUNING, F::Tuning),
        (W::BATCH, F::Batch),
    ];
    use domain::Capability as C;
    use wit::Capabilities as N;
    let needs = [
        (N::PROCESS, C::Process),
        (N::KUBE, C::Kube),
        (N::SAGEMAKER, C::Sagemaker),
        (N::HTTP, C::Http),
    ];
    Ok(domain::PluginInfo {
        name: i.name,
        version: i.version,
        description: i.description,
        features: table
            .into_iter()
            .filter(|(w, _)| i.features.contains(*w))
            .map(|(_, f)| f)
            .collect(),
        needs: needs
            .into_iter()
            .filter(|(w, _)| i.needs.contains(*w))
            .map(|(_, c)| c)
            .collect(),
    })
}
