//! Prometheus metrics. Counters and histograms are recorded where things happen (plugin calls,
//! predictions, reconcile sweeps); the record counts and the store's size are read from the
//! store's indexes when Prometheus scrapes, so they are never out of step with it.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{
    Counter, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::{EndpointState, JobState};
use crate::runtime::{BackendFailure, PluginError};
use crate::store::{Store, WriterStats};

/// Seconds: from a status call on a warm instance (~1 ms) to a slow backend (the call deadline).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    plugin_calls: HistogramVec,
    plugin_errors: IntCounterVec,
    predictions: HistogramVec,
    sweeps: HistogramVec,
    jobs: IntGaugeVec,
    endpoints: IntGaugeVec,
    store_bytes: IntGauge,
}

/// The store writer's counters as Prometheus counters, made at each scrape from the writer's
/// own totals: they are the writer's numbers, so there is no second count to keep in step.
fn writer_families(now: WriterStats) -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::core::Collector;
    let int = |name: &str, help: &str, v: u64| {
        let c = IntCounter::new(name, help).expect("a valid counter");
        c.inc_by(v);
        c.collect()
    };
    let float = |name: &str, help: &str, v: f64| {
        let c = Counter::new(name, help).expect("a valid counter");
        c.inc_by(v.max(0.0));
        c.collect()
    };
    [
        int(
            "mlgw_store_write_batches_total",
            "Transactions of the store's job writer; writes_total over this is how many \
             writes share one.",
            now.batches,
        ),
        int(
            "mlgw_store_writes_total",
            "Job writes the store's writer applied.",
            now.writes,
        ),
        float(
            "mlgw_store_write_transaction_seconds_total",
            "Time the store's writer spent in transactions.",
            now.transaction_seconds,
        ),
        int(
            "mlgw_store_flushes_total",
            "Flushes of the store's writer; each makes every write before it durable.",
            now.flushes,
        ),
        float(
            "mlgw_store_flush_seconds_total",
            "Time the store's writer spent flushing, which the next batch waits out.",
            now.flush_seconds,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics (one gateway per process).
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("a valid histogram")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge")
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            registry: Registry::new(),
            plugin_calls: histogram(
                "mlgw_plugin_call_duration_seconds",
                "Plugin calls by target and operation, from admission to answer.",
                &["target", "operation"],
            ),
            plugin_errors: IntCounterVec::new(
                Opts::new(
                    "mlgw_plugin_errors_total",
                    "Plugin calls that failed, by target and kind of failure.",
                ),
                &["target", "kind"],
            )
            .expect("a valid counter"),
            predictions: histogram(
                "mlgw_dataplane_request_duration_seconds",
                "Predictions through the data plane, by target and outcome (ok, error).",
                &["target", "outcome"],
            ),
            sweeps: histogram(
                "mlgw_reconcile_sweep_duration_seconds",
                "One reconcile sweep over a target's live records: how far behind the \
                 backends the store can be, beyond the interval.",
                &["target"],
            ),
            jobs: gauge(
                "mlgw_jobs",
                "Jobs in the store by target and state.",
                &["target", "state"],
            ),
            endpoints: gauge(
                "mlgw_endpoints",
                "Endpoints in the store by target and state.",
                &["target", "state"],
            ),
            store_bytes: IntGauge::new("mlgw_store_size_bytes", "The store's size on disk.")
                .expect("a valid gauge"),
        };
        for c in [
            Box::new(m.plugin_calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.plugin_errors.clone()),
            Box::new(m.predictions.clone()),
            Box::new(m.sweeps.clone()),
            Box::new(m.jobs.clone()),
            Box::new(m.endpoints.clone()),
            Box::new(m.store_bytes.clone()),
        ] {
            m.registry.register(c).expect("each metric registered once");
        }
        m
    }

    pub fn plugin_call(
        &self,
        target: &str,
        operation: &str,
        took: Duration,
        error: Option<&PluginError>,
    ) {
        self.plugin_calls
            .with_label_values(&[target, operation])
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            self.plugin_errors
                .with_label_values(&[target, error_kind(e)])
                .inc();
        }
    }

    pub fn prediction(&self, target: &str, took: Duration, ok: bool) {
        self.predictions
            .with_label_values(&[target, if ok { "ok" } else { "error" }])
            .observe(took.as_secs_f64());
    }

    pub fn sweep(&self, target: &str, took: Duration) {
        self.sweeps
            .with_label_values(&[target])
            .observe(took.as_secs_f64());
    }

    /// The text exposition format, with the store's counts as of now.
    pub fn render(&self, store: &Store, targets: &[String]) -> String {
        for t in targets {
            for s in JOB_STATES {
                let n = store.count_jobs(t, s).unwrap_or(-1);
                self.jobs.with_label_values(&[t, s.as_str()]).set(n);
            }
        }
        let mut by_state: std::collections::HashMap<(String, EndpointState), i64> =
            Default::default();
        if let Ok((eps, _)) = store.list_endpoints(|_| true, None, usize::MAX) {
            for e in eps {
                *by_state.entry((e.target, e.state)).or_default() += 1;
            }
        }
        for t in targets {
            for s in ENDPOINT_STATES {
                let n = by_state.get(&(t.clone(), s)).copied().unwrap_or(0);
                self.endpoints.with_label_values(&[t, s.as_str()]).set(n);
            }
        }
        self.store_bytes
            .set(store.size_on_disk().map(|b| b as i64).unwrap_or(-1));
        let mut families = self.registry.gather();
        families.extend(writer_families(store.writer_stats()));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

const JOB_STATES: [JobState; 5] = [
    JobState::Pending,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

const ENDPOINT_STATES: [EndpointState; 6] = [
    EndpointState::Creating,
    EndpointState::Ready,
    EndpointState::Updating,
    EndpointState::Degraded,
    EndpointState::Failed,
    EndpointState::Deleted,
];

fn error_kind(e: &PluginError) -> &'static str {
    match e {
        PluginError::Backend { failure, .. } => match failure {
            BackendFailure::InvalidSpec { .. } => "invalid_spec",
            BackendFailure::NotFound(_) => "not_found",
            BackendFailure::Denied { .. } => "denied",
            BackendFailure::Unavailable(_) => "unavailable",
            BackendFailure::Throttled(_) => "throttled",
            BackendFailure::Conflict(_) => "conflict",
            BackendFailure::Unsupported(_) => "unsupported",
            BackendFailure::Internal(_) => "internal",
        },
        PluginError::Trap { .. } => "trap",
        PluginError::Deadline { .. } => "deadline",
        PluginError::OverBudget { .. } => "over_budget",
        PluginError::MemoryExhausted { .. } => "memory",
        PluginError::Unsupported { .. } => "feature_unsupported",
        PluginError::Load { .. } => "load",
        PluginError::Oversized { .. } => "oversized",
        PluginError::Contract { .. } => "contract",
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    targets: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new((store, targets));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                // Counting records reads the store: not on a runtime thread.
                let text =
                    tokio::task::spawn_blocking(move || metrics().render(&state.0, &state.1))
                        .await
                        .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr} (observability.metrics_listen)"))
}
