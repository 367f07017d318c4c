//! Retention through the real gateway binary: with `[store] retention_seconds`, a finished job
//! is pruned once it has been over for that long (its record, its events in Watch-all's
//! replay, its idempotency key), while a job that is still running stays however old.

use std::time::Duration;

use futures::StreamExt;
use mlgw::api::pb;
use mlgw_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const CONFIG: &str = "[store]\nretention_seconds = 1\nprune_interval_ms = 100\n\
                      [targets.local]\nplugin = \"local\"\n[targets.local.grants.process]\n";

async fn submit_keyed(
    c: &mut TrainingServiceClient<tonic::transport::Channel>,
    command: &[&str],
    key: &str,
) -> pb::Job {
    c.submit(pb::SubmitJobRequest {
        target: "local".into(),
        spec: Some(spec(command)),
        idempotency_key: key.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn wait_running(c: &TrainingServiceClient<tonic::transport::Channel>, id: &str) {
    wait_for(Duration::from_secs(120), "the job to run", || {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            let j = c.get(pb::GetJobRequest { id }).await.ok()?.into_inner();
            (state(&j) == pb::JobState::Running).then_some(())
        }
    })
    .await
}

#[tokio::test]
async fn finished_jobs_past_their_retention_are_pruned_and_running_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(CONFIG)).await;
    let mut c = gw.training().await;
    let running = submit(&mut c, "local", spec(&["sleep", "600"]))
        .await
        .unwrap();
    let done = submit_keyed(&mut c, &["true"], "nightly").await;
    assert_eq!(
        submit_keyed(&mut c, &["true"], "nightly").await.id,
        done.id,
        "while the job is kept, its key finds it"
    );
    let ended = wait_job(&mut c, &done.id, Duration::from_secs(120)).await;
    assert_eq!(state(&ended), pb::JobState::Succeeded);
    wait_running(&c, &running.id).await;

    wait_for(
        Duration::from_secs(60),
        "the finished job to be pruned",
        || {
            let mut c = c.clone();
            let id = done.id.clone();
            async move {
                match c.get(pb::GetJobRequest { id }).await {
                    Err(s) if s.code() == tonic::Code::NotFound => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
    // Running for longer than the retention by now, and kept.
    let kept = c
        .get(pb::GetJobRequest {
            id: running.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&kept), pb::JobState::Running);

    // Watch-all from the start replays what is kept, in order, and nothing of the pruned job:
    // everything up to a job submitted after the pruning.
    let marker = submit(&mut c, "local", spec(&["sleep", "600"]))
        .await
        .unwrap();
    let mut all = c
        .watch(pb::WatchJobRequest {
            after_feed_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut replay = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while !replay.iter().any(|(_, id)| *id == marker.id) {
            let ev = all.next().await.expect("the stream ended").unwrap();
            replay.push((ev.feed_sequence, ev.job.unwrap().id));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the replay did not reach the marker job: {replay:?}"));
    assert!(replay.windows(2).all(|w| w[0].0 < w[1].0), "{replay:?}");
    assert!(
        replay.iter().all(|(_, id)| *id != done.id),
        "the pruned job's changes are gone: {replay:?}"
    );
    assert!(replay.iter().any(|(_, id)| *id == running.id), "{replay:?}");

    // Its idempotency key went with it: the same key submits a new job.
    let again = submit_keyed(&mut c, &["true"], "nightly").await;
    assert_ne!(again.id, done.id);

    for id in [running.id, marker.id] {
        c.cancel(pb::CancelJobRequest { id: id.clone() })
            .await
            .unwrap();
        wait_job(&mut c, &id, Duration::from_secs(120)).await;
    }
}
