//! The target's settings (`[targets.<name>] settings = { … }` in the gateway's config). Every
//! key has a default; an unknown key or a value of the wrong shape is an error naming it, so a
//! typo never silently changes what runs on the cluster.

use std::collections::BTreeMap;

use mlgw_plugin_sdk::{BackendError, CallContext, internal};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a job becomes on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `kubeflow.org/v1` PyTorchJob (Kubeflow Training Operator): a Master and `nodes - 1`
    /// Workers.
    #[default]
    PyTorchJob,
    /// `trainer.kubeflow.org/v1alpha1` TrainJob (Kubeflow Trainer v2), on a training runtime.
    TrainJob,
    /// `batch/v1` Job: one pod, for clusters without a training operator.
    Job,
}

impl Kind {
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::PyTorchJob => "kubeflow.org/v1",
            Kind::TrainJob => "trainer.kubeflow.org/v1alpha1",
            Kind::Job => "batch/v1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::PyTorchJob => "PyTorchJob",
            Kind::TrainJob => "TrainJob",
            Kind::Job => "Job",
        }
    }

    pub fn from_name(kind: &str) -> Option<Self> {
        [Kind::PyTorchJob, Kind::TrainJob, Kind::Job]
            .into_iter()
            .find(|k| k.name() == kind)
    }

    /// The container that runs the job's command: the Training Operator requires `pytorch`,
    /// Trainer's runtimes call theirs `node`.
    pub fn main_container(self) -> &'static str {
        match self {
            Kind::PyTorchJob => "pytorch",
            Kind::TrainJob => "node",
            Kind::Job => "train",
        }
    }

    /// The label selecting the job's pods, as its controller sets it.
    pub fn pod_selector(self, name: &str) -> String {
        match self {
            Kind::PyTorchJob => format!("training.kubeflow.org/job-name={name}"),
            // Trainer names the JobSet after the TrainJob.
            Kind::TrainJob => format!("jobset.sigs.k8s.io/jobset-name={name}"),
            Kind::Job => format!("batch.kubernetes.io/job-name={name}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// A failed pod fails the job; the gateway reports it rather than retrying behind the
    /// user's back.
    #[default]
    Never,
    OnFailure,
    /// Training Operator only: exit codes 128-255 restart, 1-127 fail.
    ExitCode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CleanPodPolicy {
    /// Pods stay after the job ends, so their logs can still be read.
    #[default]
    None,
    Running,
    All,
}

/// A Kubernetes toleration, spelt as in a pod spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(
        default,
        alias = "toleration_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub toleration_seconds: Option<i64>,
}

/// Where pods asking for one GPU type may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuType {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// A Trainer v2 training runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeRef {
    pub name: String,
    #[serde(default = "default_runtime_kind")]
    pub kind: String,
    #[serde(default = "default_runtime_group", alias = "apiGroup")]
    pub api_group: String,
}

fn default_runtime_kind() -> String {
    "ClusterTrainingRuntime".into()
}

fn default_runtime_group() -> String {
    "trainer.kubeflow.org".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kind: Kind,
    /// Empty: the kube grant's first namespace.
    pub namespace: String,
    /// The image for a job that names none and whose framework has no entry in `images`.
    pub image: Option<String>,
    /// Images by `spec.framework` ("pytorch", "sklearn", …).
    pub images: BTreeMap<String, String>,
    /// The extended resource GPUs are counted in.
    pub gpu_resource: String,
    /// `spec.resources.gpu_type` → node selector and tolerations. The entry `default` applies to
    /// jobs that ask for GPUs without naming a type.
    pub gpu_types: BTreeMap<String, GpuType>,
    /// A Kueue LocalQueue: jobs carry `kueue.x-k8s.io/queue-name` and wait for admission.
    pub queue: Option<String>,
    /// Retries before the job fails. Unset: a PyTorchJob fails when a replica fails under
    /// `restart_policy = "Never"` (and keeps its pods, so their logs and reasons can be read;
    /// the Training Operator deletes the pods of a job past an explicit limit), and a batch
    /// Job gets 0 rather than Kubernetes' 6, so a failure is reported, not retried unseen.
    pub backoff_limit: Option<u32>,
    pub restart_policy: RestartPolicy,
    pub clean_pod_policy: CleanPodPolicy,
    pub ttl_seconds_after_finished: Option<u32>,
    /// The training runtime of `kind = "trainjob"` targets (required there).
    pub runtime_ref: Option<RuntimeRef>,
    /// Fetches the job's code (and writes hyperparameters.json) before the job starts: needs
    /// `sh`, `wget` and `tar` with gzip, and no credentials.
    pub init_image: String,
    /// TrainJob only: the init container of the runtime that runs the init script (a TrainJob
    /// can only set the environment of the runtime's containers, not add one).
    pub init_container: String,
    /// Lifetime of the presigned code URL (0: the gateway's `presign_max_seconds`). Pods that
    /// start (or restart) later than this cannot fetch the code any more.
    pub code_url_ttl_seconds: u32,
    pub service_account: Option<String>,
    pub pod_labels: BTreeMap<String, String>,
    pub pod_annotations: BTreeMap<String, String>,
    /// Merged into every pod template the target creates (not TrainJob's, whose pods the
    /// runtime defines): objects are merged, lists appended to, and the plugin's own values
    /// win. For what the spec cannot say: volumes, `priorityClassName`, a security context.
    pub pod_template: Option<Map<String, Value>>,
    /// Jobs without an output URI write to `<output_prefix>/<job id>/`.
    pub output_prefix: Option<String>,
    /// How often a job's pods are read, while it neither fails nor changes state, to say why it
    /// waits or crashes; every read is one list request to the API server.
    pub pod_check_seconds: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kind: Kind::default(),
            namespace: String::new(),
            image: None,
            images: BTreeMap::new(),
            gpu_resource: "nvidia.com/gpu".into(),
            gpu_types: BTreeMap::new(),
            queue: None,
            backoff_limit: None,
            restart_policy: RestartPolicy::default(),
            clean_pod_policy: CleanPodPolicy::default(),
            ttl_seconds_after_finished: None,
            runtime_ref: None,
            init_image: "busybox:1.36".into(),
            init_container: "mlgw-init".into(),
            code_url_ttl_seconds: 0,
            service_account: None,
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
            pod_template: None,
            output_prefix: None,
            pod_check_seconds: 10,
        }
    }
}

fn bad(message: String) -> BackendError {
    internal(format!("the target's settings do not fit: {message}"))
}

/// A label value as Kubernetes accepts it.
pub fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

impl Settings {
    pub fn of(ctx: &CallContext) -> Result<Self, BackendError> {
        let map = mlgw_plugin_sdk::settings(ctx)?;
        let s: Settings = match serde_json::from_value(Value::Object(map.clone())) {
            Ok(s) => s,
            Err(e) => {
                // serde names the key only for unknown fields; find the one that does not fit.
                let key = map.iter().map(|(k, _)| k).find(|k| {
                    let one: Map<String, Value> = map
                        .iter()
                        .filter(|(n, _)| n == k)
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect();
                    serde_json::from_value::<Settings>(Value::Object(one)).is_err()
                });
                return Err(bad(match key {
                    Some(k) => format!("{k}: {e}"),
                    None => e.to_string(),
                }));
            }
        };
        s.check()?;
        Ok(s)
    }

    /// What serde cannot say about the shapes.
    pub fn check(&self) -> Result<(), BackendError> {
        if let Some(q) = &self.queue
            && (q.is_empty() || !is_label_value(q))
        {
            return Err(bad(format!(
                "queue {q:?} is not a Kueue queue name (a label value: at most 63 letters, digits, '-', '_' or '.')"
            )));
        }
        if self.gpu_resource.is_empty() {
            return Err(bad("gpu_resource must not be empty".into()));
        }
        if self.init_image.is_empty() {
            return Err(bad("init_image must not be empty".into()));
        }
        match self.kind {
            Kind::TrainJob => {
                let Some(r) = &self.runtime_ref else {
                    return Err(bad(
                        "kind = \"trainjob\" needs runtime_ref = { name = \"…\" } (a ClusterTrainingRuntime or TrainingRuntime)".into(),
                    ));
                };
                if r.name.is_empty() {
                    return Err(bad("runtime_ref.name must not be empty".into()));
                }
                if self.init_container.is_empty() {
                    return Err(bad("init_container must not be empty".into()));
                }
            }
            Kind::Job if self.restart_policy == RestartPolicy::ExitCode => {
                return Err(bad(
                    "restart_policy = \"ExitCode\" is the Training Operator's; a batch Job takes Never or OnFailure".into(),
                ));
            }
            _ => {}
        }
        if self.kind != Kind::TrainJob && self.runtime_ref.is_some() {
            return Err(bad(format!(
                "runtime_ref is only for kind = \"trainjob\", not {:?}",
                self.kind.name().to_lowercase()
            )));
        }
        if let Some(p) = &self.output_prefix
            && !p.contains("://")
        {
            return Err(bad(format!(
                "output_prefix {p:?} is not a URI the cluster can write to (e.g. s3://bucket/outputs)"
            )));
        }
        for (name, t) in &self.gpu_types {
            for (k, v) in &t.node_selector {
                if !is_label_value(v) {
                    return Err(bad(format!(
                        "gpu_types.{name}.node_selector.{k}: {v:?} is not a label value"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn pod_check_ms(&self) -> u64 {
        u64::from(self.pod_check_seconds) * 1000
    }

    /// Where a job without an output URI writes, if the operator said.
    pub fn output_for(&self, job_id: &str) -> Option<String> {
        self.output_prefix
            .as_deref()
            .map(|p| format!("{}/{job_id}/", p.trim_end_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, BackendError> {
        let ctx = CallContext {
            tenant: "default".into(),
            target: "gpu".into(),
            resource_id: "j-1".into(),
            backend_name: "mlgw-j1".into(),
            settings: json.into(),
            revision: 0,
        };
        Settings::of(&ctx)
    }

    fn message(e: BackendError) -> String {
        match e {
            BackendError::Internal(m) => m,
            other => panic!("expected internal, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.kind, Kind::PyTorchJob);
        assert_eq!(s.gpu_resource, "nvidia.com/gpu");
        assert_eq!(s.restart_policy, RestartPolicy::Never);
        assert_eq!(s.clean_pod_policy, CleanPodPolicy::None);
        assert_eq!(s.backoff_limit, None);
        assert_eq!(s.init_image, "busybox:1.36");
        assert_eq!(s.pod_check_ms(), 10_000);
        assert_eq!(s.output_for("j-1"), None);
    }

    #[test]
    fn reads_a_full_table() {
        let s = parse(
            r#"{"kind": "job", "namespace": "team-a", "image": "python:3.12",
                "images": {"pytorch": "pytorch/pytorch:2.5.1"},
                "gpu_types": {"a100": {"node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"},
                                       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                        "effect": "NoSchedule", "tolerationSeconds": 5}]}},
                "queue": "team-a-gpu", "backoff_limit": 2, "restart_policy": "OnFailure",
                "clean_pod_policy": "All", "output_prefix": "s3://b/out/",
                "pod_annotations": {"sidecar.istio.io/inject": "false"}}"#,
        )
        .unwrap();
        assert_eq!(s.kind, Kind::Job);
        assert_eq!(s.images["pytorch"], "pytorch/pytorch:2.5.1");
        let a100 = &s.gpu_types["a100"];
        assert_eq!(a100.tolerations[0].toleration_seconds, Some(5));
        assert_eq!(
            serde_json::to_value(&a100.tolerations[0]).unwrap(),
            serde_json::json!({"key": "nvidia.com/gpu", "operator": "Exists",
                               "effect": "NoSchedule", "tolerationSeconds": 5})
        );
        assert_eq!(s.output_for("j-1").as_deref(), Some("s3://b/out/j-1/"));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        for (json, says) in [
            (r#"{"kind": "tfjob"}"#, "unknown variant `tfjob`"),
            (r#"{"knd": "job"}"#, "unknown field `knd`"),
            (r#"{"backoff_limit": -1}"#, "backoff_limit"),
            (r#"{"queue": "team a"}"#, "queue \"team a\""),
            (r#"{"kind": "trainjob"}"#, "needs runtime_ref"),
            (
                r#"{"runtime_ref": {"name": "torch-distributed"}}"#,
                "only for kind = \"trainjob\"",
            ),
            (
                r#"{"kind": "job", "restart_policy": "ExitCode"}"#,
                "Never or OnFailure",
            ),
            (r#"{"output_prefix": "/data/out"}"#, "output_prefix"),
            (
                r#"{"gpu_types": {"a100": {"node_selectr": {}}}}"#,
                "unknown field `node_selectr`",
            ),
            (
                r#"{"gpu_types": {"a100": {"tolerations": [{"keys": "x"}]}}}"#,
                "unknown field `keys`",
            ),
            (r#"{"restart_policy": "never"}"#, "unknown variant `never`"),
        ] {
            let m = message(parse(json).unwrap_err());
            assert!(m.contains(says), "{json}: {m}");
            assert!(m.starts_with("the target's settings do not fit"), "{m}");
        }
    }

    #[test]
    fn trainjob_runtime_defaults() {
        let s =
            parse(r#"{"kind": "trainjob", "runtime_ref": {"name": "torch-distributed"}}"#).unwrap();
        let r = s.runtime_ref.unwrap();
        assert_eq!(r.kind, "ClusterTrainingRuntime");
        assert_eq!(r.api_group, "trainer.kubeflow.org");
    }

    #[test]
    fn label_values() {
        assert!(is_label_value("team-a_gpu.1"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-a"));
        assert!(!is_label_value("a b"));
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn kinds() {
        assert_eq!(Kind::from_name("PyTorchJob"), Some(Kind::PyTorchJob));
        assert_eq!(Kind::from_name("Pod"), None);
        assert_eq!(
            Kind::Job.pod_selector("x"),
            "batch.kubernetes.io/job-name=x"
        );
    }
}
