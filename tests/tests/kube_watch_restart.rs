//! The kube watch cache when it loses its watch (issue 12: "a cache that loses its watch
//! resyncs and misses no terminal state"). A test binary of its own: it stops and starts the
//! test control plane's API server (tests/cluster/apiserver), which every test sharing its
//! process would feel; its two tests take turns.
//!
//! In the first, the job ends while the gateway's API server is down, written through a second
//! API server of the same control plane (same etcd) that the gateway does not know, as the
//! replica of an HA control plane keeps serving while one restarts. etcd is then compacted, so
//! the gateway's watch cannot resume from where it stopped and nothing replays the change as
//! an event: only the cache's relist can find it, and only its waking every record it holds
//! makes the reconciler look, with the poll at one hour.
//!
//! The second covers what a restarting API server also does: until its RBAC caches have
//! synced it refuses every watch with 403. A refused watch must be asked again, not given up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use mlgw::api::pb;
use mlgw_tests::cluster::{Cluster, cluster};
use mlgw_tests::*;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const NS: &str = "team-a";
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A kubeflow target in `namespace` whose records only the watch's events move: the poll and
/// the resync are at one hour.
fn config(c: &Cluster, namespace: &str, duration: &str) -> String {
    format!(
        r#"default_target = "kubeflow"
[limits]
reconcile_interval_ms = 3600000
kube_resync_ms = 3600000
[targets.kubeflow]
plugin = "kubeflow"
settings = {{ image = "python:3.12", pod_annotations = {{ "mlgw.dev/fake-duration" = "{duration}" }} }}
[targets.kubeflow.grants.kube]
kubeconfig = "{}"
namespaces = ["{namespace}"]
kinds = ["kubeflow.org/v1/PyTorchJob", "v1/Pod"]
"#,
        c.gateway.display()
    )
}

fn state_dir(c: &Cluster) -> PathBuf {
    c.admin.parent().unwrap().to_path_buf()
}

/// `tests/cluster/apiserver stop|start` on this cluster.
fn apiserver(state: &Path, what: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/apiserver");
    let out = std::process::Command::new(&script)
        .arg(what)
        .env("MLGW_CLUSTER_STATE", state)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "{} {what} failed", script.display());
}

/// The cluster's API server stopped until `start` (or the end of the test, however it ends:
/// the later test binaries need it).
struct Stopped {
    state: Option<PathBuf>,
}

impl Stopped {
    fn stop(state: &Path) -> Self {
        apiserver(state, "stop");
        Self {
            state: Some(state.to_path_buf()),
        }
    }

    fn start(mut self) {
        if let Some(s) = self.state.take() {
            apiserver(&s, "start");
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            apiserver(&s, "start");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Another kube-apiserver on the same etcd, on a port only the test knows: the cluster's own
/// command line (`$state/kube-apiserver.cmd`) with its port and audit log changed.
struct OtherApiServer {
    _child: tokio::process::Child,
    port: u16,
}

impl OtherApiServer {
    fn start(state: &Path, dir: &Path) -> Self {
        let cmd = std::fs::read_to_string(state.join("kube-apiserver.cmd"))
            .expect("the cluster's kube-apiserver.cmd (tests/cluster/up writes it)");
        let mut args: Vec<String> = cmd.lines().map(str::to_string).collect();
        let port = free_port();
        let set = |args: &mut Vec<String>, flag: &str, value: String| {
            let i = args
                .iter()
                .position(|a| a == flag)
                .unwrap_or_else(|| panic!("{flag} in kube-apiserver.cmd"));
            args[i + 1] = value;
        };
        set(&mut args, "--secure-port", port.to_string());
        set(
            &mut args,
            "--audit-log-path",
            dir.join("audit.log").display().to_string(),
        );
        let log = std::fs::File::create(dir.join("other-apiserver.log")).unwrap();
        let child = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting the second kube-apiserver");
        Self {
            _child: child,
            port,
        }
    }

    /// The cluster admin, through this API server.
    async fn admin(&self, c: &Cluster) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&c.admin).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        config.cluster_url = format!("https://127.0.0.1:{}", self.port).parse().unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

fn pytorchjobs(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "kubeflow.org".into(),
        version: "v1".into(),
        api_version: "kubeflow.org/v1".into(),
        kind: "PyTorchJob".into(),
        plural: "pytorchjobs".into(),
    };
    Api::namespaced_with(client, NS, &ar)
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The Training Operator's record of a finished job: Running no longer true, Succeeded true,
/// the master counted as succeeded, as it writes them once the master pod has succeeded
/// (exactly, so that once it is back it finds nothing to change).
fn succeeded_status(job: &Value) -> Value {
    let t = now();
    let name = job["metadata"]["name"].as_str().unwrap();
    let mut status = job["status"].clone();
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    for c in &mut conditions {
        if c["type"] == "Running" {
            c["status"] = json!("False");
            c["lastUpdateTime"] = json!(t);
            c["lastTransitionTime"] = json!(t);
        }
    }
    conditions.push(json!({
        "type": "Succeeded",
        "status": "True",
        "reason": "PyTorchJobSucceeded",
        "message": format!("PyTorchJob {NS}/{name} successfully completed."),
        "lastUpdateTime": t,
        "lastTransitionTime": t,
    }));
    status["conditions"] = json!(conditions);
    status["replicaStatuses"]["Master"]["active"] = json!(0);
    status["replicaStatuses"]["Master"]["succeeded"] = json!(1);
    status["completionTime"] = json!(t);
    json!({ "status": status })
}

/// What KWOK writes when a pod's fake duration ends (tests/cluster/kwok-stages.yaml).
fn pod_succeeded(pod: &Value) -> Value {
    let t = now();
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            json!({
                "name": c["name"], "image": c["image"], "ready": false, "restartCount": 0,
                "started": false,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "startedAt": t, "finishedAt": t}},
            })
        })
        .collect();
    json!({"status": {"phase": "Succeeded", "containerStatuses": containers}})
}

/// Compacts etcd at its current revision: every older resourceVersion is gone.
async fn compact_etcd(state: &Path) -> u64 {
    let url = std::fs::read_to_string(state.join("etcd.url"))
        .expect("the cluster's etcd.url (tests/cluster/up writes it)");
    let url = url.trim();
    let http = reqwest::Client::new();
    let status: Value = serde_json::from_str(
        &http
            .post(format!("{url}/v3/maintenance/status"))
            .body("{}")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let revision = status["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse::<u64>().ok())
        .expect("etcd's revision");
    let r = http
        .post(format!("{url}/v3/kv/compaction"))
        .body(json!({"revision": revision.to_string(), "physical": true}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "compacting etcd: {r:?}");
    revision
}

#[tokio::test]
async fn a_job_that_ends_while_the_api_server_is_down_is_seen_after_it_returns() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let cluster_state = state_dir(c);
    let dir = tempfile::tempdir().unwrap();
    // Started first: it becomes ready while the job starts.
    let other = OtherApiServer::start(&cluster_state, dir.path());
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(&config(c, NS, "10m"))).await;
    let mut t = gw.training().await;
    let job = submit(&mut t, "kubeflow", spec(&["python", "-c", "print(1)"]))
        .await
        .unwrap();
    // With the poll at one hour, running at all means the watch delivers this job's events.
    let get = |t: &TrainingServiceClient<_>| {
        let mut t = t.clone();
        let id = job.id.clone();
        async move { t.get(pb::GetJobRequest { id }).await.unwrap().into_inner() }
    };
    wait_for(Duration::from_secs(90), "the job to run", || async {
        (state(&get(&t).await) == pb::JobState::Running).then_some(())
    })
    .await;

    let admin = other.admin(c).await;
    let jobs = pytorchjobs(admin.clone());
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin.clone(), NS);
    let name = wait_for(Duration::from_secs(60), "the second API server", || {
        let jobs = jobs.clone();
        let id = job.id.clone();
        async move {
            let l = jobs
                .list(&ListParams::default().labels(&format!("mlgw.dev/job-id={id}")))
                .await
                .ok()?;
            l.items.first().and_then(|o| o.metadata.name.clone())
        }
    })
    .await;

    let down = Stopped::stop(&cluster_state);
    // While it is down the job ends: its pod succeeds and the operator records it.
    let pod = pods
        .list(&ListParams::default().labels(&format!("mlgw.dev/job-id={}", job.id)))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("the job's pod");
    let pod_value = serde_json::to_value(&pod).unwrap();
    pods.patch_status(
        pod.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(pod_succeeded(&pod_value)),
    )
    .await
    .unwrap();
    let stored = serde_json::to_value(jobs.get(&name).await.unwrap()).unwrap();
    jobs.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(succeeded_status(&stored)),
    )
    .await
    .unwrap();
    compact_etcd(&cluster_state).await;
    drop(other);
    // The gateway could not have seen it.
    assert_eq!(state(&get(&t).await), pb::JobState::Running);

    down.start();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let j = get(&t).await;
            if state(&j) != pb::JobState::Running {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the job's end was missed: still running a minute after the API server returned; the gateway's log:\n{}",
            gw.log()
        )
    });
    assert_eq!(
        state(&done),
        pb::JobState::Succeeded,
        "the job ended while the API server was down: {}",
        done.message
    );
}

/// The gateway's Role in a namespace of the test's own: what the kubeflow target needs, with
/// `watch` only if `watch`.
fn role(namespace: &str, watch: bool) -> Role {
    let verbs = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        if watch {
            v.push("watch".into());
        }
        Some(v)
    };
    serde_json::from_value(json!({
        "metadata": {"name": "mlgw-gateway", "namespace": namespace},
        "rules": [
            {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"],
             "verbs": verbs(&["get", "list", "create", "patch", "delete"])},
            {"apiGroups": [""], "resources": ["pods"], "verbs": verbs(&["get", "list"])},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        ]
    }))
    .unwrap()
}

/// Whether the API server's audit log (tests/cluster/up) has refused a watch of `resource` in
/// `namespace` to the gateway.
fn watch_refused(state: &Path, namespace: &str, resource: &str) -> bool {
    let log = std::fs::read_to_string(state.join("audit.log"))
        .expect("the API server's audit log (tests/cluster/up writes it)");
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|e| {
            e["verb"] == "watch"
                && e["user"]["username"] == "mlgw-gateway"
                && e["objectRef"]["namespace"] == namespace
                && e["objectRef"]["resource"] == resource
                && e["responseStatus"]["code"] == 403
        })
}

#[tokio::test]
async fn a_watch_refused_at_first_is_taken_up_once_allowed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let cluster_state = state_dir(c);
    let admin = mlgw_tests::cluster::client(&c.admin).await;
    let ns = mlgw_tests::cluster::unique("watch-rbac");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
    roles
        .create(&PostParams::default(), &role(&ns, false))
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "mlgw-gateway", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": "mlgw-gateway"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": "mlgw-gateway"}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(&config(c, &ns, "3s"))).await;
    let mut t = gw.training().await;
    let job = submit(&mut t, "kubeflow", spec(&["python", "-c", "print(1)"]))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the API server to refuse the gateway's watch",
        || async { watch_refused(&cluster_state, &ns, "pytorchjobs").then_some(()) },
    )
    .await;
    roles
        .replace("mlgw-gateway", &PostParams::default(), &role(&ns, true))
        .await
        .unwrap();
    // Only the watch's events move the job: once allowed, it must run to its end.
    let done = tokio::time::timeout(
        Duration::from_secs(90),
        wait_job(&mut t, &job.id, Duration::from_secs(120)),
    )
    .await
    .unwrap_or_else(|_| panic!("the job never ended; the gateway's log:\n{}", gw.log()));
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    let _ = namespaces.delete(&ns, &Default::default()).await;
}
