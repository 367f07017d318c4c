//! Jobs and endpoints as the gateway understands them: specs, states, records and their
//! validation. No I/O here; proto and WIT types are converted to and from these at the edges.

pub mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use validate::{
    FieldError, validate_endpoint_changes, validate_endpoint_spec, validate_training_spec,
};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub gpus: u32,
    pub gpu_type: Option<String>,
    pub instance_type: Option<String>,
    /// Always at least 1 once normalised.
    pub nodes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputChannel {
    pub name: String,
    pub uri: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingSpec {
    pub name: String,
    pub image: Option<String>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub hyperparameters: BTreeMap<String, String>,
    pub inputs: Vec<InputChannel>,
    pub output_uri: Option<String>,
    pub resources: Resources,
    pub max_runtime_seconds: Option<u64>,
    pub framework: Option<String>,
    /// An artifact of kind directory holding the job's code; the command runs in it, unpacked.
    /// Records written before it existed have none.
    #[serde(default)]
    pub code_uri: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 5] = {
        // Stops compiling when a state is added, until it is listed here too.
        match Self::Pending {
            Self::Pending | Self::Running | Self::Succeeded | Self::Failed | Self::Cancelled => {}
        }
        [
            Self::Pending,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
    };

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What a backend needs to find its work again; opaque to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRef {
    pub name: String,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub target: String,
    pub spec: TrainingSpec,
    pub state: JobState,
    pub message: String,
    pub backend_state: String,
    pub backend_ref: Option<BackendRef>,
    pub output_uri: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
    pub cancel_requested: bool,
    /// When the backend was last asked to stop it (cancels are asked again until they take).
    #[serde(default)]
    pub cancel_sent_at: Option<Millis>,
    /// Bumped on every state or message change; Watch events carry it.
    pub sequence: u64,
    /// This version's place in the gateway-wide change feed (set by the store on every change
    /// watchers hear of); Watch-all resumes after it.
    #[serde(default)]
    pub feed_sequence: u64,
}

/// The status a backend reported for a job, already in domain terms.
#[derive(Debug, Clone, PartialEq)]
pub struct JobObservation {
    pub state: JobState,
    pub message: String,
    pub backend_state: String,
    pub output_uri: Option<String>,
    pub updated_ref: Option<BackendRef>,
}

impl Job {
    /// Folds a backend observation into the record. Returns whether anything a watcher cares
    /// about changed. A failure after a cancel request is the cancel taking effect.
    pub fn observe(&mut self, obs: JobObservation, now: Millis) -> bool {
        let mut state = obs.state;
        if self.cancel_requested && state == JobState::Failed {
            state = JobState::Cancelled;
        }
        if let Some(r) = obs.updated_ref {
            self.backend_ref = Some(r);
        }
        if obs.output_uri.is_some() {
            self.output_uri = obs.output_uri;
        }
        let changed = state != self.state || obs.message != self.message;
        self.backend_state = obs.backend_state;
        if changed {
            self.transition(state, obs.message, now);
        }
        changed
    }

    pub fn transition(&mut self, state: JobState, message: String, now: Millis) {
        self.state = state;
        self.message = message;
        self.updated_at = now;
        self.sequence += 1;
        if state.is_terminal() && self.finished_at.is_none() {
            self.finished_at = Some(now);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub name: String,
    pub model_uri: String,
    pub model_format: String,
    pub runtime: Option<String>,
    pub image: Option<String>,
    pub resources: Resources,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub canary_percent: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndpointState {
    Creating,
    Ready,
    Updating,
    /// It was ready, and its model server has stopped answering ready for a while; it still
    /// takes predictions, and turns `Failed` if that lasts.
    Degraded,
    Failed,
    Deleted,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Updating => "updating",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub tenant: String,
    pub target: String,
    pub spec: EndpointSpec,
    pub state: EndpointState,
    pub message: String,
    pub backend_state: String,
    pub backend_ref: Option<BackendRef>,
    pub url: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub sequence: u64,
    /// Since when its readiness probe has failed without a pass, while it was serving.
    #[serde(default)]
    pub degraded_since: Option<Millis>,
    /// 1 for the first deploy, +1 for each update: plugins name a revision's backend objects
    /// by it, so a retried update lands on the same names.
    #[serde(default = "first_revision")]
    pub revision: u32,
}

fn first_revision() -> u32 {
    1
}

impl Endpoint {
    /// Whether predictions are sent to it: it serves, perhaps while rolling or shaky.
    pub fn serves(&self) -> bool {
        matches!(
            self.state,
            EndpointState::Ready | EndpointState::Updating | EndpointState::Degraded
        )
    }

    pub fn transition(&mut self, state: EndpointState, message: String, now: Millis) -> bool {
        if self.state == state && self.message == message {
            return false;
        }
        self.state = state;
        self.message = message;
        self.updated_at = now;
        self.sequence += 1;
        true
    }
}

/// Where the data plane sends predictions for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub url: String,
    pub protocol: Protocol,
    pub model_name: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OipV2,
    SagemakerRuntime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    Training,
    TrainingLogs,
    TrainingCancel,
    Serving,
    ServingUpdate,
    Canary,
    Tuning,
    Batch,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Training => "training",
            Self::TrainingLogs => "training-logs",
            Self::TrainingCancel => "training-cancel",
            Self::Serving => "serving",
            Self::ServingUpdate => "serving-update",
            Self::Canary => "canary",
            Self::Tuning => "tuning",
            Self::Batch => "batch",
        }
    }
}

/// A host capability, as plugins declare they need it and operators grant it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Process,
    Kube,
    Sagemaker,
    Http,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Kube => "kube",
            Self::Sagemaker => "sagemaker",
            Self::Http => "http",
        }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub features: Vec<Feature>,
    /// Capabilities it cannot work without.
    pub needs: Vec<Capability>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub timestamp_ms: Millis,
    pub source: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    pub next_cursor: String,
    pub complete: bool,
}

/// A short, DNS-label and SageMaker-safe name derived from the gateway id, so a retried
/// create after a crash lands on the same backend object.
pub fn backend_name(id: &str) -> String {
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("mlgw-{clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: "j-1".into(),
            tenant: "default".into(),
            target: "local".into(),
            spec: TrainingSpec::default(),
            state: JobState::Running,
            message: String::new(),
            backend_state: String::new(),
            backend_ref: None,
            output_uri: None,
            created_at: 1,
            updated_at: 1,
            finished_at: None,
            cancel_requested: false,
            cancel_sent_at: None,
            sequence: 1,
            feed_sequence: 0,
        }
    }

    fn obs(state: JobState, message: &str) -> JobObservation {
        JobObservation {
            state,
            message: message.into(),
            backend_state: "raw".into(),
            output_uri: None,
            updated_ref: None,
        }
    }

    #[test]
    fn failure_after_cancel_request_is_cancelled() {
        let mut j = job();
        j.cancel_requested = true;
        assert!(j.observe(obs(JobState::Failed, "terminated by signal 15"), 5));
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.finished_at, Some(5));
    }

    #[test]
    fn success_after_cancel_request_stays_success() {
        let mut j = job();
        j.cancel_requested = true;
        j.observe(obs(JobState::Succeeded, ""), 5);
        assert_eq!(j.state, JobState::Succeeded);
    }

    #[test]
    fn unchanged_observation_does_not_bump_sequence() {
        let mut j = job();
        assert!(!j.observe(obs(JobState::Running, ""), 9));
        assert_eq!(j.sequence, 1);
        assert_eq!(j.backend_state, "raw");
    }

    #[test]
    fn backend_names_are_dns_labels() {
        let n = backend_name("j-0193AB_cd");
        assert_eq!(n, "mlgw-j0193abcd");
        assert!(n.len() <= 63);
    }
}
