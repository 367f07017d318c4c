//! The job write path: one thread applies every job write, many at a time, and makes them
//! durable with shared flushes.
//!
//! Why one writer: sled runs every multi-tree transaction under one global lock whose other
//! side its `flush` holds for the whole fsync, so transactions from many callers queued
//! behind each flush and behind each other (a Submit was ~0.45 ms of store time, two writes
//! of it, serialised: ~2,000 Submits/s at best). Here the writer takes everything queued, applies
//! it in one transaction, flushes, and repeats: while a flush runs the next batch gathers, a
//! transaction never waits for a flush, and its fixed cost is shared by the batch.
//!
//! Callers do the decoding and the deciding (what an update changes) on their own threads and
//! send the result with the record's bytes as they read them; the writer applies a write only
//! if the record is still those bytes, and otherwise answers `Applied::Changed` so the caller
//! reads again (as `update_job` does). The writer itself numbers the changes for the feed, so
//! feed order is the order the writes are applied and published in. An update that changes
//! only the record, with no news and no index entry (a Submit's backend handle), does not come
//! here: `update_job` swaps it in with one compare-and-swap, which sled orders against the
//! writer's transactions like any read.
//!
//! Durability: an insert is answered once the flush after it is done (Submit's record must be
//! on disk before it answers); an update as soon as it is applied (a caller that needs it
//! durable asks `commit` after). Changes are published to watchers after the flush that made
//! them durable: a watcher never sees a change that a crash could take back, so a client
//! resuming after the last feed sequence it saw misses nothing and sees nothing twice.
//!
//! A change nobody waits on does not ask for a flush of its own: it waits for the next flush,
//! one that someone asked for or, at the latest `publish_within` after the first such change,
//! one the writer starts for it. A writer that nobody waits on (the reconciler recording
//! polls) then costs one flush per window instead of one per write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::{broadcast, oneshot};

use super::{
    Change, StoreError, encode_event, encode_job, event_feed_sequence, event_key, idem_owner_key,
    reindex,
};
use crate::domain::Job;

/// How long a change that nobody waits on may wait for a flush before the writer starts
/// one: short against what a watcher notices, long against a flush (a few ms under load).
pub const PUBLISH_WITHIN: Duration = Duration::from_millis(10);

/// Writes applied in one transaction at most: the transaction holds sled's global lock, and
/// every read waits for it, so a batch is bounded to keep reads' waits to a few ms.
const MAX_BATCH: usize = 256;

/// One job write, decided by its caller.
pub(super) enum JobWrite {
    /// A new record, unless `idem` already names one.
    Insert {
        job: Job,
        idem: Option<Vec<u8>>,
        keys: Vec<Vec<u8>>,
    },
    /// `job` replaces the record if it still is `expect`.
    Update {
        expect: sled::IVec,
        job: Job,
        /// Watchers hear of it: it gets a feed sequence and an event.
        notify: bool,
        /// The record's bytes, encoded by the caller, exactly when `notify` is false (its feed
        /// sequence does not change).
        bytes: Option<Vec<u8>>,
        old_keys: Vec<Vec<u8>>,
        new_keys: Vec<Vec<u8>>,
    },
}

/// What a write did.
#[derive(Clone)]
pub(super) enum Applied {
    Created(Job),
    /// The idempotency key named this record already.
    Existing(String),
    Updated(Job),
    /// The record is no longer the bytes the caller read: read again and decide again.
    Changed,
    NotFound,
}

type Reply = oneshot::Sender<Result<Applied, StoreError>>;

enum Request {
    Write(Box<JobWrite>, Reply),
    /// Someone waits for every write before this request to be durable.
    Commit(oneshot::Sender<Result<(), StoreError>>),
    /// A change written elsewhere (an endpoint's), to publish once durable.
    Publish(Change),
}

/// The trees a job write touches.
#[derive(Clone)]
pub(super) struct JobTrees {
    pub db: sled::Db,
    pub jobs: sled::Tree,
    pub idempotency: sled::Tree,
    pub events: sled::Tree,
    pub index: sled::Tree,
    pub feed: sled::Tree,
}

pub struct Writer {
    requests: Option<mpsc::Sender<Request>>,
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the writer has done since the store opened: where a write's time goes (waiting for
/// the batch's transaction or for its flush) and how many writes share each.
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    transaction_nanos: AtomicU64,
    flushes: AtomicU64,
    flush_nanos: AtomicU64,
}

/// A snapshot of the writer's counters, all since the store opened.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WriterStats {
    /// Transactions, each applying every write queued when it began (at most 256).
    pub batches: u64,
    /// Job writes applied (inserts and updates, those that found their record changed
    /// included).
    pub writes: u64,
    /// Time spent in those transactions.
    pub transaction_seconds: f64,
    pub flushes: u64,
    /// Time spent in flushes, which the next batch's writes wait out.
    pub flush_seconds: f64,
}

impl Counters {
    fn snapshot(&self) -> WriterStats {
        let secs = |n: &AtomicU64| Duration::from_nanos(n.load(Ordering::Relaxed)).as_secs_f64();
        WriterStats {
            batches: self.batches.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            transaction_seconds: secs(&self.transaction_nanos),
            flushes: self.flushes.load(Ordering::Relaxed),
            flush_seconds: secs(&self.flush_nanos),
        }
    }
}

fn add_elapsed(total: &AtomicU64, since: Instant) {
    let n = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    total.fetch_add(n, Ordering::Relaxed);
}

/// A reply that waits for the flush.
enum Waiting {
    Write(Reply, Box<Result<Applied, StoreError>>),
    Commit(oneshot::Sender<Result<(), StoreError>>),
}

impl Writer {
    /// Starts the writer thread. It is a thread, not a task, because a flush blocks on the
    /// disk and the store opens outside any runtime; it ends with the store, after making
    /// what it wrote durable and publishing it.
    pub(super) fn start(
        trees: JobTrees,
        changes: broadcast::Sender<Change>,
        written: broadcast::Sender<Arc<str>>,
        publish_within: Duration,
    ) -> std::io::Result<Self> {
        let (requests, queue) = mpsc::channel::<Request>();
        let counters: Arc<Counters> = Arc::default();
        let counted = counters.clone();
        let thread = std::thread::Builder::new()
            .name("mlgw-store-writer".into())
            .spawn(move || {
                let mut to_publish: Vec<Change> = Vec::new();
                // When the oldest change nobody has asked a flush for must be published by.
                let mut due: Option<Instant> = None;
                let mut requests = Vec::new();
                loop {
                    let first = match due {
                        None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(at) => {
                            queue.recv_timeout(at.saturating_duration_since(Instant::now()))
                        }
                    };
                    // The store is closing: what was written is still made durable and
                    // published.
                    let closing = matches!(first, Err(RecvTimeoutError::Disconnected));
                    requests.extend(first.ok());
                    while requests.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(r) => requests.push(r),
                            Err(_) => break,
                        }
                    }
                    let mut waiting = Vec::new();
                    let mut writes = Vec::new();
                    for r in requests.drain(..) {
                        match r {
                            Request::Write(w, reply) => writes.push((w, reply)),
                            Request::Commit(c) => waiting.push(Waiting::Commit(c)),
                            Request::Publish(c) => to_publish.push(c),
                        }
                    }
                    if !writes.is_empty() {
                        let began = Instant::now();
                        let outcomes = apply(&trees, writes.iter().map(|(w, _)| &**w));
                        add_elapsed(&counted.transaction_nanos, began);
                        counted.batches.fetch_add(1, Ordering::Relaxed);
                        counted
                            .writes
                            .fetch_add(writes.len() as u64, Ordering::Relaxed);
                        for (i, (w, reply)) in writes.into_iter().enumerate() {
                            let outcome = match &outcomes {
                                Ok(all) => Ok(all[i].clone()),
                                Err(e) => Err(StoreError::Sled(e.clone())),
                            };
                            if let Ok(Applied::Created(j) | Applied::Updated(j)) = &outcome {
                                let _ = written.send(j.id.as_str().into());
                                let news = match &*w {
                                    JobWrite::Insert { .. } => true,
                                    JobWrite::Update { notify, .. } => *notify,
                                };
                                if news {
                                    to_publish.push(Change::Job(Box::new(j.clone())));
                                }
                            }
                            match *w {
                                JobWrite::Insert { .. } => {
                                    waiting.push(Waiting::Write(reply, Box::new(outcome)))
                                }
                                JobWrite::Update { .. } => {
                                    let _ = reply.send(outcome);
                                }
                            }
                        }
                    }
                    if waiting.is_empty() && !closing {
                        if to_publish.is_empty() {
                            continue;
                        }
                        let at = *due.get_or_insert_with(|| Instant::now() + publish_within);
                        if Instant::now() < at {
                            continue;
                        }
                    }
                    due = None;
                    if !waiting.is_empty() || !to_publish.is_empty() {
                        let began = Instant::now();
                        let result = trees.db.flush().map(|_| ()).map_err(|e| e.to_string());
                        add_elapsed(&counted.flush_nanos, began);
                        counted.flushes.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = &result {
                            // The records are in the store; watchers still hear of them.
                            tracing::error!("store: flushing: {e}");
                        }
                        for c in to_publish.drain(..) {
                            let _ = changes.send(c);
                        }
                        for w in waiting {
                            let flush_err = || StoreError::Flush(result.clone().unwrap_err());
                            match w {
                                Waiting::Commit(c) => {
                                    let _ = c.send(result.clone().map_err(StoreError::Flush));
                                }
                                Waiting::Write(reply, outcome) => {
                                    let _ = reply.send(if result.is_ok() {
                                        *outcome
                                    } else {
                                        Err(flush_err())
                                    });
                                }
                            }
                        }
                    }
                    if closing {
                        return;
                    }
                }
            })?;
        Ok(Self {
            requests: Some(requests),
            counters,
            thread: Some(thread),
        })
    }

    fn request(&self, r: Request) -> Result<(), StoreError> {
        self.requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(r)
            .map_err(|_| stopped())
    }

    /// Applies `w`; an insert returns once it is durable.
    pub(super) async fn write(&self, w: JobWrite) -> Result<Applied, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Write(Box::new(w), tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Returns once every write this caller made before calling is durable (and every change
    /// written before it published).
    pub async fn commit(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Commit(tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Publishes `change`, already written, once it is durable. Callers keep the order of
    /// their writes by calling this in that order.
    pub fn publish(&self, change: Change) {
        if self.request(Request::Publish(change)).is_err() {
            tracing::error!("store: the writer has stopped; a change was not published");
        }
    }

    pub fn stats(&self) -> WriterStats {
        self.counters.snapshot()
    }
}

/// Applies `writes` in order in one transaction. A write that cannot apply (its record
/// changed or is gone, its key names another) writes nothing and says so; only a storage
/// error fails them all.
fn apply<'a>(
    t: &JobTrees,
    writes: impl Iterator<Item = &'a JobWrite> + Clone,
) -> Result<Vec<Applied>, sled::Error> {
    // Numbered before the transaction: sled's id generator may write, and a write inside a
    // transaction waits for the lock the transaction holds. Single writer: taken in order. A
    // number a write did not use (its record changed) is a gap in the feed, which readers
    // skip.
    let numbered = writes
        .clone()
        .filter(|w| match w {
            JobWrite::Insert { .. } => true,
            JobWrite::Update { notify, .. } => *notify,
        })
        .count();
    let sequences = (0..numbered)
        .map(|_| t.db.generate_id().map(|n| n + 1))
        .collect::<Result<Vec<u64>, _>>()?;
    let r = (&t.jobs, &t.idempotency, &t.events, &t.index, &t.feed).transaction(|trees| {
        let mut sequences = sequences.iter().copied();
        writes
            .clone()
            .map(|w| apply_one(trees, w, &mut sequences))
            .collect::<Result<Vec<_>, _>>()
    });
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Storage(e)) => Err(e),
        Err(TransactionError::Abort(())) => unreachable!("no write aborts the batch"),
    }
}

type Tx = sled::transaction::TransactionalTree;
type TxResult<T> = Result<T, ConflictableTransactionError<()>>;

fn apply_one(
    (jobs, idem, events, index, feed): &(Tx, Tx, Tx, Tx, Tx),
    w: &JobWrite,
    sequences: &mut impl Iterator<Item = u64>,
) -> TxResult<Applied> {
    // Every write that takes a number was counted.
    let mut next_feed_sequence = || sequences.next().expect("a feed number for each change");
    match w {
        JobWrite::Insert {
            job,
            idem: ikey,
            keys,
        } => {
            let id = job.id.as_str();
            if let Some(k) = ikey {
                if let Some(prev) = idem.get(k)? {
                    return Ok(Applied::Existing(
                        String::from_utf8_lossy(&prev).into_owned(),
                    ));
                }
                idem.insert(k.as_slice(), id.as_bytes())?;
                index.insert(idem_owner_key(b'j', id, k), &[][..])?;
            }
            let mut job = job.clone();
            job.feed_sequence = next_feed_sequence();
            let event = event_key(id, job.sequence);
            jobs.insert(id.as_bytes(), encode_job(&job))?;
            events.insert(event.as_slice(), encode_event(&job))?;
            feed.insert(&job.feed_sequence.to_be_bytes()[..], event)?;
            reindex(index, &[], keys)?;
            Ok(Applied::Created(job))
        }
        JobWrite::Update {
            expect,
            job,
            bytes,
            old_keys,
            new_keys,
            ..
        } => {
            let id = job.id.as_str();
            match jobs.get(id)? {
                None => return Ok(Applied::NotFound),
                Some(now) if now != *expect => return Ok(Applied::Changed),
                Some(_) => {}
            }
            let mut job = job.clone();
            // The caller encoded what keeps its feed number; news is numbered here.
            match bytes {
                Some(b) => {
                    jobs.insert(id.as_bytes(), b.as_slice())?;
                }
                None => {
                    job.feed_sequence = next_feed_sequence();
                    jobs.insert(id.as_bytes(), encode_job(&job))?;
                    let event = event_key(id, job.sequence);
                    // A change that replaces this version's event takes its place in the
                    // feed too: each event has one feed entry, which pruning removes. (An
                    // entry left behind would be skipped: its event no longer has its number.)
                    if let Some(prev) = events.insert(event.as_slice(), encode_event(&job))?
                        && let Ok(prev) = event_feed_sequence(&event, &prev)
                    {
                        let at = prev.to_be_bytes();
                        if feed.get(at)?.as_deref() == Some(event.as_slice()) {
                            feed.remove(&at[..])?;
                        }
                    }
                    feed.insert(&job.feed_sequence.to_be_bytes()[..], event)?;
                }
            }
            reindex(index, old_keys, new_keys)?;
            Ok(Applied::Updated(job))
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Flush("the store's writer has stopped".to_string())
}

impl Drop for Writer {
    /// The thread holds the database open; the store is closed (and can be opened again, as a
    /// restart does) only once it has ended.
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
