//! Assembling and running the gateway: store, plugins, reconciler and the gRPC server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::runtime::Runtime;
use crate::store::Store;
use crate::{api, reconciler};

/// How often follow-mode log streams poll for new lines.
const LOG_POLL: Duration = Duration::from_millis(250);

/// Opens the store and loads every target's plugin.
pub async fn build(config: &Config) -> anyhow::Result<Arc<Gateway>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let db = config.data_dir.join("db");
    let store = Store::open(&db).with_context(|| {
        format!(
            "opening the store at {} (is another gateway using this data dir?)",
            db.display()
        )
    })?;
    let artifacts = Arc::new(
        crate::artifacts::ArtifactStore::open(&config.artifacts, &config.data_dir)
            .await
            .context("opening the artifact store ([artifacts])")?,
    );
    let runtime = Arc::new(Runtime::load(config, &store, artifacts.clone()).await?);
    let dataplane = crate::dataplane::DataPlane::new(config)?.with_runtime(&runtime);
    Ok(Arc::new(Gateway::new(
        store, runtime, dataplane, artifacts, LOG_POLL,
    )))
}

/// Serves until `shutdown` resolves. `on_listening` learns the bound address (port 0 works).
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let gw = build(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reconciler = tokio::spawn(reconciler::run(
        gw.clone(),
        Duration::from_millis(config.limits.reconcile_interval_ms),
        Duration::from_millis(config.limits.kube_resync_ms),
        stop_rx,
    ));
    // Stopped by dropping it: each of its batches is one transaction.
    let pruner = config.store.retention().map(|keep| {
        tokio::spawn(crate::store::prune_periodically(
            gw.store.clone(),
            keep,
            Duration::from_millis(config.store.prune_interval_ms),
        ))
    });
    let routes = api::routes(gw.clone())?;
    // Metrics on their own port, so a scrape never queues behind gRPC and the port can be
    // opened to Prometheus alone.
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = match config.observability.metrics_listen {
        Some(at) => {
            let listener = crate::observability::metrics::bind(at).await?;
            tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
            let targets = gw.targets().iter().map(|t| t.name.clone()).collect();
            Some(tokio::spawn(crate::observability::metrics::serve(
                listener,
                gw.store.clone(),
                targets,
                async move {
                    let _ = metrics_stopped.await;
                },
            )))
        }
        None => None,
    };
    tracing::info!(%addr, data_dir = %config.data_dir.display(), targets = ?gw.targets().iter().map(|t| t.name.clone()).collect::<Vec<_>>(), "mlgw serving");
    on_listening(addr);
    let serving = async {
        tonic::transport::Server::builder()
            // One span per RPC: plugin and capability calls it makes are its children.
            .trace_fn(|req| tracing::info_span!("rpc", rpc.method = %req.uri().path()))
            .add_routes(routes)
            // Responses are small frames written back to back; with Nagle on, one can wait for
            // the client's delayed ACK (tens of milliseconds) behind the previous one.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
            .map_err(anyhow::Error::from)
    };
    let served = supervise(serving, "reconciler", reconciler, move || {
        let _ = stop_tx.send(true);
    })
    .await;
    if let Some(p) = pruner {
        p.abort();
    }
    let _ = metrics_stop.send(());
    if let Some(m) = metrics {
        let _ = m.await;
    }
    // Whatever ended it, what was written so far is kept.
    gw.store.flush().await?;
    served
}

/// Runs `serving` to its end, then stops `background` (with `stop`) and waits for it. If
/// `background` ends first — a panic, or a return while nothing asked it to stop — the gateway
/// would go on answering from records nobody updates any more: that is logged as an error and
/// ends the serving with one, so the process exits non-zero.
async fn supervise<F>(
    serving: F,
    task: &'static str,
    mut background: JoinHandle<()>,
    stop: impl FnOnce(),
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    tokio::select! {
        served = serving => {
            stop();
            if let Err(e) = background.await {
                tracing::error!(task, "ended badly while stopping: {}", join_error(e));
            }
            served
        }
        ended = &mut background => {
            let why = match ended {
                Ok(()) => "it returned".to_string(),
                Err(e) => join_error(e),
            };
            tracing::error!(task, "{why}; stopping the gateway");
            Err(anyhow::anyhow!(
                "the {task} stopped while the gateway was serving ({why})"
            ))
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("it panicked: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_background_task_that_panics_stops_serving_with_an_error() {
        let task = tokio::spawn(async { panic!("interval must be non-zero") });
        let e = supervise(std::future::pending(), "reconciler", task, || {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reconciler") && e.contains("panicked: interval must be non-zero"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_background_task_that_returns_stops_serving_with_an_error() {
        let task = tokio::spawn(async {});
        let e = supervise(std::future::pending(), "reconciler", task, || {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reconciler stopped") && e.contains("returned"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_normal_shutdown_stops_the_background_task_and_waits_for_it() {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let finished = finished.clone();
            async move {
                let _ = stop_rx.changed().await;
                // Still some way from done when told to stop, as the reconciler can be.
                tokio::task::yield_now().await;
                finished.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        supervise(async { Ok(()) }, "reconciler", task, move || {
            let _ = stop_tx.send(true);
        })
        .await
        .unwrap();
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }
}
