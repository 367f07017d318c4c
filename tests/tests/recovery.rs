//! The reconciler keeps each target to itself and recovers endpoints the way it recovers
//! jobs: a slow target only slows its own records, a target that is not ready is asked again
//! with backoff, an endpoint whose deploy was cut off by a crash is deployed after the restart,
//! and a readiness blip degrades an endpoint instead of failing it.

use std::time::{Duration, Instant};

use mlgw::api::pb;
use mlgw_tests::*;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

async fn gateway(limits: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
default_target = "local"

[limits]
{limits}

[plugins]
hostile = "{}"

[targets.local]
plugin = "local"
[targets.local.grants.process]

[targets.hostile]
plugin = "hostile"
settings = {{ status_delay_ms = 1900 }}
[targets.hostile.routes]
cidrs = ["127.0.0.1/32"]
"#,
        mlgw_plugin_artifacts::HOSTILE_PATH
    );
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(&config)).await;
    (dir, gw)
}

fn named(name: &str) -> pb::TrainingJobSpec {
    let mut s = spec(&["irrelevant"]);
    s.name = name.into();
    s
}

fn endpoint_spec(name: &str, route: serde_json::Value) -> pb::EndpointSpec {
    pb::EndpointSpec {
        name: name.into(),
        model_uri: route.to_string(),
        model_format: "sklearn".into(),
        ..Default::default()
    }
}

async fn deploy(
    c: &mut ServingServiceClient<Channel>,
    spec: pb::EndpointSpec,
) -> Result<pb::Endpoint, tonic::Status> {
    c.deploy(pb::DeployRequest {
        target: "hostile".into(),
        spec: Some(spec),
        idempotency_key: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

fn is(state: pb::EndpointState) -> impl Fn(&pb::Endpoint) -> bool {
    move |e| e.state == state as i32
}

fn log_count(gw: &Gateway, needle: &str) -> usize {
    gw.log().lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn a_slow_target_only_slows_its_own_records() {
    let (_d, gw) = gateway("reconcile_interval_ms = 200\ncall_timeout_ms = 2000").await;
    let mut c = gw.training().await;
    // 40 jobs whose every status call takes 1.9 s: one sweep of them, 8 at a time, takes
    // about 10 s, and with one reconciler for every target a local job would wait for it.
    for _ in 0..40 {
        submit(&mut c, "hostile", named("slow-status"))
            .await
            .unwrap();
    }
    // Local jobs one after another beside the slow sweep: with one sweep for all targets,
    // each would wait for the slow target's calls (the first perhaps by luck not, the next
    // ones for a whole sweep).
    for _ in 0..3 {
        let started = Instant::now();
        let j = submit(&mut c, "local", spec(&["true"])).await.unwrap();
        let done = wait_job(&mut c, &j.id, Duration::from_secs(60)).await;
        let took = started.elapsed();
        assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
        assert!(
            took < Duration::from_secs(5),
            "a local job took {took:?} to be seen ending, waiting on the slow target's sweep"
        );
    }
}

#[tokio::test]
async fn a_target_that_is_not_ready_is_asked_again_with_backoff() {
    let (_d, gw) = gateway("reconcile_interval_ms = 50").await;
    let mut c = gw.training().await;
    let j = submit(&mut c, "hostile", named("unavailable"))
        .await
        .unwrap();
    assert_eq!(state(&j), pb::JobState::Pending);
    assert!(j.message.contains("try again later"), "{}", j.message);
    // A window of 3 s: every tick would be 60 attempts; doubling from 100 ms is about 5.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = log_count(&gw, "unavailable attempt");
    assert!(
        (2..=10).contains(&attempts),
        "{attempts} attempts in 3 s: retried, but backing off"
    );

    // An endpoint whose target is not ready stays creating rather than failing.
    let mut s = gw.serving().await;
    let e = deploy(
        &mut s,
        endpoint_spec(
            "not-yet",
            json!({"url": "http://127.0.0.1:1", "model": "m", "deploy_unavailable": true}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(e.state, pb::EndpointState::Creating as i32);
    assert!(e.message.contains("no capacity"), "{}", e.message);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = s
        .get(pb::GetEndpointRequest { id: e.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.state, pb::EndpointState::Creating as i32, "{}", e.message);
}

#[tokio::test]
async fn an_endpoint_whose_deploy_a_crash_cut_off_is_deployed_after_the_restart() {
    let (_d, mut gw) = gateway("reconcile_interval_ms = 100").await;
    let server = ModelServer::start().await;
    let mut s = gw.serving().await;
    let spec = endpoint_spec(
        "survivor",
        json!({"url": server.url(), "model": "survivor", "deploy_delay_ms": 3000}),
    );
    let mut s2 = s.clone();
    let pending = tokio::spawn(async move { deploy(&mut s2, spec).await });
    // The record is flushed before deploy-endpoint is called, and the plugin says when it is.
    wait_for(Duration::from_secs(30), "the deploy call", || async {
        (log_count(&gw, "deploying mlgw-e") == 1).then_some(())
    })
    .await;
    gw.crash().await;
    assert!(pending.await.unwrap().is_err(), "the deploy was cut off");
    gw.restart().await;
    s = gw.serving().await;

    let list = s
        .list(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.endpoints.len(), 1, "the record survived");
    let id = list.endpoints[0].id.clone();
    let e = wait_endpoint(
        &s,
        &id,
        "the endpoint to be ready",
        is(pb::EndpointState::Ready),
    )
    .await;
    assert!(!e.backend_ref.is_empty());
    // Deployed again under the same backend name, and only once more.
    let names: Vec<String> = gw
        .log()
        .lines()
        .filter_map(|l| {
            l.split("deploying ")
                .nth(1)
                .map(|n| n.trim_matches(|c| c == '"' || c == ' ').to_string())
        })
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], names[1]);
    // Its name stays taken.
    let err = deploy(
        &mut s,
        endpoint_spec("survivor", json!({"url": server.url(), "model": "x"})),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_readiness_blip_degrades_an_endpoint_and_only_a_lasting_one_fails_it() {
    let (_d, gw) = gateway("reconcile_interval_ms = 100\nendpoint_failure_after_ms = 3000").await;
    let server = ModelServer::start().await;
    let mut s = gw.serving().await;
    let e = deploy(
        &mut s,
        endpoint_spec("shaky", json!({"url": server.url(), "model": "shaky"})),
    )
    .await
    .unwrap();
    wait_endpoint(&s, &e.id, "ready", is(pb::EndpointState::Ready)).await;

    server.set_ready(false);
    let d = wait_endpoint(&s, &e.id, "degraded", is(pb::EndpointState::Degraded)).await;
    assert!(d.message.contains("503"), "{}", d.message);
    // Degraded still serves.
    let p = s
        .predict(pb::PredictRequest {
            endpoint: "shaky".into(),
            inputs: vec![pb::InferTensor {
                name: "x".into(),
                datatype: "FP64".into(),
                shape: vec![1],
                fp64_contents: vec![1.0],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("a degraded endpoint takes predictions")
        .into_inner();
    assert_eq!(p.model_name, "shaky");
    server.set_ready(true);
    wait_endpoint(&s, &e.id, "ready again", is(pb::EndpointState::Ready)).await;

    server.set_ready(false);
    let f = wait_endpoint(&s, &e.id, "failed", is(pb::EndpointState::Failed)).await;
    assert!(
        f.message.contains("has not been ready for"),
        "{}",
        f.message
    );
}

#[tokio::test]
async fn an_update_without_a_canary_percent_keeps_the_current_one() {
    let (_d, gw) = gateway("reconcile_interval_ms = 100").await;
    let server = ModelServer::start().await;
    let mut s = gw.serving().await;
    let mut spec = endpoint_spec("split", json!({"url": server.url(), "model": "split"}));
    spec.canary_percent = Some(20);
    let e = deploy(&mut s, spec).await.unwrap();
    let canary = |e: &pb::Endpoint| e.spec.as_ref().unwrap().canary_percent;
    assert_eq!(canary(&e), Some(20));
    let update = |model: &str, canary_percent: Option<u32>| pb::UpdateEndpointRequest {
        id: e.id.clone(),
        spec: Some(pb::EndpointSpec {
            model_uri: json!({"url": server.url(), "model": model}).to_string(),
            canary_percent,
            ..Default::default()
        }),
    };
    let u = s.update(update("split", None)).await.unwrap().into_inner();
    assert_eq!(
        canary(&u),
        Some(20),
        "an omitted canary percent keeps the current one"
    );
    let u = s
        .update(update("split", Some(50)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canary(&u), Some(50));
    let u = s
        .update(update("split", Some(100)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canary(&u), None, "100 is a full rollout");
}

#[tokio::test]
async fn a_cancel_outlives_a_restart_within_the_grace_period() {
    let (_d, mut gw) = gateway("reconcile_interval_ms = 200").await;
    let mut c = gw.training().await;
    // A job that ignores SIGTERM: only the SIGKILL after the grace period stops it.
    let j = submit(
        &mut c,
        "local",
        spec(&["/bin/sh", "-c", "trap '' TERM; sleep 600"]),
    )
    .await
    .unwrap();
    let pid: u32 = wait_for(Duration::from_secs(30), "the job to run", || {
        let mut c = c.clone();
        let id = j.id.clone();
        async move {
            let j = c.get(pb::GetJobRequest { id }).await.ok()?.into_inner();
            (state(&j) == pb::JobState::Running)
                .then(|| j.backend_ref.strip_prefix("pid ")?.parse().ok())
                .flatten()
        }
    })
    .await;
    c.cancel(pb::CancelJobRequest { id: j.id.clone() })
        .await
        .unwrap();
    // Down before the grace period (5 s) ends: the SIGKILL it would have sent never is.
    gw.crash().await;
    gw.restart().await;
    let mut c = gw.training().await;
    let done = wait_job(&mut c, &j.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Cancelled, "{}", done.message);
    wait_for(
        Duration::from_secs(10),
        "the job's processes to end",
        || async { process_gone(pid).then_some(()) },
    )
    .await;
}
