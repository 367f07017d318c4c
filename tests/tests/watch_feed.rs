//! Watching every job through the real gateway binary, and the store's durability under load:
//! the change feed replays each change once after a disconnect or a crash, filters apply,
//! and a kill -9 during many concurrent Submits loses no acknowledged job and starts none
//! twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mlgw::api::pb;
use mlgw_tests::*;
use tonic::Streaming;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const LOCAL: &str = "[targets.local]\nplugin = \"local\"\n[targets.local.grants.process]\n";

async fn watch_all(gw: &Gateway, req: pb::WatchJobRequest) -> Streaming<pb::JobEvent> {
    gw.training().await.watch(req).await.unwrap().into_inner()
}

/// (feed sequence, job id, state) of each event until `until` says stop, bounded.
async fn take_until(
    s: &mut Streaming<pb::JobEvent>,
    what: &str,
    until: impl Fn(&[(u64, String, i32)]) -> bool,
) -> Vec<(u64, String, i32)> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while !until(&got) {
            let ev = s
                .next()
                .await
                .unwrap_or_else(|| panic!("{what}: the stream ended"))
                .unwrap();
            got.push((ev.feed_sequence, ev.job.unwrap().id, ev.state));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 120 s; got {got:?}"));
    got
}

const SUCCEEDED: i32 = pb::JobState::Succeeded as i32;

#[tokio::test]
async fn watching_every_job_resumes_from_a_feed_sequence_with_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(BIN, &dir.path().join("data"), Some(LOCAL)).await;
    let mut live = watch_all(&gw, Default::default()).await;
    let mut c = gw.training().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&mut c, "local", spec(&["true"])).await.unwrap().id);
    }
    let all_done =
        |got: &[(u64, String, i32)]| got.iter().filter(|e| e.2 == SUCCEEDED).count() == ids.len();
    let seen = take_until(&mut live, "live changes", all_done).await;
    drop(live);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    for id in &ids {
        let states: Vec<i32> = seen.iter().filter(|e| &e.1 == id).map(|e| e.2).collect();
        assert_eq!(
            states.first(),
            Some(&(pb::JobState::Pending as i32)),
            "{seen:?}"
        );
        assert_eq!(states.last(), Some(&SUCCEEDED), "{seen:?}");
    }
    let last = seen.last().unwrap().0;

    // A client that saw up to the third change resumes after it and gets the rest, once.
    let mut resumed = watch_all(
        &gw,
        pb::WatchJobRequest {
            after_feed_sequence: Some(seen[2].0),
            ..Default::default()
        },
    )
    .await;
    let rest = take_until(&mut resumed, "the resumed watch", |g| {
        g.last().is_some_and(|e| e.0 == last)
    })
    .await;
    assert_eq!(rest, seen[3..]);

    // The feed is on disk: after a kill -9 the whole of it replays, and filters apply.
    gw.restart().await;
    let mut replay = watch_all(
        &gw,
        pb::WatchJobRequest {
            after_feed_sequence: Some(0),
            target: "local".into(),
            ..Default::default()
        },
    )
    .await;
    let again = take_until(&mut replay, "the replay", |g| {
        g.last().is_some_and(|e| e.0 == last)
    })
    .await;
    assert_eq!(again, seen);
    let mut finished = watch_all(
        &gw,
        pb::WatchJobRequest {
            after_feed_sequence: Some(0),
            states: vec![SUCCEEDED],
            ..Default::default()
        },
    )
    .await;
    let ends = take_until(&mut finished, "the succeeded changes", |g| g.len() == 3).await;
    let want: Vec<_> = seen.iter().filter(|e| e.2 == SUCCEEDED).cloned().collect();
    assert_eq!(ends, want);

    // Watching from now sees the next change and nothing before it.
    let mut from_now = watch_all(&gw, Default::default()).await;
    let mut c = gw.training().await;
    let next = submit(&mut c, "local", spec(&["true"])).await.unwrap();
    let first = take_until(&mut from_now, "a change after now", |g| !g.is_empty()).await;
    assert_eq!(first[0].1, next.id);
    assert!(first[0].0 > last);
}

/// Submits acknowledged before a kill -9 are on disk, and the restarted gateway hands each job
/// to its target at most once (a job recorded but not yet handed over is handed over by the
/// reconciler, never a second time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_submits_loses_no_acknowledged_job_and_starts_none_twice() {
    const JOBS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let mut gw = Gateway::start(BIN, &dir.path().join("data"), Some(LOCAL)).await;
    let c = gw.training().await;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cmd = format!("basename \"$PWD\" >> {}", starts.display());
    let mut submits = tokio::task::JoinSet::new();
    for _ in 0..JOBS {
        let (mut c, acked, cmd) = (c.clone(), acked_tx.clone(), cmd.clone());
        let refused = refused.clone();
        submits.spawn(async move {
            match submit(&mut c, "local", spec(&["sh", "-c", &cmd])).await {
                Ok(j) => {
                    let _ = acked.send(j.id);
                }
                Err(e) => refused.lock().unwrap().push(e),
            }
        });
    }
    drop(acked_tx);
    // Kill it mid-flight: once a third of the Submits are acknowledged.
    let mut acked = Vec::new();
    while acked.len() < JOBS / 3 {
        let Some(id) = acked_rx.recv().await else {
            let refused = refused.lock().unwrap();
            let log = gw.log();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "the Submits stopped early: {} acknowledged, {} refused before the kill, the \
                 first: {:?}\nthe gateway log's last lines:\n{}",
                acked.len(),
                refused.len(),
                refused.first(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        };
        acked.push(id);
    }
    gw.crash().await;
    while submits.join_next().await.is_some() {}
    while let Ok(id) = acked_rx.try_recv() {
        acked.push(id);
    }
    assert!(
        acked.len() < JOBS,
        "the kill came after every Submit: nothing tested"
    );

    gw.spawn().await;
    let mut c = gw.training().await;
    for id in &acked {
        let done = wait_job(&mut c, id, Duration::from_secs(300)).await;
        assert_eq!(
            state(&done),
            pb::JobState::Succeeded,
            "{id}: {}",
            done.message
        );
    }
    // Every job the store holds (acknowledged or not) ends, then the starts are counted.
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list(pb::ListJobsRequest {
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for j in &all {
        wait_job(&mut c, &j.id, Duration::from_secs(300)).await;
    }
    let text = std::fs::read_to_string(&starts).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let distinct: HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(distinct.len(), lines.len(), "a job ran twice");
    let stored: HashSet<&str> = all.iter().map(|j| j.id.as_str()).collect();
    for id in &acked {
        assert!(stored.contains(id.as_str()), "acknowledged {id} was lost");
    }
    eprintln!(
        "{} acknowledged before the kill settled, {} stored, {} ran",
        acked.len(),
        all.len(),
        lines.len()
    );
}
