//! Keeps the store in step with the backends: polls live jobs and endpoints through their
//! plugins and records what changed, so Get, List and Watch answer from the store. After a
//! restart it simply finds the live records again.
//!
//! Each target is reconciled by a task of its own, on its own budget of concurrent calls, so a
//! slow or hostile target only ever delays its own records: a sweep that waits on one target's
//! calls never holds up another's. A record whose backend keeps failing (or is not ready to take
//! it) is retried with exponential backoff instead of every tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::gateway::Gateway;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Records of one target reconciled at once (its calls are also bounded by the runtime's
/// per-target permits, which client calls share).
const PARALLEL: usize = 8;

struct Backoff {
    next: Instant,
    delay: Duration,
}

/// Runs until `stop` changes. Returns early only if a target's task died, which the caller
/// treats as the gateway failing.
pub async fn run(gw: Arc<Gateway>, interval: Duration, stop: tokio::sync::watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in gw.targets() {
        tasks.spawn(target_loop(
            gw.clone(),
            t.name.clone(),
            interval,
            stop.clone(),
        ));
    }
    // Every task ends on `stop`; one that ends before it panicked.
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!("reconciler: a target's task failed: {e}");
            return;
        }
    }
}

async fn target_loop(
    gw: Arc<Gateway>,
    target: String,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let started = Instant::now();
        let sweep = tracing::Instrument::instrument(
            sweep(&gw, &target, interval, &mut backoff),
            tracing::debug_span!("reconcile.sweep", mlgw.target = %target),
        );
        tokio::select! {
            _ = sweep => {}
            _ = stop.changed() => return,
        }
        crate::observability::metrics().sweep(&target, started.elapsed());
    }
}

async fn sweep(
    gw: &Arc<Gateway>,
    target: &str,
    interval: Duration,
    backoff: &mut HashMap<String, Backoff>,
) {
    let jobs = match gw.store.live_jobs_of(target) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(%target, "reconciler: listing jobs: {e}");
            return;
        }
    };
    let endpoints = match gw.store.live_endpoints_of(target) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(%target, "reconciler: listing endpoints: {e}");
            return;
        }
    };
    // Records that ended (or went) need no backoff any more.
    let live: std::collections::HashSet<&str> = jobs
        .iter()
        .map(|j| j.id.as_str())
        .chain(endpoints.iter().map(|e| e.id.as_str()))
        .collect();
    backoff.retain(|id, _| live.contains(id.as_str()));
    let now = Instant::now();
    let due = |id: &str| backoff.get(id).is_none_or(|b| b.next <= now);
    let mut work: Vec<BoxFuture<'static, (String, crate::error::Result<()>)>> = Vec::new();
    for j in jobs.into_iter().filter(|j| due(&j.id)) {
        let gw = gw.clone();
        work.push(
            async move {
                let r = gw.reconcile_job(&j).await;
                (j.id, r)
            }
            .boxed(),
        );
    }
    for e in endpoints.into_iter().filter(|e| due(&e.id)) {
        let gw = gw.clone();
        work.push(
            async move {
                let r = gw.reconcile_endpoint(&e).await;
                (e.id, r)
            }
            .boxed(),
        );
    }
    let results: Vec<_> = futures::stream::iter(work)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for (id, r) in results {
        match r {
            Ok(()) => {
                backoff.remove(&id);
            }
            Err(e) => {
                let b = backoff.entry(id.clone()).or_insert(Backoff {
                    next: now,
                    delay: interval,
                });
                b.delay = (b.delay * 2).min(MAX_BACKOFF);
                b.next = Instant::now() + b.delay;
                tracing::warn!(%target, %id, retry_in = ?b.delay, "reconcile: {e}");
            }
        }
    }
}
