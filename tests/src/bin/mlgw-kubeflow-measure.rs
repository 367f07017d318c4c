//! Issue 10's two figures for a `kubeflow` target, measured in one run against the test
//! control plane: the time from Submit to the first Running event on Watch, and the API
//! requests the gateway makes for one running job in a minute (the API server's
//! `apiserver_request_total`, read with the admin kubeconfig before and after; the metric has
//! no user label, so it is filtered by resource and verb). A measurement, not a check.
//!
//! `mlgw-kubeflow-measure [--gateway PATH] [--seconds N]`; the cluster from
//! `$MLGW_TEST_KUBECONFIG` or `tests/cluster/up`, the gateway binary `mlgw-under-test` beside
//! this one unless `--gateway` names another.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mlgw::api::pb;
use mlgw_tests::cluster::{Cluster, cluster};
use mlgw_tests::*;

const NS: &str = "team-a";
const KINDS: &str = r#"["kubeflow.org/v1/PyTorchJob", "batch/v1/Job", "v1/Pod"]"#;

/// Follows Watch from submission to the first `running` event; the time it took.
async fn time_to_running(
    t: &mut TrainingServiceClient<tonic::transport::Channel>,
    id: &str,
    submitted: Instant,
) -> Duration {
    let mut s = t
        .watch(pb::WatchJobRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(ev) = s.next().await {
            let j = ev.expect("watch event").job.expect("job");
            match state(&j) {
                pb::JobState::Running => return submitted.elapsed(),
                pb::JobState::Pending => {}
                other => panic!("the job ended {other:?} before it ran: {j:?}"),
            }
        }
        panic!("the watch ended before the job ran")
    })
    .await
    .expect("no running event within 120 s")
}

/// `apiserver_request_total` for the requests the plugin makes (GET of PyTorchJobs, LIST of
/// pods, pod logs), summed over every other label.
async fn request_counts(c: &Cluster) -> (f64, f64, f64) {
    // The harness's own kubectl, beside the admin kubeconfig (tests/cluster/up links it).
    let kubectl = c.admin.parent().unwrap().join("bin/kubectl");
    let out = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&c.admin)
        .args(["get", "--raw", "/metrics"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut out = (0.0, 0.0, 0.0);
    for l in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let has = |kv: &str| l.contains(kv);
        let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap_or(0.0);
        if has(r#"resource="pytorchjobs""#) && has(r#"verb="GET""#) && has(r#"subresource="""#) {
            out.0 += v;
        }
        if has(r#"resource="pods""#) && has(r#"verb="LIST""#) {
            out.1 += v;
        }
        if has(r#"resource="pods""#) && has(r#"subresource="log""#) {
            out.2 += v;
        }
    }
    out
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut gateway_bin = std::env::current_exe()
        .unwrap()
        .with_file_name("mlgw-under-test");
    let mut seconds = 60u64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--gateway" => gateway_bin = PathBuf::from(args.next().expect("--gateway PATH")),
            "--seconds" => seconds = args.next().expect("--seconds N").parse().unwrap(),
            other => panic!("unknown argument {other}; see the file's header"),
        }
    }
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    // As an operator would run it: pods read every pod_check_seconds' default (10 s).
    let config = format!(
        r#"
default_target = "kubeflow"
[targets.kubeflow]
plugin = "kubeflow"
settings = {{ image = "python:3.12", pod_annotations = {{ "mlgw.dev/fake-duration" = "10m" }} }}
[targets.kubeflow.grants.kube]
kubeconfig = "{}"
namespaces = ["{NS}"]
kinds = {KINDS}
"#,
        c.gateway.display()
    );
    let gw = Gateway::start(
        gateway_bin.to_str().unwrap(),
        &dir.path().join("data"),
        Some(&config),
    )
    .await;
    let mut t = gw.training().await;
    let submitted = Instant::now();
    let job = submit(&mut t, "kubeflow", spec(&["python", "train.py"]))
        .await
        .unwrap();
    let to_running = time_to_running(&mut t, &job.id, submitted).await;
    let before = request_counts(c).await;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = request_counts(c).await;
    let minutes = window.elapsed().as_secs_f64() / 60.0;
    println!(
        "submit -> first Running event: {:.2} s; over {:.2} min of one running job: \
         {:.0} GET pytorchjobs, {:.0} LIST pods, {:.0} pod logs per minute",
        to_running.as_secs_f64(),
        minutes,
        (after.0 - before.0) / minutes,
        (after.1 - before.1) / minutes,
        (after.2 - before.2) / minutes,
    );
    t.cancel(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let done = wait_job(&mut t, &job.id, Duration::from_secs(90)).await;
    assert_eq!(state(&done), pb::JobState::Cancelled);
}
