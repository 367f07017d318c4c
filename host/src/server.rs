//! Assembling and running the gateway: store, plugins, reconciler and the gRPC server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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
    let runtime = Arc::new(Runtime::load(config, &store).await?);
    let dataplane = crate::dataplane::DataPlane::new(config)?;
    Ok(Arc::new(Gateway::new(store, runtime, dataplane, LOG_POLL)))
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
        stop_rx,
    ));
    tracing::info!(%addr, data_dir = %config.data_dir.display(), targets = ?gw.targets().iter().map(|t| t.name.clone()).collect::<Vec<_>>(), "mlgw serving");
    on_listening(addr);
    tonic::transport::Server::builder()
        .add_routes(api::routes(gw.clone())?)
        // Responses are small frames written back to back; with Nagle on, one can wait for
        // the client's delayed ACK (tens of milliseconds) behind the previous one.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    let _ = stop_tx.send(true);
    let _ = reconciler.await;
    gw.store.flush().await?;
    Ok(())
}
