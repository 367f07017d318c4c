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

use crate::capabilities::kube::cache::Wakeups;
use crate::domain::{Endpoint, EndpointState, Job, JobState};
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
pub async fn run(
    gw: Arc<Gateway>,
    interval: Duration,
    resync: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in gw.targets() {
        // A kube target's objects wake their records when they change; its steady records
        // are then only polled every `resync`.
        let wakeups = t.caps.kube.as_ref().map(|k| k.wakeups());
        tasks.spawn(target_loop(
            gw.clone(),
            t.name.clone(),
            interval,
            wakeups.map(|w| (w, resync)),
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

/// When each steady record was last polled, and how often it must be.
struct Resync {
    every: Duration,
    polled: HashMap<String, Instant>,
    wakeups: Arc<Wakeups>,
}

async fn target_loop(
    gw: Arc<Gateway>,
    target: String,
    interval: Duration,
    watched: Option<(Arc<Wakeups>, Duration)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (wakeups, mut resync) = match watched {
        Some((w, every)) => (
            Some(w.clone()),
            Some(Resync {
                every,
                polled: HashMap::new(),
                wakeups: w,
            }),
        ),
        None => (None, None),
    };
    loop {
        let woken = async {
            match &wakeups {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        let ids = tokio::select! {
            _ = tick.tick() => None,
            ids = woken => Some(ids),
            _ = stop.changed() => return,
        };
        let started = Instant::now();
        let work = async {
            match ids {
                Some(ids) => reconcile_woken(&gw, &target, ids, resync.as_mut()).await,
                None => sweep(&gw, &target, interval, &mut backoff, resync.as_mut()).await,
            }
        };
        let work = tracing::Instrument::instrument(
            work,
            tracing::debug_span!("reconcile.sweep", mlgw.target = %target),
        );
        tokio::select! {
            _ = work => {}
            _ = stop.changed() => return,
        }
        crate::observability::metrics().sweep(&target, started.elapsed());
    }
}

/// The records whose objects changed, reconciled now whatever their backoff says: the event
/// is news the backoff was waiting for.
async fn reconcile_woken(
    gw: &Arc<Gateway>,
    target: &str,
    ids: Vec<String>,
    mut resync: Option<&mut Resync>,
) {
    let mut work: Vec<BoxFuture<'static, (String, crate::error::Result<()>)>> = Vec::new();
    for id in ids {
        let gw = gw.clone();
        if let Ok(j) = gw.store.job(&id) {
            if j.target != target || j.state.is_terminal() {
                continue;
            }
            work.push(async move { (j.id.clone(), gw.reconcile_job(&j).await) }.boxed());
        } else if let Ok(e) = gw.store.endpoint(&id) {
            if e.target != target || e.state == EndpointState::Deleted {
                continue;
            }
            work.push(async move { (e.id.clone(), gw.reconcile_endpoint(&e).await) }.boxed());
        }
    }
    let results: Vec<_> = futures::stream::iter(work)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let now = Instant::now();
    for (id, r) in results {
        if let Some(r) = resync.as_deref_mut() {
            r.polled.insert(id.clone(), now);
        }
        if let Err(e) = r {
            tracing::debug!(%target, %id, "reconcile after an event: {e}");
        }
    }
}

/// A job or endpoint whose state only changes when its backend's objects do: on a watched
/// target it waits for their events (and the slow resync) instead of every tick.
fn steady_job(j: &Job) -> bool {
    j.state == JobState::Running && j.backend_ref.is_some() && !j.cancel_requested
}

fn steady_endpoint(e: &Endpoint) -> bool {
    e.state == EndpointState::Ready && e.backend_ref.is_some()
}

async fn sweep(
    gw: &Arc<Gateway>,
    target: &str,
    interval: Duration,
    backoff: &mut HashMap<String, Backoff>,
    mut resync: Option<&mut Resync>,
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
    if let Some(r) = resync.as_deref_mut() {
        r.polled.retain(|id, _| live.contains(id.as_str()));
        r.wakeups.retain(|id| live.contains(id));
    }
    // A steady record whose objects the watch delivers waits for their events; any other
    // record is polled every tick, as on a target without a watch.
    let resync_due = |id: &str, steady: bool| match resync.as_deref() {
        Some(r) if steady && r.wakeups.is_watched(id) => {
            r.polled.get(id).is_none_or(|at| now - *at >= r.every)
        }
        _ => true,
    };
    let due = |id: &str| backoff.get(id).is_none_or(|b| b.next <= now);
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| resync_due(&j.id, steady_job(j)))
        .collect();
    let endpoints: Vec<Endpoint> = endpoints
        .into_iter()
        .filter(|e| resync_due(&e.id, steady_endpoint(e)))
        .collect();
    if let Some(r) = resync {
        for id in jobs
            .iter()
            .map(|j| &j.id)
            .chain(endpoints.iter().map(|e| &e.id))
        {
            r.polled.insert(id.clone(), now);
        }
    }
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
