//! Honest states: the object's conditions, mapped explicitly, and what its pods say about why
//! the job waits or crashes. Pure; `lib.rs` reads the object and the pods.

use mlgw_plugin_sdk::JobState;
use serde_json::Value;

use crate::settings::Kind;

/// What the object says: the state, the backend's own word, and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub state: JobState,
    pub raw: String,
    pub message: Option<String>,
}

fn obs(state: JobState, raw: &str, message: Option<String>) -> Observed {
    Observed {
        state,
        raw: raw.to_string(),
        message,
    }
}

fn true_conditions(obj: &Value) -> Vec<&Value> {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "True")
        .collect()
}

fn text(c: &Value, key: &str) -> Option<String> {
    c[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `reason: message`, or whichever of the two there is.
fn why(c: &Value) -> String {
    match (text(c, "reason"), text(c, "message")) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => "failed".into(),
    }
}

pub const WAITING_FOR_QUOTA: &str = "waiting for quota";

/// The job's state from its object. Terminal conditions first (a finished job keeps its older
/// conditions), then suspension, then progress; anything unknown is pending or running with
/// the raw word, never succeeded.
pub fn state_of(kind: Kind, obj: &Value) -> Observed {
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return obs(JobState::Running, "Terminating", Some("stopping".into()));
    }
    let conds = true_conditions(obj);
    let has = |t: &str| conds.iter().find(|c| c["type"] == t).copied();
    let succeeded = match kind {
        Kind::PyTorchJob => has("Succeeded"),
        Kind::TrainJob | Kind::Job => has("Complete"),
    };
    if let Some(c) = succeeded {
        return obs(
            JobState::Succeeded,
            c["type"].as_str().unwrap_or("Succeeded"),
            text(c, "message"),
        );
    }
    if let Some(c) = has("Failed") {
        return obs(JobState::Failed(why(c)), "Failed", None);
    }
    if has("Suspended").is_some() {
        return obs(
            JobState::Pending,
            "Suspended",
            Some(WAITING_FOR_QUOTA.into()),
        );
    }
    match kind {
        Kind::PyTorchJob => {
            if let Some(c) = has("Restarting") {
                return obs(JobState::Running, "Restarting", text(c, "message"));
            }
            if has("Running").is_some() {
                return obs(JobState::Running, "Running", None);
            }
            if has("Created").is_some() {
                return obs(JobState::Pending, "Created", None);
            }
            // The operator has not seen it yet, or wrote a condition this plugin does not know.
            let raw = conds
                .last()
                .and_then(|c| c["type"].as_str())
                .unwrap_or("Submitted");
            obs(JobState::Pending, raw, None)
        }
        Kind::Job => {
            let status = &obj["status"];
            // A Job's Suspended condition above covers Kueue; spec.suspend without it is the
            // same wait seen before the controller wrote the condition.
            if obj["spec"]["suspend"] == true {
                return obs(
                    JobState::Pending,
                    "Suspended",
                    Some(WAITING_FOR_QUOTA.into()),
                );
            }
            let needed = obj["spec"]["completions"].as_u64().unwrap_or(1).max(1);
            if status["succeeded"].as_u64() >= Some(needed) {
                return obs(JobState::Succeeded, "Complete", None);
            }
            if status["active"].as_u64() >= Some(1) {
                // Active pods may still be pulling or unschedulable: only a ready one runs.
                if status["ready"].as_u64() >= Some(1) {
                    return obs(JobState::Running, "Running", None);
                }
                return obs(JobState::Pending, "Active", None);
            }
            obs(JobState::Pending, "Created", None)
        }
        Kind::TrainJob => {
            let jobs = obj["status"]["jobsStatus"].as_array();
            let sum = |k: &str| {
                jobs.into_iter()
                    .flatten()
                    .map(|j| j[k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            };
            if sum("ready") > 0 {
                return obs(JobState::Running, "Running", None);
            }
            if sum("active") > 0 {
                return obs(JobState::Pending, "Active", None);
            }
            let raw = conds
                .last()
                .and_then(|c| c["type"].as_str())
                .unwrap_or("Created");
            obs(JobState::Pending, raw, None)
        }
    }
}

/// What a pod says about the job: a reason, where it was seen, and whether it ends the job.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNote {
    pub message: String,
    pub fatal: bool,
}

/// Reasons a container waits that a user must hear about: it will not start by itself.
const WAITING_REASONS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

fn container_statuses(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainerStatuses", "containerStatuses"]
        .into_iter()
        .flat_map(|k| pod["status"][k].as_array().into_iter().flatten())
}

fn with_message(reason: &str, message: Option<&str>) -> String {
    match message.filter(|m| !m.is_empty()) {
        Some(m) => format!("{reason}: {m}"),
        None => reason.to_string(),
    }
}

/// One pod's reason, the most severe first: OOMKilled in a failed pod ends the job; a
/// container that cannot start or keeps crashing, and a pod the scheduler cannot place, say
/// why the job does not run.
pub fn pod_note(pod: &Value) -> Option<PodNote> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    for c in container_statuses(pod) {
        let cname = c["name"].as_str().unwrap_or("?");
        for state in [&c["state"], &c["lastState"]] {
            if state["terminated"]["reason"] == "OOMKilled" {
                return Some(PodNote {
                    message: format!(
                        "OOMKilled: container {cname} of pod {name} ran out of memory"
                    ),
                    fatal: phase == "Failed",
                });
            }
        }
    }
    for c in container_statuses(pod) {
        let w = &c["state"]["waiting"];
        if let Some(r) = w["reason"].as_str()
            && WAITING_REASONS.contains(&r)
        {
            return Some(PodNote {
                message: format!(
                    "pod {name}, container {}: {}",
                    c["name"].as_str().unwrap_or("?"),
                    with_message(r, w["message"].as_str())
                ),
                fatal: false,
            });
        }
    }
    for c in container_statuses(pod) {
        let t = &c["state"]["terminated"];
        if let Some(code) = t["exitCode"].as_i64().filter(|c| *c != 0) {
            let reason = t["reason"].as_str().unwrap_or("Error");
            return Some(PodNote {
                message: format!(
                    "pod {name}, container {}: exit code {code} ({})",
                    c["name"].as_str().unwrap_or("?"),
                    with_message(reason, t["message"].as_str())
                ),
                fatal: false,
            });
        }
    }
    let conds = pod["status"]["conditions"].as_array().into_iter().flatten();
    for c in conds {
        if c["type"] == "PodScheduled" && c["status"] == "False" {
            let r = c["reason"].as_str().unwrap_or("Unschedulable");
            return Some(PodNote {
                message: format!("pod {name}: {}", with_message(r, c["message"].as_str())),
                fatal: false,
            });
        }
    }
    None
}

/// The first reason among the pods (in the order given: the master first), a fatal one before
/// any other.
pub fn first_note(pods: &[Value]) -> Option<PodNote> {
    let notes: Vec<PodNote> = pods.iter().filter_map(pod_note).collect();
    notes.iter().find(|n| n.fatal).or(notes.first()).cloned()
}

/// The object's state with what the pods say laid over it.
pub fn combine(o: Observed, note: Option<PodNote>) -> Observed {
    let Some(n) = note else { return o };
    match o.state {
        JobState::Pending | JobState::Running if n.fatal => Observed {
            state: JobState::Failed(n.message.clone()),
            raw: o.raw,
            message: Some(n.message),
        },
        JobState::Pending | JobState::Running => {
            // Suspension (quota) and stopping are the object's own story.
            if o.message.is_some() {
                return o;
            }
            Observed {
                message: Some(n.message),
                ..o
            }
        }
        // The operator's "1 Master replica(s) failed" says less than the pod's OOMKilled.
        JobState::Failed(why) if n.fatal => Observed {
            state: JobState::Failed(format!("{}; {why}", n.message)),
            ..o
        },
        // What the failed container said, after the operator's verdict.
        JobState::Failed(why) => Observed {
            state: JobState::Failed(format!("{why}; {}", n.message)),
            ..o
        },
        _ => o,
    }
}

/// Master first, then workers by index, then anything else by name: the order logs and
/// reasons are given in.
pub fn order_pods(pods: &mut [Value]) {
    fn rank(p: &Value) -> (u8, u64, String) {
        let l = &p["metadata"]["labels"];
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        let role = l["training.kubeflow.org/replica-type"]
            .as_str()
            .or(l["jobset.sigs.k8s.io/replicatedjob-name"].as_str())
            .unwrap_or("");
        let index = l["training.kubeflow.org/replica-index"]
            .as_str()
            .or(l["batch.kubernetes.io/job-completion-index"].as_str())
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        let r = match role.to_ascii_lowercase().as_str() {
            "master" | "launcher" => 0,
            "worker" | "node" => 1,
            _ => 2,
        };
        (r, index, name)
    }
    pods.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(conds: Value) -> Value {
        json!({"status": {"conditions": conds}})
    }

    fn c(t: &str) -> Value {
        json!({"type": t, "status": "True"})
    }

    #[test]
    fn pytorchjob_conditions() {
        let k = Kind::PyTorchJob;
        let s = |v| state_of(k, &v);
        assert_eq!(s(json!({})).state, JobState::Pending);
        assert_eq!(s(with(json!([c("Created")]))).raw, "Created");
        assert_eq!(s(with(json!([c("Created")]))).state, JobState::Pending);
        assert_eq!(
            s(with(json!([c("Created"), c("Running")]))).state,
            JobState::Running
        );
        let r = s(with(json!([c("Created"),
            {"type": "Running", "status": "False"},
            {"type": "Restarting", "status": "True", "message": "pod restarted"}])));
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.raw, "Restarting");
        assert_eq!(r.message.as_deref(), Some("pod restarted"));
        let done = s(with(json!([c("Created"),
            {"type": "Running", "status": "False"}, c("Succeeded")])));
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.raw, "Succeeded");
        let failed = s(with(json!([c("Created"),
            {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed",
             "message": "PyTorchJob x is failed because 1 Master replica(s) failed."}])));
        assert_eq!(
            failed.state,
            JobState::Failed(
                "PyTorchJobFailed: PyTorchJob x is failed because 1 Master replica(s) failed."
                    .into()
            )
        );
        let q = s(with(json!([c("Created"), c("Suspended")])));
        assert_eq!(q.state, JobState::Pending);
        assert_eq!(q.message.as_deref(), Some(WAITING_FOR_QUOTA));
        // Unknown: pending with the raw word, never succeeded.
        let u = s(with(json!([c("Exploded")])));
        assert_eq!((u.state, u.raw.as_str()), (JobState::Pending, "Exploded"));
        // A condition no longer true does not count.
        assert_eq!(
            s(with(json!([{"type": "Failed", "status": "False"}]))).state,
            JobState::Pending
        );
    }

    #[test]
    fn terminating_is_stopping() {
        let o = json!({"metadata": {"deletionTimestamp": "2026-12-01T10:00:00Z"},
                       "status": {"conditions": [c("Running")]}});
        for k in [Kind::PyTorchJob, Kind::Job, Kind::TrainJob] {
            let r = state_of(k, &o);
            assert_eq!(r.state, JobState::Running);
            assert_eq!(r.message.as_deref(), Some("stopping"));
        }
    }

    #[test]
    fn batch_job_and_trainjob() {
        let j = |v| state_of(Kind::Job, &v);
        assert_eq!(j(json!({"status": {}})).state, JobState::Pending);
        assert_eq!(j(json!({"status": {"active": 1}})).state, JobState::Pending);
        assert_eq!(
            j(json!({"status": {"active": 1, "ready": 1}})).state,
            JobState::Running
        );
        assert_eq!(j(with(json!([c("Complete")]))).state, JobState::Succeeded);
        assert_eq!(
            j(json!({"spec": {"suspend": true}, "status": {}}))
                .message
                .as_deref(),
            Some(WAITING_FOR_QUOTA)
        );
        let t = |v| state_of(Kind::TrainJob, &v);
        assert_eq!(
            t(json!({"status": {"jobsStatus": [{"name": "node", "ready": 2, "active": 2}]}})).state,
            JobState::Running
        );
        assert_eq!(t(with(json!([c("Complete")]))).state, JobState::Succeeded);
        assert_eq!(
            t(with(
                json!([{"type": "Failed", "status": "True", "reason": "JobSetFailed"}])
            ))
            .state,
            JobState::Failed("JobSetFailed".into())
        );
        assert_eq!(
            t(with(json!([c("Suspended")]))).message.as_deref(),
            Some(WAITING_FOR_QUOTA)
        );
        // Succeeded is not a TrainJob's word: not success.
        assert_ne!(t(with(json!([c("Succeeded")]))).state, JobState::Succeeded);
    }

    fn pod(name: &str, status: Value) -> Value {
        json!({"metadata": {"name": name}, "status": status})
    }

    #[test]
    fn pod_reasons() {
        let unsched = pod(
            "p-master-0",
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}),
        );
        assert_eq!(
            pod_note(&unsched).unwrap().message,
            "pod p-master-0: Unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
        );
        let pull = pod(
            "p",
            json!({"phase": "Pending", "initContainerStatuses": [{"name": "mlgw-init",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"nope\""}}}]}),
        );
        let n = pod_note(&pull).unwrap();
        assert!(!n.fatal);
        assert_eq!(
            n.message,
            "pod p, container mlgw-init: ImagePullBackOff: Back-off pulling image \"nope\""
        );
        let crash = pod(
            "p",
            json!({"phase": "Running", "containerStatuses": [{"name": "pytorch",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
        );
        assert!(
            pod_note(&crash)
                .unwrap()
                .message
                .ends_with("CrashLoopBackOff")
        );
        let oom = pod(
            "p",
            json!({"phase": "Failed", "containerStatuses": [{"name": "pytorch",
                "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
        );
        assert!(pod_note(&oom).unwrap().fatal);
        // Restarted after an OOM kill: not over yet.
        let restarted = pod(
            "p",
            json!({"phase": "Running", "containerStatuses": [{"name": "pytorch",
                "state": {"running": {}}, "lastState": {"terminated": {"reason": "OOMKilled"}}}]}),
        );
        assert!(!pod_note(&restarted).unwrap().fatal);
        assert_eq!(
            pod_note(&pod(
                "p",
                json!({"phase": "Running", "containerStatuses": [{"name": "x",
                "state": {"waiting": {"reason": "ContainerCreating"}}}]})
            )),
            None
        );
        // The fatal one wins over the first.
        let first = first_note(&[unsched.clone(), oom.clone()]).unwrap();
        assert!(first.fatal);
        assert!(
            first_note(&[unsched, pull])
                .unwrap()
                .message
                .contains("Unschedulable")
        );
    }

    #[test]
    fn pods_lay_over_the_object() {
        let pending = obs(JobState::Pending, "Created", None);
        let note = PodNote {
            message: "pod p: Unschedulable: 0/2".into(),
            fatal: false,
        };
        let r = combine(pending.clone(), Some(note.clone()));
        assert_eq!(r.state, JobState::Pending);
        assert_eq!(r.message.as_deref(), Some("pod p: Unschedulable: 0/2"));
        let oom = PodNote {
            message: "OOMKilled: container pytorch of pod p ran out of memory".into(),
            fatal: true,
        };
        let r = combine(obs(JobState::Running, "Running", None), Some(oom.clone()));
        assert_eq!(r.state, JobState::Failed(oom.message.clone()));
        let r = combine(
            obs(
                JobState::Failed("PyTorchJobFailed: 1 Master failed".into()),
                "Failed",
                None,
            ),
            Some(oom.clone()),
        );
        match r.state {
            JobState::Failed(m) => assert!(m.starts_with("OOMKilled") && m.contains("Master")),
            other => panic!("{other:?}"),
        }
        let quota = obs(
            JobState::Pending,
            "Suspended",
            Some(WAITING_FOR_QUOTA.into()),
        );
        assert_eq!(combine(quota.clone(), Some(note)), quota);
        let exited = pod(
            "p-master-0",
            json!({"phase": "Failed", "containerStatuses": [{"name": "pytorch",
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}}}]}),
        );
        let n = pod_note(&exited).unwrap();
        assert!(!n.fatal);
        assert_eq!(
            n.message,
            "pod p-master-0, container pytorch: exit code 1 (Error: boom)"
        );
        let r = combine(
            obs(
                JobState::Failed("PyTorchJobFailed: backoff limit".into()),
                "Failed",
                None,
            ),
            Some(n),
        );
        assert_eq!(
            r.state,
            JobState::Failed(
                "PyTorchJobFailed: backoff limit; pod p-master-0, container pytorch: exit code 1 (Error: boom)"
                    .into()
            )
        );
        let done = obs(JobState::Succeeded, "Succeeded", None);
        assert_eq!(combine(done.clone(), Some(oom)), done);
    }

    #[test]
    fn master_first() {
        let p = |name: &str, role: &str, i: &str| {
            json!({"metadata": {"name": name, "labels": {
                "training.kubeflow.org/replica-type": role,
                "training.kubeflow.org/replica-index": i}}})
        };
        let mut pods = vec![
            p("j-worker-10", "worker", "10"),
            p("j-worker-2", "worker", "2"),
            p("j-master-0", "master", "0"),
        ];
        order_pods(&mut pods);
        let names: Vec<&str> = pods
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["j-master-0", "j-worker-2", "j-worker-10"]);
    }
}
