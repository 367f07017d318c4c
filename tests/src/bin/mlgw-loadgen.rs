//! mlgw's own load generator. In one process it serves the real gateway API (store, plugins,
//! the lot) and, as the baseline, a bare tonic TrainingService whose Get returns a fixed job;
//! then it drives both with the same clients, alternating rounds so machine noise hits both
//! alike, and prints throughput, p50/p99 and the ratio to the baseline. It also samples plugin
//! instantiation latency and the latency of a whole status call through the local plugin.
//!
//! cargo build --release -p mlgw   # local jobs run under `mlgw supervise`
//! cargo run --release -p mlgw-tests --bin mlgw-loadgen -- [--clients 1,64] [--seconds 5] [--rounds 3]
//!
//! `predict` mode measures the data plane instead (see `mlgw_tests::bench::predict`):
//!
//! cargo run --release -p mlgw-tests --bin mlgw-loadgen -- predict [--clients 1,8] [--seconds 5] [--rounds 3]
//!
//! `table` runs every benchmark of issue 12, each against its baseline in the same run, and
//! prints one Markdown table (see `mlgw_tests::bench::table`):
//!
//! cargo run --release -p mlgw-tests --bin mlgw-loadgen -- table [--rows 1,2,3] [--records 1000000] [--seconds 3] [--rounds 3]

use std::sync::Arc;
use std::time::Instant;

use mlgw::domain::{JobState, TrainingSpec};
use mlgw_tests::bench::{arg, drive_get, get_job_pair, supervisor};

// The gateway's own allocator, so the gateway measured here allocates as `mlgw` does.
mlgw::use_gateway_allocator!();

/// Runs `op` sequentially, 200 times to warm up and then `n` times timed, and prints p50/p99.
async fn sample<F: std::future::Future<Output = ()>>(what: &str, n: usize, op: impl Fn() -> F) {
    for _ in 0..200 {
        op().await;
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        op().await;
        lat.push(s.elapsed());
    }
    lat.sort();
    println!(
        "{what} ({n} samples): p50 {} µs, p99 {} µs",
        lat[n / 2].as_micros(),
        lat[n * 99 / 100].as_micros()
    );
}

#[tokio::main]
async fn main() {
    supervisor();
    match std::env::args().nth(1).as_deref() {
        Some("predict") => return mlgw_tests::bench::predict::run().await,
        Some("table") => return mlgw_tests::bench::table::run().await,
        _ => {}
    }
    let clients: Vec<usize> = arg("--clients", "1,64")
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let secs: f64 = arg("--seconds", "5").parse().unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (gw, gateway, bare, job_id) = get_job_pair(dir.path()).await;

    println!("GetJob, {secs}s per round, {rounds} rounds alternating bare/gateway");
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>10}",
        "clients", "server", "req/s", "p50 µs", "p99 µs"
    );
    for &c in &clients {
        let (mut bare_rps, mut gw_rps) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (name, addr, acc) in [
                ("bare", bare.addr, &mut bare_rps),
                ("gateway", gateway.addr, &mut gw_rps),
            ] {
                let r = drive_get(addr, &job_id, c, secs).await;
                let rps = r.rate();
                acc.push(rps);
                println!(
                    "{c:>8} {name:>10} {rps:>12.0} {:>10} {:>10}",
                    r.p50.as_micros(),
                    r.p99.as_micros()
                );
            }
        }
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{c:>8} clients: gateway/bare throughput = {:.3}",
            mean(&gw_rps) / mean(&bare_rps)
        );
    }

    // Instantiation: admit + fresh Store + instantiate + drop, sequentially.
    let t = gw.runtime.target("local").unwrap().clone();
    let n: usize = arg("--instantiations", "5000").parse().unwrap();
    sample("instantiate", n, || async {
        gw.runtime.check(&t).await.unwrap()
    })
    .await;

    // A whole status call for a running local job: admit, instantiate, the plugin's WIT
    // call and its host call into the process capability.
    let spec = TrainingSpec {
        command: vec!["sleep".into(), "600".into()],
        ..Default::default()
    };
    let running = gw.submit_job("local", spec, None).await.unwrap();
    let r = running.backend_ref.clone().unwrap();
    let status = || async {
        let obs = gw
            .runtime
            .training_status(&t, &running.id, &r)
            .await
            .unwrap();
        assert_eq!(obs.state, JobState::Running);
    };
    sample("status call", n, status).await;
    gw.cancel_job(&running.id).await.unwrap();
    let _ = Arc::strong_count(&gw);
}
