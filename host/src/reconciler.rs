//! Keeps the store in step with the backends: polls live jobs and endpoints through their
//! plugins and records what changed, so Get, List and Watch answer from the store. After a
//! restart it simply finds the live records again. A record whose backend keeps failing is
//! retried with exponential backoff instead of every tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::gateway::Gateway;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const PARALLEL: usize = 8;

struct Backoff {
    next: Instant,
    delay: Duration,
}

pub async fn run(
    gw: Arc<Gateway>,
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
        let now = Instant::now();
        let due = |id: &str| backoff.get(id).is_none_or(|b| b.next <= now);
        let jobs = match gw.store.live_jobs() {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("reconciler: listing jobs: {e}");
                continue;
            }
        };
        let endpoints = match gw.store.live_endpoints() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("reconciler: listing endpoints: {e}");
                continue;
            }
        };
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
                    tracing::warn!(%id, retry_in = ?b.delay, "reconcile: {e}");
                }
            }
        }
    }
}
