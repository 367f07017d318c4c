//! The in-cluster training target: a job becomes a Kubeflow PyTorchJob, a Trainer v2 TrainJob
//! or a batch Job (the target's `kind` setting), applied through the host's `kube` capability
//! under the gateway's backend name. Status comes from the object's conditions and its pods,
//! logs from every replica pod, and the job's code from the artifact store through a presigned
//! URL an init container fetches.

pub mod logs;
pub mod objects;
pub mod settings;
pub mod status;
pub mod time;

use mlgw_plugin_sdk::kube::{self, LogRequest, ObjectRef, Propagation};
use mlgw_plugin_sdk::{
    Backend, BackendError, BackendInfo, BackendRef, CallContext, Capabilities, Features, JobState,
    JobStatus, LogPage, TrainingSpec, artifacts, internal,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::settings::{Kind, Settings};

pub struct Kubeflow;

/// Pages keep each list answer well inside the host's document limit, however many pods a
/// job has.
const PODS_PER_PAGE: u32 = 50;
/// A log read per pod and page: well inside the host's 4 MiB document limit.
const LOG_BYTES_PER_READ: u64 = 1 << 20;
const MAX_LINES: usize = 10_000;

/// What the gateway stores for the job (`backend-ref.data`): where the object is, where the
/// job writes, and the last pod reading, so pods are read every `pod_check_seconds` rather
/// than on every status call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default)]
    pub pods_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default)]
    pub raw: String,
}

impl JobRef {
    fn of(r: &BackendRef) -> Result<Self, BackendError> {
        serde_json::from_str(&r.data)
            .map_err(|e| internal(format!("not a reference this target returned: {e}")))
    }

    fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    fn kind(&self) -> Result<Kind, BackendError> {
        Kind::from_name(&self.kind).ok_or_else(|| internal(format!("unknown kind {}", self.kind)))
    }

    fn backend_ref(&self) -> BackendRef {
        BackendRef {
            name: format!("{}/{}", self.namespace, self.name),
            data: serde_json::to_string(self).unwrap_or_default(),
        }
    }
}

fn parse(doc: &str) -> Result<Value, BackendError> {
    serde_json::from_str(doc).map_err(|e| internal(format!("the API server's answer: {e}")))
}

fn is_terminal(s: &JobState) -> bool {
    matches!(
        s,
        JobState::Succeeded | JobState::Failed(_) | JobState::Cancelled
    )
}

/// Every pod of the job, paged, the master first. The selector also names the target's own
/// label, which every pod of the job carries: the host can then answer from its watch cache.
fn pods(kind: Kind, r: &JobRef, target: &str) -> Result<Vec<Value>, BackendError> {
    let selector = format!(
        "{},{}={target}",
        kind.pod_selector(&r.name),
        objects::LABEL_TARGET
    );
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = parse(&kube::list_objects(
            "v1",
            "Pod",
            &r.namespace,
            &selector,
            PODS_PER_PAGE,
            &token,
        )?)?;
        all.extend(page["items"].as_array().into_iter().flatten().cloned());
        match page["metadata"]["continue"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_string(),
            _ => break,
        }
    }
    status::order_pods(&mut all);
    Ok(all)
}

/// Whether this status call reads the job's pods: each one is a list request, so only every
/// `check_ms` while nothing changes, at once when the state word does, and once more for a
/// failed job, whose pods may say more than its operator.
fn pods_due(o: &status::Observed, r: &JobRef, now_ms: u64, check_ms: u64) -> bool {
    match &o.state {
        JobState::Succeeded | JobState::Cancelled => false,
        JobState::Failed(_) => true,
        // Waiting for quota or stopping: the object's own story, no pod to ask.
        _ if matches!(o.raw.as_str(), "Suspended" | "Terminating") => false,
        _ => o.raw != r.raw || now_ms.saturating_sub(r.pods_at) >= check_ms,
    }
}

fn job_ref_of(stored: &Value, output: Option<String>) -> JobRef {
    let meta = &stored["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    JobRef {
        api_version: s(&stored["apiVersion"]),
        kind: s(&stored["kind"]),
        namespace: s(&meta["namespace"]),
        name: s(&meta["name"]),
        output,
        ..Default::default()
    }
}

impl Backend for Kubeflow {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "kubeflow".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Training on Kubernetes: Kubeflow PyTorchJobs, Trainer TrainJobs or batch Jobs"
                    .into(),
            features: Features::TRAINING | Features::TRAINING_LOGS | Features::TRAINING_CANCEL,
            needs: Capabilities::KUBE,
        }
    }

    fn validate_training(ctx: CallContext, spec: TrainingSpec) -> Result<(), BackendError> {
        objects::validate(&spec, &Settings::of(&ctx)?)
    }

    fn submit_training(ctx: CallContext, spec: TrainingSpec) -> Result<BackendRef, BackendError> {
        let s = Settings::of(&ctx)?;
        objects::validate(&spec, &s)?;
        let output = spec
            .output_uri
            .clone()
            .filter(|o| !o.is_empty())
            .or_else(|| s.output_for(&ctx.resource_id));
        // A retry after a crash finds the object under the same name: adopt it rather than
        // apply again (a new presigned URL would change the running job's spec).
        let existing = kube::get(&ObjectRef {
            api_version: s.kind.api_version().into(),
            kind: s.kind.name().into(),
            namespace: s.namespace.clone(),
            name: ctx.backend_name.clone(),
        });
        match existing {
            Ok(doc) => {
                let obj = parse(&doc)?;
                let owner = obj["metadata"]["annotations"][objects::LABEL_JOB_ID].as_str();
                if owner != Some(ctx.resource_id.as_str()) {
                    return Err(BackendError::Conflict(format!(
                        "{} {} exists and belongs to job {}",
                        s.kind.name(),
                        ctx.backend_name,
                        owner.unwrap_or("(none)")
                    )));
                }
                mlgw_plugin_sdk::info(&format!("adopting {} {}", s.kind.name(), ctx.backend_name));
                return Ok(job_ref_of(&obj, output).backend_ref());
            }
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let code_url = match spec.code_uri.as_deref().filter(|c| !c.is_empty()) {
            Some(uri) => Some(artifacts::presign(uri, s.code_url_ttl_seconds)?),
            None => None,
        };
        let obj = objects::build(&ctx, &spec, &s, output.as_deref(), code_url.as_deref())?;
        let stored = parse(&kube::apply(&obj.to_string())?)?;
        Ok(job_ref_of(&stored, output).backend_ref())
    }

    fn training_status(ctx: CallContext, job: BackendRef) -> Result<JobStatus, BackendError> {
        let s = Settings::of(&ctx)?;
        let mut r = JobRef::of(&job)?;
        let kind = r.kind()?;
        // Gone is not-found: after a cancel the gateway records it as cancelled.
        let obj = parse(&kube::get(&r.object_ref())?)?;
        let o = status::state_of(kind, &obj);
        let before = r.clone();
        let now = time::now_ms();
        let note = if pods_due(&o, &r, now, s.pod_check_ms()) {
            let note = status::first_note(&pods(kind, &r, &ctx.target)?);
            r.pods_at = now;
            r.note = note.as_ref().map(|n| n.message.clone());
            note
        } else {
            r.note.clone().map(|message| status::PodNote {
                message,
                fatal: false,
            })
        };
        r.raw = o.raw.clone();
        let o = status::combine(o, note);
        let succeeded = o.state == JobState::Succeeded;
        Ok(JobStatus {
            state: o.state,
            raw_state: o.raw,
            message: o.message,
            output_uri: if succeeded { r.output.clone() } else { None },
            updated_ref: (r != before).then(|| r.backend_ref()),
        })
    }

    fn cancel_training(_ctx: CallContext, job: BackendRef) -> Result<(), BackendError> {
        // Foreground: the object stays (terminating, "stopping") until its pods are gone.
        match kube::delete(&JobRef::of(&job)?.object_ref(), Propagation::Foreground) {
            Ok(()) | Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn training_logs(
        ctx: CallContext,
        job: BackendRef,
        cursor: Option<String>,
        max_lines: u32,
    ) -> Result<LogPage, BackendError> {
        let mut cur = logs::Cursor::parse(cursor.as_deref())?;
        let r = JobRef::of(&job)?;
        let kind = r.kind()?;
        // The state before the logs: if the job had ended, the logs read next are final, so
        // `complete` cannot hide lines written after they were read.
        let ended = match kube::get(&r.object_ref()) {
            Ok(doc) => is_terminal(&status::state_of(kind, &parse(&doc)?).state),
            Err(BackendError::NotFound(_)) => true,
            Err(e) => return Err(e),
        };
        let room = (max_lines as usize).clamp(1, MAX_LINES);
        let mut lines = Vec::new();
        let mut drained = true;
        for pod in pods(kind, &r, &ctx.target)? {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            if lines.len() >= room {
                drained = false;
                break;
            }
            let req = LogRequest {
                namespace: r.namespace.clone(),
                pod: name.to_string(),
                container: Some(kind.main_container().into()),
                since_seconds: None,
                since_time: cur.since(name),
                tail_lines: None,
                limit_bytes: Some(LOG_BYTES_PER_READ),
                timestamps: true,
                follow_ms: 0,
            };
            let text = match kube::pod_logs(&req) {
                Ok(t) => t,
                // Not started yet (or already cleaned up): no lines, not an error. A pod still
                // pending once the job has ended never starts, so it has nothing to wait for.
                Err(BackendError::InvalidSpec(_) | BackendError::NotFound(_)) => {
                    if !ended && pod["status"]["phase"] == "Pending" {
                        drained = false;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let read = logs::take(&mut cur, name, &text, room - lines.len());
            if !read.drained || text.len() as u64 >= LOG_BYTES_PER_READ {
                drained = false;
            }
            lines.extend(read.lines);
        }
        Ok(LogPage {
            lines,
            next_cursor: cur.encode(),
            complete: ended && drained,
        })
    }
}

mlgw_plugin_sdk::export_backend!(Kubeflow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_read_on_change_and_then_every_check_interval() {
        let o = |state, raw: &str| status::Observed {
            state,
            raw: raw.into(),
            message: None,
        };
        let r = JobRef {
            raw: "Running".into(),
            pods_at: 100_000,
            ..Default::default()
        };
        let running = o(JobState::Running, "Running");
        assert!(!pods_due(&running, &r, 105_000, 10_000));
        assert!(pods_due(&running, &r, 110_000, 10_000));
        // The state word changed: at once.
        assert!(pods_due(
            &o(JobState::Running, "Restarting"),
            &r,
            100_001,
            10_000
        ));
        assert!(pods_due(
            &o(JobState::Failed("x".into()), "Failed"),
            &r,
            100_001,
            10_000
        ));
        assert!(!pods_due(
            &o(JobState::Succeeded, "Succeeded"),
            &r,
            900_000,
            10_000
        ));
        assert!(!pods_due(
            &o(JobState::Pending, "Suspended"),
            &r,
            900_000,
            10_000
        ));
        // The first call after submit (no reading yet) reads them.
        assert!(pods_due(
            &o(JobState::Pending, "Created"),
            &JobRef::default(),
            5,
            10_000
        ));
    }

    #[test]
    fn refs_round_trip() {
        let r = JobRef {
            api_version: "kubeflow.org/v1".into(),
            kind: "PyTorchJob".into(),
            namespace: "team-a".into(),
            name: "mlgw-j1".into(),
            output: Some("s3://b/o/".into()),
            ..Default::default()
        };
        let b = r.backend_ref();
        assert_eq!(b.name, "team-a/mlgw-j1");
        assert_eq!(JobRef::of(&b).unwrap(), r);
        assert_eq!(r.kind().unwrap(), Kind::PyTorchJob);
        assert!(
            JobRef::of(&BackendRef {
                name: "x".into(),
                data: "{".into()
            })
            .is_err()
        );
    }
}
