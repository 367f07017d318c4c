//! The local target end to end: the real gateway binary, the real compiled plugin, real
//! Python processes.

use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::*;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

async fn gateway() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), None).await;
    (dir, gw)
}

#[tokio::test]
async fn a_python_job_runs_and_succeeds_with_its_outputs_and_logs() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;
    let script = r#"
import json, os, pathlib
hp = json.load(open(os.environ["MLGW_HYPERPARAMETERS"]))
print("lr from file", hp["lr"], "from env", os.environ["MLGW_HP_LR"])
out = pathlib.Path(os.environ["MLGW_OUTPUT_DIR"])
(out / "result.txt").write_text("trained " + os.environ["GREETING"])
assert os.environ["SM_MODEL_DIR"] == str(out)
"#;
    let mut s = spec(&[&python(), "-c", script]);
    s.env.insert("GREETING".into(), "hello".into());
    s.hyperparameters.insert("lr".into(), "0.1".into());
    let job = submit(&mut c, "", s).await.unwrap();
    assert_eq!(job.target, "local", "the embedded default target is local");
    let done = wait_job(&mut c, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    assert!(done.finished_at.is_some());
    let out = file_path(&done.output_uri).join("result.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "trained hello");
    let lines = logs(&mut c, &job.id, false).await;
    assert!(
        lines.iter().any(|l| l == "lr from file 0.1 from env 0.1"),
        "{lines:?}"
    );
    // Get and List answer from the store.
    let got = c
        .get(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, done.state);
    let listed = c
        .list(pb::ListJobsRequest {
            state: pb::JobState::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.iter().any(|j| j.id == job.id));
}

#[tokio::test]
async fn a_failing_command_is_failed_with_its_exit_code() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;
    let job = submit(
        &mut c,
        "local",
        spec(&[
            &python(),
            "-c",
            "import sys; print('boom', file=sys.stderr); sys.exit(3)",
        ]),
    )
    .await
    .unwrap();
    let done = wait_job(&mut c, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&done), pb::JobState::Failed);
    assert!(done.message.contains("exit code 3"), "{}", done.message);
    assert!(
        logs(&mut c, &job.id, false)
            .await
            .contains(&"boom".to_string())
    );
    // A program that does not exist fails the same honest way.
    let job = submit(&mut c, "local", spec(&["/nonexistent/program"]))
        .await
        .unwrap();
    let done = wait_job(&mut c, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&done), pb::JobState::Failed);
    assert!(done.message.contains("exit code 127"), "{}", done.message);
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let (dir, gw) = gateway().await;
    let mut c = gw.training().await;
    let pids = dir.path().join("pids");
    // The job starts a grandchild, records both pids, and would run for ten minutes.
    let script = format!(
        r#"
import os, subprocess, time
child = subprocess.Popen(["sleep", "600"])
open("{p}.tmp", "w").write(f"{{os.getpid()}} {{child.pid}}")
os.rename("{p}.tmp", "{p}")
time.sleep(600)
"#,
        p = pids.display()
    );
    let job = submit(&mut c, "local", spec(&[&python(), "-c", &script]))
        .await
        .unwrap();
    let (parent, grandchild) = wait_for(
        Duration::from_secs(30),
        "the job to record its pids",
        || async {
            let s = std::fs::read_to_string(&pids).ok()?;
            let (a, b) = s.split_once(' ')?;
            Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
        },
    )
    .await;
    assert!(!process_gone(parent) && !process_gone(grandchild));
    let running = wait_for(JOB_TIMEOUT, "the job to be running", || {
        let mut c = c.clone();
        let id = job.id.clone();
        async move {
            let j = c.get(pb::GetJobRequest { id }).await.ok()?.into_inner();
            (state(&j) == pb::JobState::Running).then_some(j)
        }
    })
    .await;
    assert!(!running.cancel_requested);
    let cancelled = c
        .cancel(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.cancel_requested);
    let done = wait_job(&mut c, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&done), pb::JobState::Cancelled, "{}", done.message);
    wait_for(
        Duration::from_secs(20),
        "both processes to be gone",
        || async { (process_gone(parent) && process_gone(grandchild)).then_some(()) },
    )
    .await;
    // Cancelling again is harmless; a finished job cannot be cancelled.
    let again = c
        .cancel(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&again), pb::JobState::Cancelled);
    let ok = submit(&mut c, "local", spec(&["true"])).await.unwrap();
    wait_job(&mut c, &ok.id, JOB_TIMEOUT).await;
    let err = c
        .cancel(pb::CancelJobRequest { id: ok.id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_restarted_gateway_tracks_a_running_job_to_its_end() {
    let (dir, mut gw) = gateway().await;
    let mut c = gw.training().await;
    let go = dir.path().join("go");
    let script = format!(
        r#"
import os, time
print("waiting", flush=True)
while not os.path.exists("{go}"):
    time.sleep(0.05)
print("done", flush=True)
"#,
        go = go.display()
    );
    let job = submit(&mut c, "", spec(&[&python(), "-c", &script]))
        .await
        .unwrap();
    wait_for(JOB_TIMEOUT, "the job to be running", || {
        let mut c = c.clone();
        let id = job.id.clone();
        async move {
            let j = c.get(pb::GetJobRequest { id }).await.ok()?.into_inner();
            (state(&j) == pb::JobState::Running).then_some(())
        }
    })
    .await;
    // A crash, not a shutdown: the job must survive it and be found again.
    gw.restart().await;
    let mut c = gw.training().await;
    let j = c
        .get(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state(&j),
        pb::JobState::Running,
        "the record survived the crash"
    );
    std::fs::write(&go, "").unwrap();
    let done = wait_job(&mut c, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    let lines = logs(&mut c, &job.id, false).await;
    assert_eq!(lines, vec!["waiting", "done"]);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_job() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;
    let req = pb::SubmitJobRequest {
        target: "local".into(),
        spec: Some(spec(&["true"])),
        idempotency_key: "nightly-2026-11-22".into(),
    };
    let a = c.submit(req.clone()).await.unwrap().into_inner();
    let b = c.submit(req).await.unwrap().into_inner();
    assert_eq!(a.id, b.id);
    let all = c
        .list(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.jobs.len(), 1, "one job, not two");
}

#[tokio::test]
async fn follow_streams_log_lines_as_they_are_written() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;
    let script =
        "import time\nfor i in range(5):\n    print('line', i, flush=True)\n    time.sleep(0.2)\n";
    let job = submit(&mut c, "local", spec(&[&python(), "-c", script]))
        .await
        .unwrap();
    // Follow from the start: the stream ends by itself once the job has ended.
    let lines = tokio::time::timeout(JOB_TIMEOUT, logs(&mut c, &job.id, true))
        .await
        .expect("follow ended");
    assert_eq!(
        lines,
        (0..5).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
}

/// Long lines (a JSON dump per step, a wide table) add up to pages past what the gateway takes
/// from a plugin in one answer; the target must page them by size, not fail the whole log.
#[tokio::test]
async fn a_log_of_long_lines_comes_through_whole() {
    let (_d, gw) = gateway().await;
    let mut c = gw.training().await;
    let script = "for i in range(200):\n    print(str(i) + 'x' * 40000)\n";
    let job = submit(&mut c, "local", spec(&[&python(), "-c", script]))
        .await
        .unwrap();
    let done = wait_job(&mut c, &job.id, JOB_TIMEOUT).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    let lines = logs(&mut c, &job.id, false).await;
    assert_eq!(lines.len(), 200, "8 MB of log, every line");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("{i}{}", "x".repeat(40000)), "line {i}");
    }
}

/// The reconciler retries pending jobs that have no backend ref yet; it must never hand a job
/// to its backend while Submit is still doing so, or the job runs twice (or the second hand-over
/// trips over the first's files). A reconciler ticking every millisecond makes the overlap
/// near certain without the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_start_each_job_exactly_once() {
    const JOBS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some("[limits]\nreconcile_interval_ms = 1\n[targets.local]\nplugin = \"local\"\n[targets.local.grants.process]\n"),
    )
    .await;
    let c = gw.training().await;
    let submissions = (0..JOBS).map(|_| {
        let mut c = c.clone();
        // Each process records the job directory it runs in.
        let cmd = format!("basename \"$PWD\" >> {}", starts.display());
        async move { submit(&mut c, "local", spec(&["sh", "-c", &cmd])).await }
    });
    let jobs: Vec<pb::Job> = futures::future::join_all(submissions)
        .await
        .into_iter()
        .map(|r| r.expect("every concurrent submit succeeds"))
        .collect();
    let mut t = c.clone();
    for j in &jobs {
        let done = wait_job(&mut t, &j.id, JOB_TIMEOUT).await;
        assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    }
    let text = std::fs::read_to_string(&starts).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), JOBS, "each job's process ran once: {lines:?}");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), JOBS, "no job ran twice");
}
