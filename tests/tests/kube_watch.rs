//! The kube capability's watch cache against the real control plane (tests/cluster) and the
//! real Training Operator: a job's status follows the API server's events with the poll
//! switched off, and a running job costs the API server nothing while nothing changes.

use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::cluster::{Cluster, cluster};
use mlgw_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const KINDS: &str = r#"["kubeflow.org/v1/PyTorchJob", "v1/Pod"]"#;
/// The request counters are the whole API server's: the tests here take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(c: &Cluster, limits: &str, duration: &str, metrics_port: u16) -> String {
    format!(
        r#"default_target = "kubeflow"
[limits]
{limits}
[observability]
metrics_listen = "127.0.0.1:{metrics_port}"
[targets.kubeflow]
plugin = "kubeflow"
settings = {{ image = "python:3.12", pod_check_seconds = 1, pod_annotations = {{ "mlgw.dev/fake-duration" = "{duration}" }} }}
[targets.kubeflow.grants.kube]
kubeconfig = "{}"
namespaces = ["team-a"]
kinds = {KINDS}
"#,
        c.gateway.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_jobs_status_follows_events_with_the_poll_switched_off() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    // One poll an hour: only the watch's events can move the job along.
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some(&config(
            c,
            "reconcile_interval_ms = 3600000\nkube_resync_ms = 3600000",
            "3s",
            free_port(),
        )),
    )
    .await;
    let mut t = gw.training().await;
    let job = submit(&mut t, "kubeflow", spec(&["python", "-c", "print(1)"]))
        .await
        .unwrap();
    let done = wait_job(&mut t, &job.id, Duration::from_secs(90)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
}

/// The API server's request counters for what a status poll costs: GETs of PyTorchJobs and
/// LISTs of pods (the metric has no user label; nothing else in the test cluster makes these).
async fn poll_requests(c: &Cluster) -> f64 {
    let kubectl = c.admin.parent().unwrap().join("bin/kubectl");
    let out = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&c.admin)
        .args(["get", "--raw", "/metrics"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            (l.contains(r#"resource="pytorchjobs""#)
                && l.contains(r#"verb="GET""#)
                && l.contains(r#"subresource="""#))
                || (l.contains(r#"resource="pods""#) && l.contains(r#"verb="LIST""#))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap_or(0.0))
        .sum()
}

async fn sweeps(port: u16) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("mlgw_reconcile_sweep_duration_seconds_count{")
                && l.contains(r#"target="kubeflow""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_running_job_costs_no_api_requests_while_nothing_changes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Polled every 100 ms without the cache: ten GETs a second for this one job.
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some(&config(c, "reconcile_interval_ms = 100", "10m", port)),
    )
    .await;
    let mut t = gw.training().await;
    let job = submit(&mut t, "kubeflow", spec(&["python", "-c", "print(1)"]))
        .await
        .unwrap();
    wait_for(Duration::from_secs(60), "the job to run", || {
        let mut t = t.clone();
        let id = job.id.clone();
        async move {
            let j = t.get(pb::GetJobRequest { id }).await.unwrap().into_inner();
            (state(&j) == pb::JobState::Running).then_some(())
        }
    })
    .await;
    let before = poll_requests(c).await;
    let swept = sweeps(port).await;
    // Twenty sweeps later (two seconds of polling without the cache)...
    wait_for(
        Duration::from_secs(60),
        "twenty reconcile sweeps",
        || async { (sweeps(port).await >= swept + 20.0).then_some(()) },
    )
    .await;
    let after = poll_requests(c).await;
    assert_eq!(
        after - before,
        0.0,
        "a running job whose objects did not change was read from the API server"
    );
    t.cancel(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let done = wait_job(&mut t, &job.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Cancelled, "{}", done.message);
}
