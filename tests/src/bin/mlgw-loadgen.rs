//! mlgw's own load generator. In one process it serves the real gateway API (store, plugins,
//! the lot) and, as the baseline, a bare tonic TrainingService whose Get returns a fixed job;
//! then it drives both with the same clients, alternating rounds so machine noise hits both
//! alike, and prints throughput, p50/p99 and the ratio to the baseline. It also samples plugin
//! instantiation latency and the latency of a whole status call through the local plugin.
//!
//! cargo build --release -p mlgw   # local jobs run under `mlgw supervise`
//! cargo run --release -p mlgw-tests --bin mlgw-loadgen -- [--clients 1,64] [--seconds 5] [--rounds 3]
//!
//! `predict` mode measures the data plane instead: it trains an iris model with the test
//! venv's scikit-learn, deploys it on the `local` target (a real MLServer), and sends the same
//! OIP V2 request from N clients (a) through the gateway's `inference.GRPCInferenceService`
//! ModelInfer and (b) straight to that MLServer's REST `/v2/models/<name>/infer`, alternating
//! rounds, and prints predictions per second, p50/p99 and the ratios.
//!
//! cargo run --release -p mlgw-tests --bin mlgw-loadgen -- predict [--clients 1,8] [--seconds 5] [--rounds 3]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlgw::api::pb::{
    self, training_service_client::TrainingServiceClient, training_service_server,
};
use mlgw::config::Config;
use mlgw::domain::{Job, JobState, TrainingSpec, now_ms};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The baseline: a handler that does nothing but answer.
struct Bare {
    job: pb::Job,
}

type Empty<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl training_service_server::TrainingService for Bare {
    async fn submit(&self, _: Request<pb::SubmitJobRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get(&self, _: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.job.clone()))
    }
    async fn list(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn cancel(&self, _: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(""))
    }
    type WatchStream = Empty<pb::JobEvent>;
    async fn watch(
        &self,
        _: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented(""))
    }
    type LogsStream = Empty<pb::LogLine>;
    async fn logs(
        &self,
        _: Request<pb::JobLogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        Err(Status::unimplemented(""))
    }
}

async fn serve(routes: tonic::service::Routes) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(TcpIncoming::from(l).with_nodelay(Some(true)))
            .await
            .unwrap()
    });
    addr
}

struct Run {
    requests: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

async fn drive(addr: SocketAddr, id: &str, clients: usize, secs: f64) -> Run {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let id = id.to_string();
        tasks.push(tokio::spawn(async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut c = TrainingServiceClient::new(ch);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                c.get(pb::GetJobRequest { id: id.clone() }).await.unwrap();
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
    let seconds = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Run {
        requests: all.len(),
        seconds,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

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

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn supervisor() {
    // Local jobs run under `mlgw supervise`; this binary is not mlgw, so point the process
    // capability at the mlgw binary built beside it.
    if std::env::var_os("MLGW_SUPERVISOR").is_none() {
        let mlgw = std::env::current_exe().unwrap().with_file_name("mlgw");
        assert!(
            mlgw.exists(),
            "{} is missing: cargo build --release -p mlgw first, or set MLGW_SUPERVISOR",
            mlgw.display()
        );
        // SAFETY: no other thread reads the environment yet.
        unsafe { std::env::set_var("MLGW_SUPERVISOR", mlgw) };
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("predict") {
        supervisor();
        return predict::run().await;
    }
    let clients: Vec<usize> = arg("--clients", "1,64")
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let secs: f64 = arg("--seconds", "5").parse().unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();

    supervisor();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::embedded();
    cfg.data_dir = dir.path().to_path_buf();
    let gw = mlgw::server::build(&cfg).await.unwrap();
    let job = Job {
        id: mlgw::store::new_id("j"),
        tenant: "default".into(),
        target: "local".into(),
        spec: TrainingSpec {
            name: "bench".into(),
            command: vec!["python3".into(), "train.py".into()],
            ..Default::default()
        },
        state: JobState::Running,
        message: String::new(),
        backend_state: "running pid 1".into(),
        backend_ref: None,
        output_uri: Some("file:///tmp/out".into()),
        created_at: now_ms(),
        updated_at: now_ms(),
        finished_at: None,
        cancel_requested: false,
        cancel_sent_at: None,
        sequence: 2,
        feed_sequence: 0,
    };
    gw.store.insert_job(job.clone(), None).unwrap();
    let gateway_addr = serve(mlgw::api::routes(gw.clone()).unwrap()).await;
    let fixed = TrainingServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{gateway_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .get(pb::GetJobRequest { id: job.id.clone() })
    .await
    .unwrap()
    .into_inner();
    let mut bare_routes = tonic::service::Routes::builder();
    bare_routes.add_service(training_service_server::TrainingServiceServer::new(Bare {
        job: fixed,
    }));
    let bare_addr = serve(bare_routes.routes()).await;

    println!("GetJob, {secs}s per round, {rounds} rounds alternating bare/gateway");
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>10}",
        "clients", "server", "req/s", "p50 µs", "p99 µs"
    );
    for &c in &clients {
        let (mut bare_rps, mut gw_rps) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (name, addr, acc) in [
                ("bare", bare_addr, &mut bare_rps),
                ("gateway", gateway_addr, &mut gw_rps),
            ] {
                let r = drive(addr, &job.id, c, secs).await;
                let rps = r.requests as f64 / r.seconds;
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

/// Predictions through the gateway against predictions straight to the same model server.
mod predict {
    use std::time::{Duration, Instant};

    use mlgw::api::oip::{
        self, grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::InferInputTensor,
    };
    use mlgw::config::Config;
    use mlgw::domain::{EndpointSpec, EndpointState};
    use mlgw_tests::iris::{ROWS, TRAIN};

    use super::{Run, arg, serve};

    const MODEL: &str = "bench";

    fn flat() -> Vec<f64> {
        ROWS.iter().flatten().copied().collect()
    }

    fn grpc_request() -> oip::ModelInferRequest {
        oip::ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![InferInputTensor {
                name: "input-0".into(),
                datatype: "FP64".into(),
                shape: vec![ROWS.len() as i64, 4],
                contents: Some(oip::InferTensorContents {
                    fp64_contents: flat(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The same request as OIP V2 JSON, as the gateway's data plane sends it on.
    fn rest_body() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"inputs": [{
            "name": "input-0", "shape": [ROWS.len(), 4], "datatype": "FP64", "data": flat()
        }]}))
        .unwrap()
    }

    #[derive(Clone, Copy)]
    enum Path {
        Gateway(std::net::SocketAddr),
        Direct,
    }

    fn summarise(mut all: Vec<Duration>, seconds: f64) -> Run {
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        Run {
            requests: all.len(),
            seconds,
            p50: pct(0.50),
            p99: pct(0.99),
        }
    }

    /// `clients` concurrent clients, each on its own connection, for `secs`.
    async fn drive(path: Path, infer_url: &str, clients: usize, secs: f64) -> Run {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let infer_url = infer_url.to_string();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                match path {
                    Path::Gateway(addr) => {
                        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                            .unwrap()
                            .tcp_nodelay(true)
                            .connect()
                            .await
                            .unwrap();
                        let mut c = GrpcInferenceServiceClient::new(ch);
                        let req = grpc_request();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            c.model_infer(req.clone()).await.unwrap();
                            lat.push(t.elapsed());
                        }
                    }
                    Path::Direct => {
                        let c = reqwest::Client::builder()
                            .tcp_nodelay(true)
                            .build()
                            .unwrap();
                        let body = rest_body();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            let r = c
                                .post(&infer_url)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()
                                .await
                                .unwrap();
                            assert!(r.status().is_success(), "{}", r.status());
                            r.bytes().await.unwrap();
                            lat.push(t.elapsed());
                        }
                    }
                }
                lat
            }));
        }
        let start = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        summarise(all, start.elapsed().as_secs_f64())
    }

    pub async fn run() {
        let clients: Vec<usize> = arg("--clients", "1,8")
            .split(',')
            .map(|c| c.parse().unwrap())
            .collect();
        let secs: f64 = arg("--seconds", "5").parse().unwrap();
        let rounds: usize = arg("--rounds", "3").parse().unwrap();

        // The local target starts `mlserver` from PATH: the test venv's.
        let venv = mlgw_tests::venv();
        let path = std::env::var("PATH").unwrap_or_default();
        // SAFETY: nothing has started reading the environment concurrently yet.
        unsafe {
            std::env::set_var("PATH", format!("{}:{path}", venv.join("bin").display()));
        }
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("model");
        std::fs::create_dir_all(&model_dir).unwrap();
        let trained = std::process::Command::new(mlgw_tests::python())
            .args(["-c", TRAIN])
            .env("MLGW_OUTPUT_DIR", &model_dir)
            .output()
            .unwrap();
        assert!(
            trained.status.success(),
            "{}",
            String::from_utf8_lossy(&trained.stderr)
        );

        let mut cfg = Config::embedded();
        cfg.data_dir = dir.path().join("data");
        let interval = Duration::from_millis(cfg.limits.reconcile_interval_ms);
        let gw = mlgw::server::build(&cfg).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let reconciler = tokio::spawn(mlgw::reconciler::run(
            gw.clone(),
            interval,
            interval,
            stop_rx,
        ));
        let gateway_addr = serve(mlgw::api::routes(gw.clone()).unwrap()).await;
        let ep = gw
            .deploy(
                "local",
                EndpointSpec {
                    name: MODEL.into(),
                    model_uri: format!("file://{}", model_dir.display()),
                    model_format: "sklearn".into(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        let started = Instant::now();
        let url = loop {
            let e = gw.get_endpoint(&ep.id).unwrap();
            assert!(e.state != EndpointState::Failed, "{}", e.message);
            if e.state == EndpointState::Ready
                && let Some(u) = e.url
            {
                break u;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the model server did not become ready: {}",
                e.message
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let infer_url = format!("{}/v2/models/{MODEL}/infer", url.trim_end_matches('/'));

        // Both paths answer the same before either is timed.
        let via_gw = GrpcInferenceServiceClient::connect(format!("http://{gateway_addr}"))
            .await
            .unwrap()
            .model_infer(grpc_request())
            .await
            .unwrap()
            .into_inner();
        let direct: serde_json::Value = serde_json::from_slice(
            &reqwest::Client::new()
                .post(&infer_url)
                .header("content-type", "application/json")
                .body(rest_body())
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        let want: Vec<i64> = serde_json::from_value(direct["outputs"][0]["data"].clone()).unwrap();
        assert_eq!(
            via_gw.outputs[0].contents.as_ref().unwrap().int64_contents,
            want
        );

        println!(
            "Predict ({} rows of iris, FP64), {secs}s per round, {rounds} rounds alternating \
             direct (REST to MLServer at {url}) / gateway (OIP gRPC ModelInfer)",
            ROWS.len()
        );
        println!(
            "{:>8} {:>10} {:>12} {:>10} {:>10}",
            "clients", "path", "pred/s", "p50 µs", "p99 µs"
        );
        // One short round each to warm connections and MLServer before anything counts.
        drive(Path::Direct, &infer_url, 1, 1.0).await;
        drive(Path::Gateway(gateway_addr), &infer_url, 1, 1.0).await;
        for &c in &clients {
            let (mut direct, mut via) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                for (name, path, acc) in [
                    ("direct", Path::Direct, &mut direct),
                    ("gateway", Path::Gateway(gateway_addr), &mut via),
                ] {
                    let r = drive(path, &infer_url, c, secs).await;
                    println!(
                        "{c:>8} {name:>10} {:>12.0} {:>10} {:>10}",
                        r.requests as f64 / r.seconds,
                        r.p50.as_micros(),
                        r.p99.as_micros()
                    );
                    acc.push(r);
                }
            }
            let rps = |v: &[Run]| {
                v.iter().map(|r| r.requests as f64).sum::<f64>()
                    / v.iter().map(|r| r.seconds).sum::<f64>()
            };
            let p50 = |v: &[Run]| {
                let mut p: Vec<Duration> = v.iter().map(|r| r.p50).collect();
                p.sort();
                p[p.len() / 2]
            };
            println!(
                "{c:>8} clients: gateway/direct throughput = {:.3}; p50 {} µs vs {} µs \
                 (median of rounds), added {} µs",
                rps(&via) / rps(&direct),
                p50(&via).as_micros(),
                p50(&direct).as_micros(),
                p50(&via).as_micros() as i128 - p50(&direct).as_micros() as i128
            );
        }

        gw.delete_endpoint(&ep.id).await.unwrap();
        let _ = stop_tx.send(true);
        let _ = reconciler.await;
    }
}
