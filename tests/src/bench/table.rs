//! `mlgw-loadgen table`: issue 12's benchmarks, each measured against its baseline in the same
//! run (alternating rounds where there is one, since the machine is shared and noisy), printed
//! as one Markdown table on stdout. Progress goes to stderr.
//!
//! Rows (pick with `--rows 1,3`): 1 GetJob vs a bare tonic handler; 2 Submit with a durable
//! record on a no-op target vs sled with a flush per write; 3 Get / filtered List with
//! `--records` records vs 1k; 4 restart with those records until the first GetJob answers;
//! 5 ready with the four bundled plugins, precompiled and first compile; 6 Predict through the
//! gateway vs straight to MLServer; 7 Logs stream vs reading the log file; 8 idle RSS;
//! 9 the KWOK rows: `--kwok-jobs` live jobs on the test cluster's KWOK nodes, the gateway's
//! API requests in steady state and status change → Watch event (see `super::kwok`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mlgw::api::pb::{
    self, target_service_client::TargetServiceClient,
    training_service_client::TrainingServiceClient,
};
use mlgw::config::Config;
use mlgw::domain::{BackendRef, JobState, TrainingSpec, now_ms};
use mlgw::store::Store;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::predict::{Deployed, Path as PredictPath};
use super::{
    Live, Run, arg, channel, combine, drive_get, fixed_job, get_job_pair, mlgw_bin, percentile,
    serve,
};

struct Opts {
    rows: Vec<u32>,
    records: usize,
    secs: f64,
    rounds: usize,
}

pub(super) enum Met {
    Yes,
    No,
    /// Not judged: no goal, or not measured, and why.
    NotJudged,
}

pub(super) struct Row {
    pub(super) row: String,
    pub(super) measured: String,
    pub(super) baseline: String,
    pub(super) value: String,
    pub(super) goal: String,
    pub(super) met: Met,
}

impl Row {
    pub(super) fn judged(ok: bool) -> Met {
        if ok { Met::Yes } else { Met::No }
    }
}

pub async fn run() {
    let o = Opts {
        rows: arg("--rows", "1,2,3,4,5,6,7,8,9")
            .split(',')
            .map(|r| {
                r.trim()
                    .parse()
                    .expect("--rows: numbers 1 to 9, comma-separated")
            })
            .collect(),
        records: arg("--records", "1000000")
            .parse()
            .expect("--records: a number"),
        secs: arg("--seconds", "3").parse().expect("--seconds: a number"),
        rounds: arg("--rounds", "3").parse().expect("--rounds: a number"),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    if o.rows.contains(&1) {
        rows.extend(get_job(&o).await);
    }
    if o.rows.contains(&2) {
        rows.extend(submit(&o).await);
    }
    if o.rows.contains(&3) || o.rows.contains(&4) {
        rows.extend(many_records(&o).await);
    }
    if o.rows.contains(&5) {
        rows.extend(ready_with_plugins(&o).await);
    }
    if o.rows.contains(&6) {
        rows.extend(predict(&o).await);
    }
    if o.rows.contains(&7) {
        rows.extend(logs(&o).await);
    }
    if o.rows.contains(&8) {
        rows.extend(idle_rss().await);
    }
    if o.rows.contains(&9) {
        rows.extend(super::kwok::rows(&super::kwok::Opts::from_args()).await);
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    print(&rows);
}

fn print(rows: &[Row]) {
    println!(
        "| row | measured | baseline (same run) | ratio / value | goal | met? |\n|---|---|---|---|---|---|"
    );
    for r in rows {
        let met = match r.met {
            Met::Yes => "yes",
            Met::No => "**no**",
            Met::NotJudged => "—",
        };
        println!(
            "| {} | {} | {} | {} | {} | {met} |",
            r.row, r.measured, r.baseline, r.value, r.goal
        );
    }
}

pub(super) fn progress(what: &str) {
    eprintln!("[table] {what}");
}

/// 12345.6 → "12,346".
pub(super) fn count(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

pub(super) fn dur(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn rate_cell(r: &Run, unit: &str) -> String {
    format!(
        "{}{unit}, p50 {} / p99 {}",
        count(r.rate()),
        dur(r.p50),
        dur(r.p99)
    )
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// A small deterministic generator, so the ids read are spread over the whole store.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------
// 1. GetJob

async fn get_job(o: &Opts) -> Vec<Row> {
    progress("1: GetJob vs a bare tonic handler");
    let dir = tempfile::tempdir().unwrap();
    let (_gw, gateway, bare, job_id) = get_job_pair(dir.path()).await;
    let mut rows = Vec::new();
    for clients in [1, 64] {
        let (mut b, mut g) = (Vec::new(), Vec::new());
        for _ in 0..o.rounds {
            b.push(drive_get(bare.addr, &job_id, clients, o.secs).await);
            g.push(drive_get(gateway.addr, &job_id, clients, o.secs).await);
        }
        let (b, g) = (combine(&b), combine(&g));
        let ratio = g.rate() / b.rate();
        rows.push(Row {
            row: format!(
                "GetJob, {clients} client{}",
                if clients == 1 { "" } else { "s" }
            ),
            measured: rate_cell(&g, "/s"),
            baseline: format!("bare tonic: {}", rate_cell(&b, "/s")),
            value: format!("{ratio:.2}×"),
            goal: "≥ 0.9× throughput".into(),
            met: Row::judged(ratio >= 0.9),
        });
    }
    bare.stop().await;
    gateway.stop().await;
    rows
}

// ---------------------------------------------------------------------------------------
// 2. Submit

/// The no-op target: the hostile fixture plugin, which accepts any job whose name asks for no
/// misbehaviour at once (validate and submit answer without a host call).
fn noop_config_toml() -> String {
    format!(
        r#"default_target = "local"
[plugins]
hostile = "{}"
[targets.local]
plugin = "local"
[targets.local.grants.process]
[targets.noop]
plugin = "hostile"
"#,
        mlgw_plugin_artifacts::HOSTILE_PATH
    )
}

fn noop_config(dir: &Path, data_dir: &Path) -> (Config, PathBuf) {
    let path = dir.join("noop.toml");
    std::fs::write(&path, noop_config_toml()).unwrap();
    let mut cfg = Config::load(&path).unwrap();
    cfg.data_dir = data_dir.to_path_buf();
    (cfg, path)
}

fn noop_spec() -> pb::TrainingJobSpec {
    pb::TrainingJobSpec {
        name: "noop".into(),
        command: vec!["python3".into(), "train.py".into()],
        ..Default::default()
    }
}

async fn drive_submit(addr: SocketAddr, clients: usize, secs: f64) -> Run {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut c = TrainingServiceClient::new(channel(addr).await);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                c.submit(pb::SubmitJobRequest {
                    target: "noop".into(),
                    spec: Some(noop_spec()),
                    idempotency_key: String::new(),
                })
                .await
                .unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    Run::from_latencies(all, start.elapsed().as_secs_f64())
}

/// The baseline: `writers` threads, each inserting `record` under a fresh key and flushing
/// sled after every write, for `secs`.
async fn sled_flush_per_write(db: sled::Db, record: Vec<u8>, writers: usize, secs: f64) -> Run {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let all: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..writers)
                .map(|_| {
                    let (db, record) = (&db, &record);
                    s.spawn(move || {
                        let mut lat = Vec::new();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            db.insert(mlgw::store::new_id("j"), record.as_slice())
                                .unwrap();
                            db.flush().unwrap();
                            lat.push(t.elapsed());
                        }
                        lat
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        Run::from_latencies(all, start.elapsed().as_secs_f64())
    })
    .await
    .unwrap()
}

/// What the store's writer did between two snapshots: how many writes shared a transaction
/// and how long its transactions and flushes took, the waits every Submit's record sits out.
fn writer_report(a: mlgw::store::WriterStats, b: mlgw::store::WriterStats) -> String {
    let batches = (b.batches - a.batches).max(1) as f64;
    let flushes = (b.flushes - a.flushes).max(1) as f64;
    format!(
        "store writer: {} writes in {} transactions ({:.1} per transaction, {:.2} ms each), \
         {} flushes ({:.2} ms each)",
        b.writes - a.writes,
        b.batches - a.batches,
        (b.writes - a.writes) as f64 / batches,
        (b.transaction_seconds - a.transaction_seconds) * 1e3 / batches,
        b.flushes - a.flushes,
        (b.flush_seconds - a.flush_seconds) * 1e3 / flushes,
    )
}

async fn submit(o: &Opts) -> Vec<Row> {
    progress("2: Submit with a durable record, 64 clients, no-op target vs sled flush per write");
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = noop_config(dir.path(), &dir.path().join("data"));
    let gw = mlgw::server::build(&cfg).await.unwrap();
    let gateway = serve(mlgw::api::routes(gw.clone()).unwrap()).await;
    // The baseline writes records of exactly the size the gateway stores.
    let one = TrainingServiceClient::new(channel(gateway.addr).await)
        .submit(pb::SubmitJobRequest {
            target: "noop".into(),
            spec: Some(noop_spec()),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The record's bytes as the store holds them, read from its tree.
    let record = gw
        .store
        .tree("jobs")
        .unwrap()
        .get(&one.id)
        .unwrap()
        .expect("the acknowledged job is stored")
        .to_vec();
    let db = sled::Config::new()
        .path(dir.path().join("baseline"))
        .open()
        .unwrap();
    let (mut b, mut g) = (Vec::new(), Vec::new());
    let before = gw.store.writer_stats();
    for _ in 0..o.rounds {
        b.push(sled_flush_per_write(db.clone(), record.clone(), 64, o.secs).await);
        g.push(drive_submit(gateway.addr, 64, o.secs).await);
    }
    let (b, g) = (combine(&b), combine(&g));
    progress(&writer_report(before, gw.store.writer_stats()));
    let submitted = gw
        .store
        .list_jobs(|_| true, None, usize::MAX)
        .unwrap()
        .0
        .len();
    assert_eq!(
        submitted,
        g.requests + 1,
        "every acknowledged Submit is in the store"
    );
    gateway.stop().await;
    vec![Row {
        row: "Submit, durable record, 64 clients, no-op target".into(),
        measured: rate_cell(&g, "/s"),
        baseline: format!(
            "sled, flush per write ({} B records): {}",
            record.len(),
            rate_cell(&b, "/s")
        ),
        value: format!(
            "{}/s ({:.1}× baseline)",
            count(g.rate()),
            g.rate() / b.rate()
        ),
        goal: "≥ 5,000/s (kill -9 loss: the store's tests)".into(),
        met: Row::judged(g.rate() >= 5000.0),
    }]
}

// ---------------------------------------------------------------------------------------
// 3 and 4. Many records

/// A data dir whose store holds `n` jobs of the no-op target: 1% running, 10% failed, the
/// rest succeeded, each inserted as a Submit records it and then finished by an update.
struct Filled {
    dir: tempfile::TempDir,
    ids: Vec<String>,
    insert: Duration,
    update: Duration,
}

impl Filled {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// Runs `writes` to the end, saying every 100,000 how many are `done`.
async fn drain_reporting(writes: impl futures::Stream<Item = ()>, done: &str) {
    let mut writes = std::pin::pin!(writes);
    let mut n = 0;
    while writes.next().await.is_some() {
        n += 1;
        if n % 100_000 == 0 {
            progress(&format!("  {done} {n}"));
        }
    }
}

/// Writes in flight while filling a store.
const FILL_IN_FLIGHT: usize = 256;

async fn fill(n: usize) -> Filled {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("db");
    std::fs::create_dir_all(&db).unwrap();
    let store = Store::open(&db).unwrap();
    // Written as a bulk load would be: many writes in flight, which the store's writer
    // applies together.
    let t = Instant::now();
    let ids: Vec<String> = (0..n).map(|_| fixed_job().id).collect();
    let inserts = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let store = &store;
            async move {
                let mut j = fixed_job();
                j.id = id;
                j.target = "noop".into();
                j.spec.name = "noop".into();
                j.state = JobState::Pending;
                j.backend_state = String::new();
                j.output_uri = None;
                j.sequence = 1;
                store.insert_job(j, None).await.unwrap();
            }
        })
        .buffer_unordered(FILL_IN_FLIGHT);
    drain_reporting(inserts, "inserted").await;
    let insert = t.elapsed();
    let t = Instant::now();
    let updates = futures::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let store = &store;
            async move {
                store
                    .update_job(id, |j| {
                        j.backend_ref = Some(BackendRef {
                            name: "ok".into(),
                            data: String::new(),
                        });
                        j.backend_state = "submitted as ok".into();
                        let (state, message) = match i {
                            _ if i % 100 == 0 => (JobState::Running, ""),
                            _ if i % 10 == 5 => (JobState::Failed, "exit status 1"),
                            _ => (JobState::Succeeded, ""),
                        };
                        j.transition(state, message.into(), now_ms());
                        true
                    })
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(FILL_IN_FLIGHT);
    drain_reporting(updates, "updated").await;
    let update = t.elapsed();
    store.flush().await.unwrap();
    drop(store);
    Filled {
        dir,
        ids,
        insert,
        update,
    }
}

struct Reads {
    get: Vec<Duration>,
    list: Vec<Duration>,
}

/// Sequential Gets of ids spread over the store, then filtered List pages (state FAILED,
/// 100 a page), one client.
async fn reads(addr: SocketAddr, ids: &[String], rng: &mut XorShift, out: &mut Reads) {
    let mut c = TrainingServiceClient::new(channel(addr).await);
    for _ in 0..2000 {
        let id = ids[rng.below(ids.len())].clone();
        let t = Instant::now();
        c.get(pb::GetJobRequest { id }).await.unwrap();
        out.get.push(t.elapsed());
    }
    for _ in 0..300 {
        let t = Instant::now();
        let page = c
            .list(pb::ListJobsRequest {
                state: pb::JobState::Failed as i32,
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.list.push(t.elapsed());
        assert_eq!(page.jobs.len(), 100, "a full page of failed jobs");
    }
}

async fn many_records(o: &Opts) -> Vec<Row> {
    let n = o.records;
    let small_n = 1000.min(n);
    progress(&format!("3: writing {n} records straight into a Store"));
    let big = fill(n).await;
    progress(&format!("3: writing {small_n} records"));
    let small = fill(small_n).await;
    let mut rows = vec![Row {
        row: format!(
            "Writing {} records into a Store (insert, then update)",
            count(n as f64)
        ),
        measured: format!(
            "{:.1} s ({}/s insert, {}/s update)",
            (big.insert + big.update).as_secs_f64(),
            count(n as f64 / big.insert.as_secs_f64()),
            count(n as f64 / big.update.as_secs_f64())
        ),
        baseline: "—".into(),
        value: format!("{} on disk", disk_usage(&big.data_dir().join("db"))),
        goal: "— (setup of rows 3, 4)".into(),
        met: Met::NotJudged,
    }];
    let label = |k: usize| {
        if k >= 1_000_000 && k.is_multiple_of(1_000_000) {
            format!("{}M", k / 1_000_000)
        } else if k >= 1000 && k.is_multiple_of(1000) {
            format!("{}k", k / 1000)
        } else {
            k.to_string()
        }
    };
    if o.rows.contains(&3) {
        progress("3: Get / filtered List, many records vs 1k, alternating");
        let tmp = tempfile::tempdir().unwrap();
        let (big_cfg, _) = noop_config(tmp.path(), &big.data_dir());
        let (small_cfg, _) = noop_config(tmp.path(), &small.data_dir());
        let big_gw = mlgw::server::build(&big_cfg).await.unwrap();
        let small_gw = mlgw::server::build(&small_cfg).await.unwrap();
        let big_srv = serve(mlgw::api::routes(big_gw.clone()).unwrap()).await;
        let small_srv = serve(mlgw::api::routes(small_gw.clone()).unwrap()).await;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut b, mut s) = (
            Reads {
                get: Vec::new(),
                list: Vec::new(),
            },
            Reads {
                get: Vec::new(),
                list: Vec::new(),
            },
        );
        // A warm-up round each, not counted.
        let mut scratch = Reads {
            get: Vec::new(),
            list: Vec::new(),
        };
        reads(small_srv.addr, &small.ids, &mut rng, &mut scratch).await;
        reads(big_srv.addr, &big.ids, &mut rng, &mut scratch).await;
        for _ in 0..o.rounds {
            reads(small_srv.addr, &small.ids, &mut rng, &mut s).await;
            reads(big_srv.addr, &big.ids, &mut rng, &mut b).await;
        }
        for v in [&mut b.get, &mut b.list, &mut s.get, &mut s.list] {
            v.sort();
        }
        let cell = |v: &[Duration]| {
            format!(
                "p50 {} / p99 {}",
                dur(percentile(v, 0.5)),
                dur(percentile(v, 0.99))
            )
        };
        for (what, big_v, small_v, goal) in [
            ("Get", &b.get, &s.get, Duration::from_millis(1)),
            (
                "List, state filter, page of 100",
                &b.list,
                &s.list,
                Duration::from_millis(5),
            ),
        ] {
            let p99 = percentile(big_v, 0.99);
            rows.push(Row {
                row: format!("{what}, {} records", label(n)),
                measured: cell(big_v),
                baseline: format!("{} records: {}", label(small_n), cell(small_v)),
                value: format!(
                    "p99 {} ({:.2}× of {})",
                    dur(p99),
                    p99.as_secs_f64() / percentile(small_v, 0.99).as_secs_f64(),
                    label(small_n)
                ),
                goal: format!("p99 ≤ {}", dur(goal)),
                met: Row::judged(p99 <= goal),
            });
        }
        big_srv.stop().await;
        small_srv.stop().await;
        drop((big_gw, small_gw));
    }
    if o.rows.contains(&4) {
        progress(&format!("4: restarting the gateway binary on {n} records"));
        rows.push(restart(o, &big, n, &label(n)).await);
    }
    rows
}

fn disk_usage(dir: &Path) -> String {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    format!("{:.0} MB", total as f64 / 1e6)
}

/// `mlgw serve` started as a real process; killed on drop.
pub(super) struct Serving {
    pub(super) child: tokio::process::Child,
    pub(super) addr: SocketAddr,
    started: Instant,
    listening: Duration,
}

/// Starts the release `mlgw serve` with `args` and waits (bounded) until it prints its
/// address. AWS credentials are fixed and instance metadata off, so nothing is looked up
/// beyond this machine.
pub(super) async fn start_serve(args: &[OsString], stderr: &Path) -> Serving {
    let log = std::fs::File::create(stderr).unwrap();
    let mut cmd = tokio::process::Command::new(mlgw_bin());
    cmd.arg("serve")
        .args(args)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env_remove("AWS_PROFILE")
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("starting mlgw serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(a) = l.strip_prefix("mlgw listening on ") {
                return Some(a.trim().to_string());
            }
        }
        None
    })
    .await
    .expect("mlgw serve did not start within 120 s")
    .unwrap_or_else(|| {
        panic!(
            "mlgw serve exited: {}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        )
    });
    let listening = started.elapsed();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Serving {
        child,
        addr: addr.parse().unwrap(),
        started,
        listening,
    }
}

impl Serving {
    pub(super) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Waits (bounded) until nothing holds the store at `db` any more.
async fn store_released(db: &Path) {
    crate::wait_for(Duration::from_secs(60), "the store to be released", || {
        let db = db.to_path_buf();
        async move {
            tokio::task::spawn_blocking(move || Store::open(&db).ok().map(drop))
                .await
                .unwrap()
        }
    })
    .await
}

async fn restart(o: &Opts, big: &Filled, n: usize, label: &str) -> Row {
    let tmp = tempfile::tempdir().unwrap();
    let (_, config) = noop_config(tmp.path(), &big.data_dir());
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let (mut ready, mut listening) = (Vec::new(), Vec::new());
    // The in-process gateways of row 3 have just closed it; a killed process's lock goes
    // with the process.
    store_released(&big.data_dir().join("db")).await;
    for round in 0..o.rounds {
        let args: Vec<OsString> = vec![
            "--config".into(),
            config.clone().into(),
            "--data-dir".into(),
            big.data_dir().into(),
        ];
        let s = start_serve(&args, &tmp.path().join(format!("restart-{round}.log"))).await;
        let id = big.ids[rng.below(big.ids.len())].clone();
        TrainingServiceClient::new(channel(s.addr).await)
            .get(pb::GetJobRequest { id })
            .await
            .unwrap();
        ready.push(s.started.elapsed());
        listening.push(s.listening);
        // As a crash would stop it: the next start recovers from whatever was on disk.
        s.kill().await;
    }
    let m = median(&ready);
    Row {
        row: format!("Gateway restart with {label} records until it serves"),
        measured: format!(
            "{} (median of {}; each {}), listening after {}",
            dur(m),
            ready.len(),
            ready.iter().map(|d| dur(*d)).collect::<Vec<_>>().join(", "),
            dur(median(&listening))
        ),
        baseline: "—".into(),
        value: format!("{} to the first GetJob answer", dur(m)),
        goal: "≤ 1 s".into(),
        met: Row::judged(m <= Duration::from_secs(1) && n > 0),
    }
}

// ---------------------------------------------------------------------------------------
// 5. Ready with the four bundled plugins

const KUBECONFIG: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: https://127.0.0.1:9
    insecure-skip-tls-verify: true
users:
- name: bench
  user:
    token: bench
contexts:
- name: bench
  context:
    cluster: bench
    user: bench
current-context: bench
"#;

/// Every bundled plugin on a target of its own. Nothing is contacted while starting; the
/// clusters and AWS endpoints named are closed loopback ports.
fn four_plugins_toml(kubeconfig: &Path) -> String {
    format!(
        r#"default_target = "local"
[targets.local]
plugin = "local"
[targets.local.grants.process]
[targets.sagemaker]
plugin = "sagemaker"
[targets.sagemaker.grants.sagemaker]
region = "us-east-1"
role_arn = "arn:aws:iam::000000000000:role/bench"
endpoint_url = "http://127.0.0.1:9"
[targets.kubeflow]
plugin = "kubeflow"
[targets.kubeflow.grants.kube]
kubeconfig = "{k}"
namespaces = ["bench"]
kinds = ["kubeflow.org/v1/PyTorchJob", "v1/Pod"]
[targets.kserve]
plugin = "kserve"
[targets.kserve.grants.kube]
kubeconfig = "{k}"
namespaces = ["bench"]
kinds = ["serving.kserve.io/v1beta1/InferenceService"]
"#,
        k = kubeconfig.display()
    )
}

/// From spawn to the first TargetService.List answer naming all four targets, and from spawn
/// to the listening line.
async fn ready_once(config: &Path, data_dir: &Path, log: &Path) -> (Duration, Duration) {
    let args: Vec<OsString> = vec![
        "--config".into(),
        config.into(),
        "--data-dir".into(),
        data_dir.into(),
    ];
    let s = start_serve(&args, log).await;
    let targets = TargetServiceClient::new(channel(s.addr).await)
        .list(pb::ListTargetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .targets;
    let took = s.started.elapsed();
    assert_eq!(targets.len(), 4, "{targets:?}");
    let listening = s.listening;
    s.kill().await;
    (took, listening)
}

async fn ready_with_plugins(o: &Opts) -> Vec<Row> {
    progress("5: gateway ready with 4 plugins, first compile vs precompiled, alternating");
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
    let config = tmp.path().join("four.toml");
    std::fs::write(&config, four_plugins_toml(&kubeconfig)).unwrap();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let (mut cold_listening, mut warm_listening) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // A fresh data dir has an empty compile cache (<data_dir>/compiled).
        let data = tmp.path().join(format!("data-{round}"));
        let log = tmp.path().join(format!("ready-{round}.log"));
        let (ready, listening) = ready_once(&config, &data, &log).await;
        cold.push(ready);
        cold_listening.push(listening);
        let (ready, listening) = ready_once(&config, &data, &log).await;
        warm.push(ready);
        warm_listening.push(listening);
    }
    let (c, w) = (median(&cold), median(&warm));
    let each = |v: &[Duration]| v.iter().map(|d| dur(*d)).collect::<Vec<_>>().join(", ");
    vec![
        Row {
            row: "Gateway ready with 4 plugins, precompiled".into(),
            measured: format!(
                "{} (median; each {}), listening after {}",
                dur(w),
                each(&warm),
                dur(median(&warm_listening))
            ),
            baseline: "—".into(),
            value: dur(w),
            goal: "≤ 200 ms".into(),
            met: Row::judged(w <= Duration::from_millis(200)),
        },
        Row {
            row: "Gateway ready with 4 plugins, first compile".into(),
            measured: format!(
                "{} (median; each {}), listening after {}",
                dur(c),
                each(&cold),
                dur(median(&cold_listening))
            ),
            baseline: "—".into(),
            value: dur(c),
            goal: "≤ 2 s".into(),
            met: Row::judged(c <= Duration::from_secs(2)),
        },
    ]
}

// ---------------------------------------------------------------------------------------
// 6. Predict

async fn predict(o: &Opts) -> Vec<Row> {
    progress("6: Predict through the gateway vs straight to MLServer, alternating");
    let d = Deployed::start().await;
    let mut rows = Vec::new();
    for clients in [1, 8] {
        let (mut direct, mut via, mut inproc) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..o.rounds {
            direct.push(d.drive(PredictPath::Direct, clients, o.secs).await);
            via.push(d.drive(PredictPath::Gateway, clients, o.secs).await);
            inproc.push(d.drive(PredictPath::InProcess, clients, o.secs).await);
        }
        let (direct, via, inproc) = (combine(&direct), combine(&via), combine(&inproc));
        let ratio = via.rate() / direct.rate();
        let added = via.p50.as_micros() as i128 - direct.p50.as_micros() as i128;
        rows.push(Row {
            row: format!(
                "Predict through the gateway (OIP gRPC), local target, {clients} client{}",
                if clients == 1 { "" } else { "s" }
            ),
            measured: rate_cell(&via, "/s"),
            // The data plane alone (the gateway's Predict called in-process) splits what
            // the gateway adds between its gRPC hop and everything after it.
            baseline: format!(
                "REST straight to MLServer: {}; the data plane alone, in-process: {}",
                rate_cell(&direct, "/s"),
                rate_cell(&inproc, "/s")
            ),
            value: format!("{ratio:.2}× rps, p50 {added:+} µs"),
            goal: "≥ 0.95× rps, ≤ +100 µs p50".into(),
            met: Row::judged(ratio >= 0.95 && added <= 100),
        });
    }
    d.stop().await;
    rows
}

// ---------------------------------------------------------------------------------------
// 7. Logs

/// About 100 MB of 100-byte lines on stdout.
const LOGGY: &str = "import sys\nchunk = ('x' * 99 + '\\n') * 1000\nfor _ in range(1000):\n    sys.stdout.write(chunk)\n";

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// Lines and bytes of log text (each line's text and a newline) in the log file, read line
/// by line and split as the local plugin splits its records (`<unix_ms> <source> <text>`).
async fn read_file_lines(path: &Path) -> (u64, u64, Duration) {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let t = Instant::now();
        let f = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(path).unwrap());
        let (mut lines, mut bytes) = (0u64, 0u64);
        for l in f.lines() {
            let l = l.unwrap();
            let text = l.splitn(3, ' ').nth(2).unwrap_or(&l);
            lines += 1;
            bytes += text.len() as u64 + 1;
        }
        (lines, bytes, t.elapsed())
    })
    .await
    .unwrap()
}

async fn stream_logs(addr: SocketAddr, id: &str) -> (u64, u64, Duration) {
    let mut c = TrainingServiceClient::new(channel(addr).await);
    let t = Instant::now();
    let mut s = c
        .logs(pb::JobLogsRequest {
            id: id.into(),
            follow: false,
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let (mut lines, mut bytes) = (0u64, 0u64);
    while let Some(l) = s.next().await {
        lines += 1;
        bytes += l.unwrap().text.len() as u64 + 1;
    }
    (lines, bytes, t.elapsed())
}

async fn logs(o: &Opts) -> Vec<Row> {
    progress("7: Logs stream of a local job's ~100 MB vs reading its log file, alternating");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let live = Live::start(data_dir.clone()).await;
    let gw = live.gw.clone();
    let job = gw
        .submit_job(
            "local",
            TrainingSpec {
                name: "loggy".into(),
                command: vec!["python3".into(), "-c".into(), LOGGY.into()],
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let gw2 = gw.clone();
    let done = crate::wait_for(Duration::from_secs(300), "the logging job to end", || {
        let j = gw2.get_job(&job.id).unwrap();
        async move { j.state.is_terminal().then_some(j) }
    })
    .await;
    assert_eq!(done.state, JobState::Succeeded, "{}", done.message);
    let file = find_file(&data_dir.join("targets").join("local"), "logs.txt")
        .expect("the local target's log file");
    let (mut file_runs, mut grpc_runs) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        file_runs.push(read_file_lines(&file).await);
        grpc_runs.push(stream_logs(live.served.addr, &job.id).await);
    }
    let (lines, bytes) = (file_runs[0].0, file_runs[0].1);
    assert!(
        grpc_runs
            .iter()
            .chain(&file_runs)
            .all(|(l, b, _)| (*l, *b) == (lines, bytes)),
        "every read got the whole log: {file_runs:?} {grpc_runs:?}"
    );
    let mbps = |v: &[(u64, u64, Duration)]| {
        v.iter().map(|(_, b, _)| *b as f64).sum::<f64>()
            / 1e6
            / v.iter().map(|(_, _, d)| d.as_secs_f64()).sum::<f64>()
    };
    let (g, f) = (mbps(&grpc_runs), mbps(&file_runs));
    live.stop().await.stop().await;
    vec![Row {
        row: format!(
            "Logs stream (Logs RPC, no follow) of a local job's {:.0} MB log ({} lines)",
            bytes as f64 / 1e6,
            count(lines as f64)
        ),
        measured: format!("{g:.1} MB/s of text"),
        baseline: format!("reading the log file line by line: {f:.0} MB/s of text"),
        value: format!("{g:.1} MB/s ({:.2}× the file)", g / f),
        goal: "≥ 50 MB/s".into(),
        met: Row::judged(g >= 50.0),
    }]
}

// ---------------------------------------------------------------------------------------
// 8. Idle RSS

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Starts `mlgw serve` on its embedded defaults (its own data dir), asks it once for its
/// targets, then samples VmRSS until four samples in a row are within 256 KiB (bounded).
async fn settled_rss(data_dir: &Path, log: &Path) -> u64 {
    let args: Vec<OsString> = vec!["--data-dir".into(), data_dir.into()];
    let s = start_serve(&args, log).await;
    TargetServiceClient::new(channel(s.addr).await)
        .list(pb::ListTargetsRequest::default())
        .await
        .unwrap();
    let pid = s.child.id().unwrap();
    let mut seen: Vec<u64> = Vec::new();
    let rss = crate::wait_for(Duration::from_secs(30), "RSS to settle", || {
        seen.push(rss_kib(pid).unwrap_or_default());
        let last: Vec<u64> = seen.iter().rev().take(4).copied().collect();
        let settled =
            last.len() == 4 && last.iter().max().unwrap() - last.iter().min().unwrap() <= 256;
        let v = last[0];
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            settled.then_some(v)
        }
    })
    .await;
    s.kill().await;
    rss
}

async fn idle_rss() -> Vec<Row> {
    progress("8: idle RSS of mlgw serve on its embedded defaults");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("rss.log");
    let first = settled_rss(&data, &log).await;
    let warm = settled_rss(&data, &log).await;
    let mb = |k: u64| k as f64 * 1024.0 / 1e6;
    vec![Row {
        row: "Idle RSS of `mlgw serve`, embedded defaults".into(),
        measured: format!(
            "{:.1} MB (precompiled start; {:.1} MB on a first-compile start)",
            mb(warm),
            mb(first)
        ),
        baseline: "—".into(),
        value: format!("{:.1} MB", mb(warm)),
        goal: "≤ 50 MB".into(),
        met: Row::judged(mb(warm) <= 50.0),
    }]
}
