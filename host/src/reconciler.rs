//! Keeps the store in step with the backends: polls live jobs and endpoints through their
//! plugins and records what changed, so Get, List and Watch answer from the store. After a
//! restart it simply finds the live records again.
//!
//! Each target is reconciled by a task of its own, on its own budget of concurrent calls, so a
//! slow or hostile target only ever delays its own records: a sweep that waits on one target's
//! calls never holds up another's. A record whose backend keeps failing (or is not ready to take
//! it) is retried with exponential backoff instead of every tick.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

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

/// When each steady record of a watched target is next polled anyway, in case an event was
/// missed. Shared by the target's two loops: the sweep that polls what is due, and the loop
/// that reconciles records their objects' events woke.
struct Resync {
    every: Duration,
    due: Mutex<HashMap<String, Instant>>,
    wakeups: Arc<Wakeups>,
    /// Seeds the spread of due times (random per process).
    spread: std::collections::hash_map::RandomState,
    /// Records being reconciled now, by either loop; true if an event came meanwhile. Two
    /// reconciles of one record at once could record an older observation after a newer one.
    inflight: Mutex<HashMap<String, bool>>,
    /// Jobs read steady and not written since: a sweep skips them without reading them.
    /// Reading and decoding every live job every tick was 44 % of the gateway's core with
    /// 10,000 running jobs.
    steady: Mutex<Steady>,
}

struct Steady {
    ids: std::collections::HashSet<String>,
    written: tokio::sync::broadcast::Receiver<Arc<str>>,
}

impl Steady {
    /// Forgets every job written since the last sweep: it is read again. Writes missed (the
    /// channel lagged) leave nothing to go by: every job is read again.
    fn absorb(&mut self) {
        use tokio::sync::broadcast::error::TryRecvError;
        loop {
            match self.written.try_recv() {
                Ok(id) => {
                    self.ids.remove(&*id);
                }
                Err(TryRecvError::Lagged(_)) => self.ids.clear(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }
}

impl Resync {
    /// The next resync of a record just reconciled: somewhere in the second half of `every`,
    /// a different point each time. Records reconciled together (a relist after the watch was
    /// lost wakes every one of them) would otherwise all come due in the same sweep, every
    /// `every`, and that sweep would queue thousands of calls at once.
    fn next_due(&self, id: &str, now: Instant) -> Instant {
        use std::hash::BuildHasher;
        let half = self.every / 2;
        let jitter = self.spread.hash_one((id, now)) % (half.as_millis().max(1) as u64);
        now + half + Duration::from_millis(jitter)
    }

    /// Whether a record, steady as far as the caller knows, waits for its events (and its
    /// resync) instead of being polled now. A record first seen steady is due now: nothing
    /// says when it was last polled.
    fn waits(&self, due: &HashMap<String, Instant>, id: &str, steady: bool, now: Instant) -> bool {
        steady && due.get(id).is_some_and(|at| *at > now) && self.wakeups.is_watched(id)
    }

    /// Every live job's id, and the jobs a sweep must look at: all but those read steady,
    /// not written since, watched and not yet due for their resync, which are not read.
    fn live_jobs(
        &self,
        gw: &Gateway,
        target: &str,
        now: Instant,
    ) -> Result<(Vec<String>, Vec<Job>), crate::store::StoreError> {
        let ids = gw.store.live_job_ids_of(target)?;
        let skip: std::collections::HashSet<&str> = {
            let mut steady = self.steady.lock().unwrap_or_else(|p| p.into_inner());
            steady.absorb();
            let due = self.due.lock().unwrap_or_else(|p| p.into_inner());
            ids.iter()
                .map(String::as_str)
                .filter(|id| self.waits(&due, id, steady.ids.contains(*id), now))
                .collect()
        };
        let mut jobs = Vec::new();
        for id in ids.iter().filter(|id| !skip.contains(id.as_str())) {
            match gw.store.job(id) {
                Ok(j) => jobs.push(j),
                // Pruned or gone between the index and the read.
                Err(crate::store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut steady = self.steady.lock().unwrap_or_else(|p| p.into_inner());
        // A write between the read above and now is absorbed by the next sweep, which then
        // reads that job again.
        for j in &jobs {
            if steady_job(j) {
                steady.ids.insert(j.id.clone());
            } else {
                steady.ids.remove(&j.id);
            }
        }
        drop(steady);
        Ok((ids, jobs))
    }

    /// Whether this caller may reconcile `id` now. A woken record already being reconciled
    /// is reconciled again once that ends (the event may be newer than what it observed);
    /// a sweep's poll of it is simply not needed.
    fn claim(&self, id: &str, woken: bool) -> bool {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        match inflight.get_mut(id) {
            Some(again) => {
                *again |= woken;
                false
            }
            None => {
                inflight.insert(id.to_string(), false);
                true
            }
        }
    }

    /// Ends a claim; the record's next resync counts from now.
    fn release(&self, id: &str) {
        let now = Instant::now();
        let again = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .unwrap_or(false);
        let at = self.next_due(id, now);
        self.due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), at);
        if again {
            self.wakeups.wake(id);
        }
    }
}

async fn target_loop(
    gw: Arc<Gateway>,
    target: String,
    interval: Duration,
    watched: Option<(Arc<Wakeups>, Duration)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let resync = watched.map(|(wakeups, every)| {
        Arc::new(Resync {
            every,
            due: Mutex::new(HashMap::new()),
            wakeups,
            spread: Default::default(),
            inflight: Mutex::new(HashMap::new()),
            steady: Mutex::new(Steady {
                ids: Default::default(),
                written: gw.store.written_jobs(),
            }),
        })
    });
    let sweeps = sweep_loop(&gw, &target, interval, resync.clone());
    // Woken records are reconciled on their own loop: an event never waits for a sweep
    // (which can take long, polling what came due) to finish.
    let woken = async {
        match &resync {
            Some(r) => loop {
                let ids = r.wakeups.next().await;
                let work = reconcile_woken(&gw, &target, ids, r);
                tracing::Instrument::instrument(
                    work,
                    tracing::debug_span!("reconcile.woken", mlgw.target = %target),
                )
                .await;
            },
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = sweeps => {}
        _ = woken => {}
        _ = stop.changed() => {}
    }
}

async fn sweep_loop(
    gw: &Arc<Gateway>,
    target: &str,
    interval: Duration,
    resync: Option<Arc<Resync>>,
) {
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let work = sweep(gw, target, interval, &mut backoff, resync.as_ref());
        tracing::Instrument::instrument(
            work,
            tracing::debug_span!("reconcile.sweep", mlgw.target = %target),
        )
        .await;
        crate::observability::metrics().sweep(target, started.elapsed());
    }
}

/// The records whose objects changed, reconciled now whatever their backoff says: the event
/// is news the backoff was waiting for.
async fn reconcile_woken(gw: &Arc<Gateway>, target: &str, ids: Vec<String>, resync: &Arc<Resync>) {
    let work = ids.into_iter().map(|id| {
        let (gw, r, target) = (gw.clone(), resync.clone(), target.to_string());
        async move {
            if !r.claim(&id, true) {
                return;
            }
            // Read after the claim: a reconcile that just ended may have changed the record.
            let done = if let Ok(j) = gw.store.job(&id) {
                if j.target != target || j.state.is_terminal() {
                    None
                } else {
                    Some(gw.reconcile_job(&j).await)
                }
            } else if let Ok(e) = gw.store.endpoint(&id) {
                if e.target != target || e.state == EndpointState::Deleted {
                    None
                } else {
                    Some(gw.reconcile_endpoint(&e).await)
                }
            } else {
                None
            };
            if let Some(Err(e)) = done {
                tracing::debug!(%target, %id, "reconcile after an event: {e}");
            }
            r.release(&id);
        }
    });
    futures::stream::iter(work)
        .buffer_unordered(PARALLEL)
        .collect::<()>()
        .await;
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
    resync: Option<&Arc<Resync>>,
) {
    let now = Instant::now();
    let listed = match resync {
        Some(r) => r.live_jobs(gw, target, now),
        None => gw.store.live_jobs_of(target).map(|jobs| {
            let ids = jobs.iter().map(|j| j.id.clone()).collect();
            (ids, jobs)
        }),
    };
    let (live_ids, jobs): (Vec<String>, Vec<Job>) = match listed {
        Ok(l) => l,
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
    let live: std::collections::HashSet<&str> = live_ids
        .iter()
        .map(String::as_str)
        .chain(endpoints.iter().map(|e| e.id.as_str()))
        .collect();
    backoff.retain(|id, _| live.contains(id.as_str()));
    // A steady record whose objects the watch delivers waits for their events, and for its
    // resync; any other record is polled every tick, as on a target without a watch.
    let (jobs, endpoints) = match resync {
        None => (jobs, endpoints),
        Some(r) => {
            // Records that ended (or went) are forgotten by each of the resync's sets.
            r.wakeups.retain(|id| live.contains(id));
            r.steady
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .ids
                .retain(|id| live.contains(id.as_str()));
            let mut due = r.due.lock().unwrap_or_else(|p| p.into_inner());
            due.retain(|id, _| live.contains(id.as_str()));
            let waits = |id: &str, steady: bool| r.waits(&due, id, steady, now);
            let jobs: Vec<Job> = jobs
                .into_iter()
                .filter(|j| !waits(&j.id, steady_job(j)))
                .collect();
            let endpoints: Vec<Endpoint> = endpoints
                .into_iter()
                .filter(|e| !waits(&e.id, steady_endpoint(e)))
                .collect();
            (jobs, endpoints)
        }
    };
    let due = |id: &str| backoff.get(id).is_none_or(|b| b.next <= now);
    let records = jobs
        .into_iter()
        .filter(|j| due(&j.id))
        .map(Record::Job)
        .chain(
            endpoints
                .into_iter()
                .filter(|e| due(&e.id))
                .map(Record::Endpoint),
        );
    let work = records.map(|rec| {
        let (gw, resync) = (gw.clone(), resync.cloned());
        async move {
            let id = rec.id().to_string();
            // The woken loop has it: its event is newer than this poll.
            if let Some(r) = &resync
                && !r.claim(&id, false)
            {
                return (id, Ok(()));
            }
            let done = match &rec {
                Record::Job(j) => gw.reconcile_job(j).await,
                Record::Endpoint(e) => gw.reconcile_endpoint(e).await,
            };
            if let Some(r) = &resync {
                r.release(&id);
            }
            (id, done)
        }
    });
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

enum Record {
    Job(Job),
    Endpoint(Endpoint),
}

impl Record {
    fn id(&self) -> &str {
        match self {
            Record::Job(j) => &j.id,
            Record::Endpoint(e) => &e.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resync(every: Duration) -> Resync {
        Resync {
            every,
            due: Mutex::new(HashMap::new()),
            wakeups: Arc::new(Wakeups::default()),
            spread: Default::default(),
            inflight: Mutex::new(HashMap::new()),
            steady: Mutex::new(Steady {
                ids: Default::default(),
                written: tokio::sync::broadcast::channel(16).1,
            }),
        }
    }

    /// A running job of target `kw` with a backend.
    fn job(id: &str) -> Job {
        let mut j = crate::store::test_job(id);
        j.target = "kw".into();
        j.state = JobState::Running;
        j.backend_ref = Some(crate::domain::BackendRef {
            name: "b".into(),
            data: String::new(),
        });
        j
    }

    #[tokio::test]
    async fn a_steady_job_written_since_it_was_read_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut steady = Steady {
            ids: Default::default(),
            written: store.written_jobs(),
        };
        for id in ["j-1", "j-2"] {
            store.insert_job(job(id), None).await.unwrap();
        }
        // Read after they were written: steady from here.
        steady.absorb();
        steady.ids.extend(["j-1".into(), "j-2".into()]);
        assert_eq!(store.live_job_ids_of("kw").unwrap(), ["j-1", "j-2"]);
        // A cancel request is no news to watchers, but the job is no longer steady.
        store
            .update_job("j-1", |j| {
                j.cancel_requested = true;
                false
            })
            .await
            .unwrap();
        // A poll that changed nothing writes nothing, and forgets nothing.
        store.update_job("j-2", |_| false).await.unwrap();
        steady.absorb();
        assert_eq!(steady.ids, ["j-2".to_string()].into());
    }

    #[test]
    fn writes_missed_forget_every_steady_job() {
        let (tx, rx) = tokio::sync::broadcast::channel::<Arc<str>>(2);
        let mut steady = Steady {
            ids: ["a".to_string(), "b".to_string()].into(),
            written: rx,
        };
        for id in ["x", "y", "z"] {
            tx.send(id.into()).unwrap();
        }
        steady.absorb();
        assert!(steady.ids.is_empty());
    }

    #[tokio::test]
    async fn records_reconciled_together_come_due_spread_over_the_second_half_of_the_resync() {
        let r = resync(Duration::from_secs(600));
        let now = Instant::now();
        let offsets: Vec<Duration> = (0..1000)
            .map(|i| r.next_due(&format!("j-{i}"), now) - now)
            .collect();
        assert!(
            offsets
                .iter()
                .all(|o| *o >= Duration::from_secs(300) && *o < Duration::from_secs(600)),
            "{:?} to {:?}",
            offsets.iter().min(),
            offsets.iter().max()
        );
        // Spread, not bunched: each tenth of the window holds some of them.
        for tenth in 0..10 {
            let (lo, hi) = (300 + 30 * tenth, 330 + 30 * tenth);
            let n = offsets
                .iter()
                .filter(|o| o.as_secs() >= lo && o.as_secs() < hi)
                .count();
            assert!(n > 40, "{n} of 1000 due in [{lo}s, {hi}s)");
        }
    }

    #[tokio::test]
    async fn an_event_for_a_record_being_reconciled_reconciles_it_again_after() {
        let r = resync(Duration::from_secs(600));
        assert!(r.claim("j-1", false), "a sweep takes a free record");
        assert!(
            !r.claim("j-1", true),
            "an event waits for the running reconcile"
        );
        assert!(!r.claim("j-1", false), "so does another poll");
        r.release("j-1");
        let woken = tokio::time::timeout(Duration::from_secs(5), r.wakeups.next())
            .await
            .expect("the event's record is woken again once the reconcile ends");
        assert_eq!(woken, vec!["j-1".to_string()]);
        assert!(r.claim("j-1", true));
        r.release("j-1");
        // Nothing came meanwhile: no second wake-up.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), r.wakeups.next())
                .await
                .is_err()
        );
        let due = r.due.lock().unwrap()["j-1"];
        assert!(due > Instant::now() + Duration::from_secs(299));
    }

    #[tokio::test]
    async fn a_poll_skipped_for_a_busy_record_does_not_wake_it() {
        let r = resync(Duration::from_secs(60));
        assert!(r.claim("e-1", true));
        assert!(!r.claim("e-1", false));
        r.release("e-1");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), r.wakeups.next())
                .await
                .is_err()
        );
    }
}
