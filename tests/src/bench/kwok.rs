//! Row 9 of `mlgw-loadgen table`, issue 12's KWOK rows: `--kwok-jobs` (10,000) live jobs on a
//! kube target of the release gateway, against the test control plane (tests/cluster), whose
//! KWOK node keeps every pod Running until the bench ends one.
//!
//! The jobs are the kubeflow plugin's plain `batch/v1` Jobs, one pod each, in a namespace of
//! the run's own on a KWOK node of its own (room for every pod): the cheapest objects that are
//! still really running — a Job controller, a scheduler and KWOK move each one to Running, and
//! the gateway holds a Running record whose Job and pod its watch cache keeps — so what is
//! measured is what the gateway does for live jobs, not for waiting ones (a suspended Job is
//! pending, and pending records are polled every tick). Everything goes through the gateway's
//! API: Submit, then Watch.
//!
//! - **Steady state**: once every job runs, the API server's audit log (tests/cluster/up logs
//!   the gateway's identity, and only it) counts the requests of the gateway's user over
//!   `--kwok-window` seconds (default 120; the resync, default 10 minutes, spreads its polls of
//!   the running jobs, so the window holds about a fifth to two fifths of them), with the
//!   number of status calls the gateway made meanwhile from its own metrics.
//! - **Status change → Watch event**: `--kwok-samples` jobs spread over the set, one every
//!   `--kwok-gap-ms`, have their pod end (its status written as KWOK writes it when a fake
//!   duration ends); from that write to the job's SUCCEEDED on the gateway's Watch of every job,
//!   against a plain kube-runtime watcher of the same Jobs seeing the Job controller record it.
//!
//! Nothing is asserted on time; a step that does not finish within its bound ends the rows
//! with what was reached.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job as KubeJob;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use mlgw::api::pb::{self, training_service_client::TrainingServiceClient};
use serde_json::{Value, json};

use super::table::{Met, Row, count, dur, progress, start_serve};
use super::{arg, channel, percentile};

const TARGET: &str = "kwok";
/// The gateway's identity in the test cluster, the user the audit log records.
const USER: &str = "mlgw-gateway";

pub(super) struct Opts {
    jobs: usize,
    window: Duration,
    samples: usize,
    gap: Duration,
    clients: usize,
    /// How long the jobs may take to be submitted and all run.
    ramp: Duration,
    /// At most this many jobs submitted and not yet running.
    inflight: usize,
}

impl Opts {
    pub(super) fn from_args() -> Self {
        let n = |name: &str, default: &str| -> u64 {
            arg(name, default)
                .parse()
                .unwrap_or_else(|_| panic!("{name}: a number"))
        };
        Self {
            jobs: n("--kwok-jobs", "10000") as usize,
            window: Duration::from_secs(n("--kwok-window", "120")),
            samples: n("--kwok-samples", "200") as usize,
            gap: Duration::from_millis(n("--kwok-gap-ms", "250")),
            clients: n("--kwok-clients", "8") as usize,
            ramp: Duration::from_secs(n("--kwok-ramp", "3600")),
            inflight: n("--kwok-inflight", "500") as usize,
        }
    }
}

/// What the gateway's Watch of every job has said, by job id.
#[derive(Default)]
struct Seen {
    running: HashSet<String>,
    /// Each time it was pending again after running (a suspended Job).
    pending_again: HashMap<String, Vec<Instant>>,
    succeeded: HashMap<String, Instant>,
    other_ends: HashMap<String, String>,
}

impl Seen {
    /// The first time `id` was pending again at or after `t`.
    fn pending_after(&self, id: &str, t: Instant) -> Option<Instant> {
        self.pending_again
            .get(id)?
            .iter()
            .copied()
            .find(|p| *p >= t)
    }
}

/// The namespace, Role, binding and KWOK node of one run; deleted at the end.
struct Place {
    admin: kube::Client,
    ns: String,
    node: String,
}

impl Place {
    async fn create(admin: kube::Client, jobs: usize) -> Self {
        let ns = crate::cluster::unique("mlgw-bench");
        let node = format!("{ns}-node");
        let post = PostParams::default();
        Api::<Namespace>::all(admin.clone())
            .create(&post, &from(json!({"metadata": {"name": ns}})))
            .await
            .unwrap();
        // What the kubeflow target needs for batch Jobs (tests/cluster/rbac.yaml's Role).
        Api::<Role>::namespaced(admin.clone(), &ns)
            .create(
                &post,
                &from(json!({
                    "metadata": {"name": USER},
                    "rules": [
                        {"apiGroups": ["batch"], "resources": ["jobs"],
                         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                    ]
                })),
            )
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .create(
                &post,
                &from(json!({
                    "metadata": {"name": USER},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": USER},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
                })),
            )
            .await
            .unwrap();
        // A fake node with room for every pod (the test cluster's own two hold 110 each).
        let room =
            json!({"cpu": "100000", "memory": "100000Gi", "pods": (jobs + 1000).to_string()});
        Api::<Node>::all(admin.clone())
            .create(
                &post,
                &from(json!({
                    "metadata": {
                        "name": node,
                        "annotations": {"kwok.x-k8s.io/node": "fake"},
                        "labels": {"type": "kwok", "kubernetes.io/hostname": node,
                                   "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                                   "mlgw.dev/bench": ns},
                    },
                    "status": {"allocatable": room, "capacity": room},
                })),
            )
            .await
            .unwrap();
        let nodes: Api<Node> = Api::all(admin.clone());
        crate::wait_for(
            Duration::from_secs(60),
            "KWOK to make the node ready",
            || {
                let (nodes, node) = (nodes.clone(), node.clone());
                async move {
                    let n = nodes.get(&node).await.ok()?;
                    n.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
        Self { admin, ns, node }
    }

    /// Deleted in the background: the namespace controller removes the Jobs and pods after
    /// the bench has ended.
    async fn remove(self) {
        let dp = DeleteParams::background();
        let _ = Api::<Namespace>::all(self.admin.clone())
            .delete(&self.ns, &dp)
            .await;
        let _ = Api::<Node>::all(self.admin).delete(&self.node, &dp).await;
    }
}

fn from<T: k8s_openapi::serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn config_toml(gateway_kubeconfig: &Path, ns: &str, metrics_port: u16) -> String {
    format!(
        r#"default_target = "{TARGET}"
[observability]
metrics_listen = "127.0.0.1:{metrics_port}"
[targets.{TARGET}]
plugin = "kubeflow"
settings = {{ kind = "job", image = "python:3.12", pod_annotations = {{ "mlgw.dev/fake-duration" = "1000h" }}, pod_template = {{ spec = {{ nodeSelector = {{ "mlgw.dev/bench" = "{ns}" }} }} }} }}
[targets.{TARGET}.grants.kube]
kubeconfig = "{}"
namespaces = ["{ns}"]
kinds = ["batch/v1/Job", "v1/Pod"]
"#,
        gateway_kubeconfig.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway's own count of `operation` calls to the target's plugin (/metrics).
async fn plugin_calls(metrics_port: u16, operation: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("mlgw_plugin_call_duration_seconds_count{")
                && l.contains(&format!(r#"target="{TARGET}""#))
                && l.contains(&format!(r#"operation="{operation}""#))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU time the process has used, user and system, all threads (/proc/<pid>/stat, in the
/// kernel's USER_HZ of 100 a second).
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            // utime and stime are fields 14 and 15; `after` starts at field 3.
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kib| kib * 1024.0 / 1e6)
        .unwrap_or(0.0)
}

/// The gateway user's requests in the audit log from byte `from` on, received within
/// [`start`, `end`] and either in `ns` or not namespaced (discovery): by auditID (a watch
/// has two lines, when it starts and when it ends), then "verb resource" → how many.
fn audited(
    log: &Path,
    from: u64,
    ns: &str,
    start: SystemTime,
    end: SystemTime,
) -> BTreeMap<String, usize> {
    use std::io::{BufRead, Seek};
    let mut f = std::fs::File::open(log).unwrap();
    f.seek(std::io::SeekFrom::Start(from)).unwrap();
    let (start, end) = (timestamp(start), timestamp(end));
    let mut seen = HashSet::new();
    let mut by = BTreeMap::new();
    for line in std::io::BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        let Ok(e) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if e["user"]["username"] != USER {
            continue;
        }
        let namespace = e["objectRef"]["namespace"].as_str();
        if namespace.is_some_and(|n| n != ns) {
            continue;
        }
        let Some(at) = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        else {
            continue;
        };
        if at < start || at > end || !seen.insert(e["auditID"].as_str().unwrap_or("").to_string()) {
            continue;
        }
        let what = format!(
            "{} {}",
            e["verb"].as_str().unwrap_or("?"),
            e["objectRef"]["resource"].as_str().unwrap_or("(discovery)")
        );
        *by.entry(what).or_default() += 1;
    }
    by
}

fn timestamp(t: SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(t).unwrap()
}

/// What KWOK writes when a pod's fake duration ends (tests/cluster/kwok-stages.yaml).
fn pod_succeeded(pod: &Pod) -> Value {
    let t = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let containers: Vec<Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "image": c.image, "ready": false, "restartCount": 0,
                "started": false,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "startedAt": t, "finishedAt": t}},
            })
        })
        .collect();
    json!({"status": {"phase": "Succeeded", "containerStatuses": containers}})
}

fn job_suspended(j: &KubeJob) -> bool {
    j.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// The plugin's rule for a batch Job (plugins/kubeflow/src/status.rs): succeeded once its
/// completions have.
fn job_succeeded(j: &KubeJob) -> bool {
    let needed = j
        .spec
        .as_ref()
        .and_then(|s| s.completions)
        .unwrap_or(1)
        .max(1);
    j.status.as_ref().is_some_and(|s| {
        s.succeeded.unwrap_or(0) >= needed
            || s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Complete" && c.status == "True")
    })
}

fn job_id(labels: Option<&BTreeMap<String, String>>) -> Option<String> {
    labels?.get("mlgw.dev/job-id").cloned()
}

fn not_measured(why: &str, value: &str) -> Vec<Row> {
    vec![
        Row {
            row: "Status change → Watch event, 10,000 live jobs on KWOK".into(),
            measured: format!("not measured: {why}"),
            baseline: "a plain kube watch seeing the same change".into(),
            value: value.into(),
            goal: "p99 ≤ 1 s".into(),
            met: Met::No,
        },
        Row {
            row: "API server requests/s by the gateway, 10,000 live jobs, steady state".into(),
            measured: format!("not measured: {why}"),
            baseline: "—".into(),
            value: value.into(),
            goal: "≤ 5/s".into(),
            met: Met::No,
        },
    ]
}

pub(super) async fn rows(o: &Opts) -> Vec<Row> {
    let n = o.jobs;
    progress(&format!(
        "9: {n} live jobs on KWOK through the release gateway"
    ));
    let c = crate::cluster::cluster();
    let audit_log = c.admin.parent().unwrap().join("audit.log");
    assert!(
        audit_log.exists(),
        "{} is missing: the test cluster predates its audit log; restart it (tests/cluster/down, tests/cluster/up)",
        audit_log.display()
    );
    let admin = crate::cluster::client(&c.admin).await;
    let place = Place::create(admin.clone(), n).await;
    let ns = place.ns.clone();
    progress(&format!("9: namespace {ns}, node {}", place.node));

    let tmp = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let config = tmp.path().join("kwok.toml");
    std::fs::write(&config, config_toml(&c.gateway, &ns, metrics_port)).unwrap();
    let args: Vec<OsString> = vec![
        "--config".into(),
        config.into(),
        "--data-dir".into(),
        tmp.path().join("data").into(),
    ];
    let gw_log = tmp.path().join("gateway.log");
    let serving = start_serve(&args, &gw_log).await;
    let pid = serving.child.id().unwrap();
    let addr = serving.addr;

    // The gateway's Watch of every job of the target, from before the first Submit.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut events = TrainingServiceClient::new(channel(addr).await)
        .watch(pb::WatchJobRequest {
            target: TARGET.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let watching = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(ev)) = events.next().await {
                let Some(j) = ev.job else { continue };
                let mut s = seen.lock().unwrap();
                match pb::JobState::try_from(j.state) {
                    Ok(pb::JobState::Running) => {
                        s.running.insert(j.id);
                    }
                    Ok(pb::JobState::Pending) if s.running.contains(&j.id) => {
                        s.pending_again
                            .entry(j.id)
                            .or_default()
                            .push(Instant::now());
                    }
                    Ok(pb::JobState::Succeeded) => {
                        s.succeeded.entry(j.id).or_insert_with(Instant::now);
                    }
                    Ok(pb::JobState::Failed | pb::JobState::Cancelled) => {
                        s.other_ends.insert(j.id, j.message);
                    }
                    _ => {}
                }
            }
        })
    };

    // Submit every job, `clients` at a time.
    let ramp_offset = std::fs::metadata(&audit_log).unwrap().len();
    let ramp_t0 = SystemTime::now();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..o.clients {
        let (next, seen, inflight) = (next.clone(), seen.clone(), o.inflight);
        tasks.push(tokio::spawn(async move {
            let mut t = TrainingServiceClient::new(channel(addr).await);
            let mut ids = Vec::new();
            loop {
                // Waves: the gateway polls every pending record each tick, so thousands
                // pending at once cost a sweep of thousands of plugin calls every time.
                while next.load(std::sync::atomic::Ordering::Relaxed)
                    >= seen.lock().unwrap().running.len() + inflight
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(ids);
                }
                let job = t
                    .submit(pb::SubmitJobRequest {
                        target: TARGET.into(),
                        spec: Some(pb::TrainingJobSpec {
                            name: format!("kwok-{i}"),
                            command: vec!["python".into(), "-c".into(), "pass".into()],
                            ..Default::default()
                        }),
                        idempotency_key: String::new(),
                    })
                    .await
                    .map_err(|e| format!("Submit {i}: {e}"))?
                    .into_inner();
                ids.push((i, job.id));
                if (i + 1) % 1000 == 0 {
                    progress(&format!("9:   submitted {}", i + 1));
                }
            }
        }));
    }
    let mut ids = Vec::with_capacity(n);
    let mut failed: Option<String> = None;
    for t in tasks {
        match t.await.unwrap() {
            Ok(v) => ids.extend(v),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    ids.sort();
    let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    let submitted = started.elapsed();
    if let Some(e) = failed {
        serving.kill().await;
        place.remove().await;
        return not_measured(&format!("{} of {n} submitted, then {e}", ids.len()), "—");
    }
    progress(&format!(
        "9: {n} submitted in {:.0} s; waiting for all to run",
        submitted.as_secs_f64()
    ));

    let deadline = started + o.ramp;
    let mut last = Instant::now();
    let all_running = loop {
        let running = seen.lock().unwrap().running.len();
        if running >= n {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        if last.elapsed() >= Duration::from_secs(15) {
            progress(&format!(
                "9:   {running} of {n} running after {:.0} s (gateway RSS {:.0} MB)",
                started.elapsed().as_secs_f64(),
                rss_mb(pid)
            ));
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ramp = started.elapsed();
    let running = seen.lock().unwrap().running.len();
    if !all_running {
        let why = format!(
            "only {running} of {n} jobs running after {:.0} s (gateway log {})",
            ramp.as_secs_f64(),
            gw_log.display()
        );
        serving.kill().await;
        place.remove().await;
        let _ = tmp.keep();
        return not_measured(&why, "—");
    }
    let ramp_requests: usize = audited(&audit_log, ramp_offset, &ns, ramp_t0, SystemTime::now())
        .values()
        .sum();
    let mut rows = vec![Row {
        row: format!(
            "Starting {} jobs on KWOK (Submit through the gateway until every one runs)",
            count(n as f64)
        ),
        measured: format!(
            "all running after {:.0} s (Submits by {} clients in waves of at most {} not yet running: the last submitted after {:.0} s)",
            ramp.as_secs_f64(),
            o.clients,
            o.inflight,
            submitted.as_secs_f64(),
        ),
        baseline: "—".into(),
        value: format!(
            "{} API requests by the gateway meanwhile ({:.1} per job); gateway RSS {:.0} MB",
            count(ramp_requests as f64),
            ramp_requests as f64 / n as f64,
            rss_mb(pid)
        ),
        goal: "— (setup of row 9)".into(),
        met: Met::NotJudged,
    }];

    // --- steady state -------------------------------------------------------------------
    progress(&format!(
        "9: all running; counting the gateway's API requests for {} s",
        o.window.as_secs()
    ));
    let offset = std::fs::metadata(&audit_log).unwrap().len();
    let calls_before = plugin_calls(metrics_port, "training_status").await;
    let cpu_before = cpu_seconds(pid);
    let t0 = SystemTime::now();
    tokio::time::sleep(o.window).await;
    let t1 = SystemTime::now();
    let cpu = cpu_seconds(pid) - cpu_before;
    let calls = plugin_calls(metrics_port, "training_status").await - calls_before;
    let by = audited(&audit_log, offset, &ns, t0, t1);
    let total: usize = by.values().sum();
    let secs = t1.duration_since(t0).unwrap().as_secs_f64();
    let rate = total as f64 / secs;
    let breakdown = if by.is_empty() {
        "none".to_string()
    } else {
        by.iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rss = rss_mb(pid);
    let steady = Row {
        row: format!(
            "API server requests/s by the gateway, {} live jobs, steady state",
            count(n as f64)
        ),
        measured: format!(
            "{total} requests in {secs:.0} s ({breakdown}; audit log, user {USER}), while the gateway made {} status calls ({:.1} per job) answered from its watch cache, using {:.0}% of a core; RSS {rss:.0} MB",
            count(calls),
            calls / n as f64,
            100.0 * cpu / secs
        ),
        baseline: "—".into(),
        value: format!("{rate:.2}/s"),
        goal: "≤ 5/s".into(),
        met: Row::judged(rate <= 5.0),
    };

    // --- status change → Watch event ----------------------------------------------------
    progress("9: changing sampled jobs; the gateway's Watch vs a plain kube watch");
    let kube_seen: Arc<Mutex<KubeSeen>> = Arc::default();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let baseline = {
        let kube_seen = kube_seen.clone();
        let jobs: Api<KubeJob> = Api::namespaced(admin.clone(), &ns);
        let config = watcher::Config::default().labels(&format!("mlgw.dev/target={TARGET}"));
        tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let mut s = watcher::watcher(jobs, config).boxed();
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(Event::InitDone) => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Apply(j) | Event::InitApply(j)) => {
                        let Some(id) = job_id(j.metadata.labels.as_ref()) else {
                            continue;
                        };
                        let now = Instant::now();
                        let mut k = kube_seen.lock().unwrap();
                        if let Some(name) = &j.metadata.name {
                            k.names.entry(id.clone()).or_insert_with(|| name.clone());
                        }
                        if job_suspended(&j) {
                            k.suspended.entry(id.clone()).or_insert(now);
                        }
                        if job_succeeded(&j) {
                            k.succeeded.entry(id).or_insert(now);
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let _ = tokio::time::timeout(Duration::from_secs(300), synced_rx).await;
    // Two sets of jobs spread over all of them: one is suspended (the Job itself changes),
    // the other's pod ends (the Job controller then records it on the Job).
    let samples = o.samples.min(n / 2);
    let pick = |set: usize| -> Vec<String> {
        (0..samples)
            .map(|k| ids[(2 * k + set) * n / (2 * samples)].clone())
            .collect()
    };
    let jobs: Api<KubeJob> = Api::namespaced(admin.clone(), &ns);
    let mut suspend_at = HashMap::new();
    for id in pick(0) {
        let name = kube_seen.lock().unwrap().names.get(&id).cloned();
        let Some(name) = name else { continue };
        let t = Instant::now();
        jobs.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
        suspend_at.insert(id, t);
        tokio::time::sleep(o.gap).await;
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let pod_of = pods_by_job(&pods).await;
    let mut end_at = HashMap::new();
    for id in pick(1) {
        let Some(pod) = pod_of.get(&id) else { continue };
        let name = pod.metadata.name.clone().unwrap();
        let t = Instant::now();
        pods.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(pod_succeeded(pod)),
        )
        .await
        .unwrap();
        end_at.insert(id, t);
        tokio::time::sleep(o.gap).await;
    }
    let bound = Instant::now() + Duration::from_secs(120);
    loop {
        let done = {
            let (s, k) = (seen.lock().unwrap(), kube_seen.lock().unwrap());
            suspend_at.iter().all(|(id, t)| {
                (s.pending_after(id, *t).is_some() || s.other_ends.contains_key(id))
                    && k.suspended.contains_key(id)
            }) && end_at.keys().all(|id| {
                (s.succeeded.contains_key(id) || s.other_ends.contains_key(id))
                    && k.succeeded.contains_key(id)
            })
        };
        if done || Instant::now() >= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    baseline.abort();
    let (suspended, ended) = {
        let (s, k) = (seen.lock().unwrap(), kube_seen.lock().unwrap());
        (
            Latencies::of(
                &suspend_at,
                |id, t| s.pending_after(id, t),
                &k.suspended,
                &s.other_ends,
            ),
            Latencies::of(
                &end_at,
                |id, _| s.succeeded.get(id).copied(),
                &k.succeeded,
                &s.other_ends,
            ),
        )
    };
    let p99 = percentile(&suspended.gateway, 0.99);
    rows.push(Row {
        row: format!(
            "Status change → Watch event, {} live jobs on KWOK",
            count(n as f64)
        ),
        measured: format!(
            "{} from the Job's change to the Watch event ({} running Jobs suspended, as Kueue preempts, one every {} ms: PENDING on Watch of every job{}); a pod ending, through the Job controller: {}{}",
            suspended.cell(&suspended.gateway),
            suspended.changed,
            o.gap.as_millis(),
            suspended.failures(),
            ended.cell(&ended.gateway),
            ended.failures(),
        ),
        baseline: format!(
            "kube-runtime watcher of the same Jobs: {} (suspended); {} (the pod ending, as the Job controller records it)",
            suspended.cell(&suspended.kube),
            ended.cell(&ended.kube)
        ),
        value: format!(
            "p99 {} (the gateway after the watch: p50 {} / p99 {})",
            dur(p99),
            dur(percentile(&suspended.added, 0.5)),
            dur(percentile(&suspended.added, 0.99))
        ),
        goal: "p99 ≤ 1 s".into(),
        met: Row::judged(p99 <= Duration::from_secs(1) && suspended.complete() && ended.complete()),
    });
    rows.push(steady);
    watching.abort();
    serving.kill().await;
    place.remove().await;
    rows
}

/// When the plain watch first saw each job's Job suspended, and succeeded.
#[derive(Default)]
struct KubeSeen {
    /// job id → its Job's name.
    names: HashMap<String, String>,
    suspended: HashMap<String, Instant>,
    succeeded: HashMap<String, Instant>,
}

/// From each change to the gateway's event and to the plain watch's, for one kind of change.
struct Latencies {
    changed: usize,
    gateway: Vec<Duration>,
    kube: Vec<Duration>,
    /// The gateway's event after the plain watch's.
    added: Vec<Duration>,
    missed: usize,
    wrong: usize,
}

impl Latencies {
    fn of(
        changed: &HashMap<String, Instant>,
        gateway: impl Fn(&str, Instant) -> Option<Instant>,
        kube: &HashMap<String, Instant>,
        other_ends: &HashMap<String, String>,
    ) -> Self {
        let mut l = Latencies {
            changed: changed.len(),
            gateway: Vec::new(),
            kube: Vec::new(),
            added: Vec::new(),
            missed: 0,
            wrong: 0,
        };
        for (id, t) in changed {
            if other_ends.contains_key(id) {
                l.wrong += 1;
            }
            match (gateway(id, *t), kube.get(id)) {
                (Some(g), Some(k)) => {
                    l.gateway.push(g.saturating_duration_since(*t));
                    l.kube.push(k.saturating_duration_since(*t));
                    l.added.push(g.saturating_duration_since(*k));
                }
                _ => l.missed += 1,
            }
        }
        for v in [&mut l.gateway, &mut l.kube, &mut l.added] {
            v.sort();
        }
        l
    }

    fn cell(&self, v: &[Duration]) -> String {
        format!(
            "p50 {} / p99 {}",
            dur(percentile(v, 0.5)),
            dur(percentile(v, 0.99))
        )
    }

    fn complete(&self) -> bool {
        self.missed == 0 && self.wrong == 0 && !self.gateway.is_empty()
    }

    fn failures(&self) -> String {
        if self.missed + self.wrong == 0 {
            String::new()
        } else {
            format!(
                "; {} not seen within 120 s, {} ended otherwise",
                self.missed, self.wrong
            )
        }
    }
}

/// Every pod of the target, by the job id its labels name.
async fn pods_by_job(pods: &Api<Pod>) -> HashMap<String, Pod> {
    let mut by = HashMap::new();
    let mut lp = ListParams::default()
        .labels(&format!("mlgw.dev/target={TARGET}"))
        .limit(500);
    loop {
        let page = pods.list(&lp).await.unwrap();
        for p in page.items {
            if let Some(id) = job_id(p.metadata.labels.as_ref()) {
                by.insert(id, p);
            }
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    by
}
