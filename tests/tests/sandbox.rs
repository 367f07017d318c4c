//! A misbehaving plugin fails its own call with a clear status, never the gateway: the hostile
//! fixture loops, bombs memory, traps around a host call and reaches for capabilities it was
//! not granted, while a well-behaved target keeps working beside it.

use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::*;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

async fn gateway() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
default_target = "local"

[limits]
call_timeout_ms = 2000
memory_mib = 32

[plugins]
hostile = "{}"

[targets.local]
plugin = "local"
[targets.local.grants.process]

[targets.hostile]
plugin = "hostile"
"#,
        mlgw_plugin_artifacts::HOSTILE_PATH
    );
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(&config)).await;
    (dir, gw)
}

fn named(behaviour: &str) -> pb::TrainingJobSpec {
    let mut s = spec(&["irrelevant"]);
    s.name = behaviour.into();
    s
}

#[tokio::test]
async fn each_misbehaviour_ends_in_its_own_status_while_others_are_served() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;

    // An infinite loop runs into the deadline while a local job, submitted at the same
    // time, runs to success.
    let mut c2 = c.clone();
    let (looped, good) = tokio::join!(submit(&mut c, "hostile", named("loop")), async move {
        let j = submit(&mut c2, "local", spec(&["true"]))
            .await
            .expect("local submit");
        wait_job(&mut c2, &j.id, Duration::from_secs(60)).await
    });
    let err = looped.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(
        err.message().contains("target hostile"),
        "{}",
        err.message()
    );
    assert_eq!(state(&good), pb::JobState::Succeeded, "{}", good.message);

    let err = submit(&mut c, "hostile", named("memory"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("target hostile") && err.message().contains("32 MiB"),
        "{}",
        err.message()
    );

    let err = submit(&mut c, "hostile", named("trap-in-host-call"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{}", err.message());
    assert!(
        err.message().contains("target hostile"),
        "{}",
        err.message()
    );

    let err = submit(&mut c, "hostile", named("panic")).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{}", err.message());

    let err = submit(&mut c, "hostile", named("kube")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("kube"), "{}", err.message());

    let err = submit(&mut c, "hostile", named("process"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("process"), "{}", err.message());

    // The gateway is still whole: targets answer, the good job's record is intact, and the
    // hostile calls left nothing behind.
    let targets = TargetServiceClient::new(gw.channel().await)
        .list(pb::ListTargetsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(targets.targets.len(), 2);
    let jobs = c
        .list(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jobs.jobs.len(), 1);
    assert_eq!(jobs.jobs[0].id, good.id);
    let j = submit(&mut c, "local", spec(&["true"])).await.unwrap();
    assert_eq!(
        state(&wait_job(&mut c, &j.id, Duration::from_secs(60)).await),
        pb::JobState::Succeeded
    );
}

#[tokio::test]
async fn unsupported_features_are_refused_before_the_plugin_is_called() {
    let (_d, gw) = gateway().await;
    // The hostile fixture serves but has no traffic splitting. Its validate-endpoint would
    // refuse this model_uri (not a route) with INVALID_ARGUMENT, so UNIMPLEMENTED also shows
    // the plugin was never asked.
    let err = gw
        .serving()
        .await
        .deploy(pb::DeployRequest {
            target: "hostile".into(),
            spec: Some(pb::EndpointSpec {
                name: "m".into(),
                model_uri: "file:///m".into(),
                model_format: "sklearn".into(),
                canary_percent: Some(10),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{}", err.message());
    assert!(err.message().contains("canary"), "{}", err.message());
}
