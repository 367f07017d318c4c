//! What a plugin call costs: a job status call through the local plugin (fresh instance,
//! WIT call, host capability) against the same status logic as a native function, measured in
//! the same run; and the bare cost of admitting and instantiating a plugin.
//!
//! cargo bench -p mlgw --bench plugin_call

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mlgw::capabilities::process::ProcessCapability;
use mlgw::config::Config;
use mlgw::contract::mlgw::backend::process::{ProcessHandle, ProcessState};
use mlgw::domain::{JobState, TrainingSpec};
use mlgw::gateway::Gateway;

/// The local plugin's status mapping, written natively.
async fn native_status(
    cap: &ProcessCapability,
    h: &ProcessHandle,
    exit_file: &str,
) -> (JobState, String) {
    match cap.state(h, exit_file).await.expect("state") {
        ProcessState::Running => (JobState::Running, format!("running pid {}", h.pid)),
        ProcessState::Exited(0) => (JobState::Succeeded, "exit 0".into()),
        ProcessState::Exited(c) => (JobState::Failed, format!("exit {c}")),
        ProcessState::Signalled(s) => (JobState::Failed, format!("signal {s}")),
        ProcessState::Vanished => (JobState::Failed, "vanished".into()),
    }
}

fn bench(c: &mut Criterion) {
    // SAFETY: set before any thread that reads the environment is started.
    unsafe { std::env::set_var("MLGW_SUPERVISOR", env!("CARGO_BIN_EXE_mlgw")) };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::embedded();
    cfg.data_dir = dir.path().to_path_buf();
    let gw: Arc<Gateway> = rt.block_on(mlgw::server::build(&cfg)).unwrap();
    let spec = TrainingSpec {
        command: vec!["sleep".into(), "600".into()],
        ..Default::default()
    };
    let job = rt.block_on(gw.submit_job("local", spec, None)).unwrap();
    let r = job.backend_ref.clone().unwrap();
    let t = gw.runtime.target("local").unwrap().clone();
    let data: serde_json::Value = serde_json::from_str(&r.data).unwrap();
    let handle = ProcessHandle {
        pid: data["pid"].as_u64().unwrap() as u32,
        start_ticks: data["start_ticks"].as_u64().unwrap(),
    };
    let exit_file = format!("jobs/{}/exit.json", mlgw::domain::backend_name(&job.id));
    let cap = t.caps.process.clone().unwrap();
    assert_eq!(
        rt.block_on(native_status(&cap, &handle, &exit_file)).0,
        JobState::Running
    );
    let obs = rt
        .block_on(gw.runtime.training_status(&t, &job.id, &r))
        .unwrap();
    assert_eq!(obs.state, JobState::Running);

    let mut g = c.benchmark_group("job_status");
    g.bench_function("native", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(native_status(&cap, &handle, &exit_file).await) })
    });
    g.bench_function("plugin", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(gw.runtime.training_status(&t, &job.id, &r).await.unwrap())
        })
    });
    g.finish();
    c.bench_function("instantiate", |b| {
        b.to_async(&rt)
            .iter(|| async { gw.runtime.check(&t).await.unwrap() })
    });
    rt.block_on(gw.cancel_job(&job.id)).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
