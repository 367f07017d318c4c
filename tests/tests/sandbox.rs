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
    let mut c = gw.training().await;
    // The hostile fixture cannot stop a job. Its job reached the backend (a backend ref), so
    // cancelling needs the plugin, and the gateway refuses before asking it.
    let j = submit(&mut c, "hostile", named("behaves")).await.unwrap();
    assert_eq!(j.backend_ref, "ok");
    let err = c
        .cancel(pb::CancelJobRequest { id: j.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{}", err.message());
    assert!(
        err.message().contains("training-cancel"),
        "{}",
        err.message()
    );
    let after = c
        .get(pb::GetJobRequest { id: j.id })
        .await
        .unwrap()
        .into_inner();
    assert!(!after.cancel_requested, "nothing was recorded");
}

#[tokio::test]
async fn oversized_answers_fail_their_own_call_and_never_grow_the_store() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;

    // An 8 MiB backend-ref name: the submit fails, readably, and the job says why.
    let err = submit(&mut c, "hostile", named("huge-ref"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{}", err.message());
    assert!(
        err.message().contains("target hostile")
            && err.message().contains("backend-ref name")
            && err.message().contains("limits.max_plugin_text_bytes"),
        "{}",
        err.message()
    );

    // An 8 MiB error text and a 1 MiB field path arrive cut to something a client can read.
    let err = submit(&mut c, "hostile", named("huge-error"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().len() <= 16 * 1024, "{}", err.message().len());
    let err = submit(&mut c, "hostile", named("long-field"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "{}",
        &err.message()[..80]
    );
    let field = err.metadata().get("mlgw-field").expect("the field trailer");
    assert!(field.len() <= 256, "{}", field.len());

    // A 20 MiB status message is refused at the boundary: every List still fits a client,
    // and the job tells why it no longer moves.
    let j = submit(&mut c, "hostile", named("huge-message"))
        .await
        .unwrap();
    let seen = wait_for(Duration::from_secs(30), "the unreadable status", || {
        let mut c = c.clone();
        let id = j.id.clone();
        async move {
            let j = c.get(pb::GetJobRequest { id }).await.ok()?.into_inner();
            j.message.contains("could not be read").then_some(j)
        }
    })
    .await;
    assert!(seen.message.contains("status message"), "{}", seen.message);
    assert!(seen.message.len() < 1024, "{}", seen.message.len());
    let all = c
        .list(pb::ListJobsRequest::default())
        .await
        .expect("an unfiltered list still fits")
        .into_inner();
    assert!(all.jobs.iter().any(|x| x.id == j.id));
    let failed = all
        .jobs
        .iter()
        .find(|x| x.spec.as_ref().unwrap().name == "huge-ref");
    let failed = failed.expect("the huge-ref job is recorded");
    assert_eq!(state(failed), pb::JobState::Failed);
    assert!(failed.backend_ref.is_empty());

    // A log page longer than asked for is refused, not turned into cursors.
    let j = submit(&mut c, "hostile", named("long-log-page"))
        .await
        .unwrap();
    let mut s = c
        .logs(pb::JobLogsRequest {
            id: j.id,
            follow: false,
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    use futures::StreamExt;
    let err = s.next().await.expect("an answer").unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{}", err.message());
    assert!(err.message().contains("asked for"), "{}", err.message());

    // A page shorter than asked for is no end: a plugin cuts pages by its own limits, and a
    // read without follow goes on until a page brings nothing.
    let j = submit(&mut c, "hostile", named("short-log-pages"))
        .await
        .unwrap();
    assert_eq!(
        logs(&mut c, &j.id, false).await,
        ["line 0", "line 1", "line 2"]
    );
}

/// A component that exports none of the world's interfaces is refused when the gateway loads
/// it, naming the plugin, not on the first call that needs an interface.
#[tokio::test]
async fn a_plugin_that_does_not_fit_the_world_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    // The whole binary of an empty component: the magic, then the component-model version.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\x00\x01\x00").unwrap();
    let config = dir.path().join("mlgw.toml");
    std::fs::write(
        &config,
        format!(
            "default_target = \"nothing\"\n[plugins]\nempty = \"{}\"\n[targets.nothing]\nplugin = \"empty\"\n",
            empty.display()
        ),
    )
    .unwrap();
    let mut cfg = mlgw::config::Config::load(&config).unwrap();
    cfg.data_dir = dir.path().join("data");
    let err = match mlgw::server::build(&cfg).await {
        Ok(_) => panic!("a gateway started with a plugin that exports nothing"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("plugin empty does not fit the mlgw:backend world"),
        "{err}"
    );
}
