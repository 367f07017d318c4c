//! Pieces the load generator (`mlgw-loadgen`) is built from: the bare tonic baseline, a
//! server that can be stopped, GetJob and predict drivers, and the one-table benchmark
//! (`table`). Everything here measures; nothing asserts on time.

pub mod kwok;
pub mod predict;
pub mod table;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mlgw::api::pb::{
    self, training_service_client::TrainingServiceClient, training_service_server,
};
use mlgw::domain::{Job, JobState, TrainingSpec, now_ms};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The baseline: a TrainingService whose Get answers a fixed job and does nothing else.
pub struct Bare {
    pub job: pb::Job,
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

pub fn bare_routes(job: pb::Job) -> tonic::service::Routes {
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(training_service_server::TrainingServiceServer::new(Bare {
        job,
    }));
    routes.routes()
}

/// A gRPC server on a loopback port, stopped (and everything it holds dropped) by `stop`.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// Stops accepting, waits for open connections to close and the server to end, so a
    /// gateway it served releases its store.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

pub async fn serve(routes: tonic::service::Routes) -> Served {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(l).with_nodelay(Some(true)),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap()
    });
    Served {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

pub async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

/// Requests done in a timed round, and their latencies.
pub struct Run {
    pub requests: usize,
    pub seconds: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Run {
    pub fn from_latencies(mut all: Vec<Duration>, seconds: f64) -> Self {
        all.sort();
        Run {
            requests: all.len(),
            seconds,
            p50: percentile(&all, 0.50),
            p99: percentile(&all, 0.99),
        }
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// `p` of sorted `v`; zero for an empty one.
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// Rounds taken together: total requests over total time, and the median round's p50/p99.
pub fn combine(runs: &[Run]) -> Run {
    let median = |f: fn(&Run) -> Duration| {
        let mut v: Vec<Duration> = runs.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    Run {
        requests: runs.iter().map(|r| r.requests).sum(),
        seconds: runs.iter().map(|r| r.seconds).sum(),
        p50: median(|r| r.p50),
        p99: median(|r| r.p99),
    }
}

/// `clients` concurrent GetJob clients, each on its own connection, for `secs`.
pub async fn drive_get(addr: SocketAddr, id: &str, clients: usize, secs: f64) -> Run {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let id = id.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = TrainingServiceClient::new(channel(addr).await);
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
    Run::from_latencies(all, start.elapsed().as_secs_f64())
}

/// A gateway on the embedded defaults with its data in `data_dir`, its API served on
/// loopback and its reconciler running (stopped with `Live::stop`).
pub struct Live {
    pub gw: std::sync::Arc<mlgw::gateway::Gateway>,
    pub served: Served,
    stop: tokio::sync::watch::Sender<bool>,
    reconciler: tokio::task::JoinHandle<()>,
}

impl Live {
    pub async fn start(data_dir: std::path::PathBuf) -> Self {
        let mut cfg = mlgw::config::Config::embedded();
        cfg.data_dir = data_dir;
        let interval = Duration::from_millis(cfg.limits.reconcile_interval_ms);
        let gw = mlgw::server::build(&cfg).await.unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let reconciler = tokio::spawn(mlgw::reconciler::run(
            gw.clone(),
            interval,
            interval,
            stop_rx,
        ));
        let served = serve(mlgw::api::routes(gw.clone()).unwrap()).await;
        Self {
            gw,
            served,
            stop,
            reconciler,
        }
    }

    /// Stops the reconciler and gives back what is still served.
    pub async fn stop(self) -> Served {
        let _ = self.stop.send(true);
        let _ = self.reconciler.await;
        self.served
    }
}

/// The GetJob pair: the real API on a fresh gateway holding `fixed_job()`, and a bare tonic
/// handler answering exactly what the gateway answered. Returns the gateway, both servers and
/// the job's id.
pub async fn get_job_pair(
    dir: &std::path::Path,
) -> (
    std::sync::Arc<mlgw::gateway::Gateway>,
    Served,
    Served,
    String,
) {
    let mut cfg = mlgw::config::Config::embedded();
    cfg.data_dir = dir.to_path_buf();
    let gw = mlgw::server::build(&cfg).await.unwrap();
    let job = fixed_job();
    gw.store.insert_job(job.clone(), None).await.unwrap();
    let gateway = serve(mlgw::api::routes(gw.clone()).unwrap()).await;
    let fixed =
        pb::training_service_client::TrainingServiceClient::new(channel(gateway.addr).await)
            .get(pb::GetJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
    let bare = serve(bare_routes(fixed)).await;
    (gw, gateway, bare, job.id)
}

/// A running job on the local target, as GetJob serves it.
pub fn fixed_job() -> Job {
    Job {
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
    }
}

pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// The release (or debug) `mlgw` binary built beside this one.
pub fn mlgw_bin() -> std::path::PathBuf {
    let mlgw = std::env::current_exe().unwrap().with_file_name("mlgw");
    assert!(
        mlgw.exists(),
        "{} is missing: cargo build --release -p mlgw first",
        mlgw.display()
    );
    mlgw
}

/// Local jobs run under `mlgw supervise`; this binary is not mlgw, so point the process
/// capability at the mlgw binary built beside it.
pub fn supervisor() {
    if std::env::var_os("MLGW_SUPERVISOR").is_none() {
        let mlgw = mlgw_bin();
        // SAFETY: called before anything that reads the environment has started.
        unsafe { std::env::set_var("MLGW_SUPERVISOR", mlgw) };
    }
}
