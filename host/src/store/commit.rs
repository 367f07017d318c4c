//! Group commit: callers that need their writes durable share one flush. A flush covers every
//! write made before it started, so a caller waits for the first flush that starts after it
//! asked; while one flush runs, everyone who asks meanwhile is answered by the next one. Under
//! 64 concurrent Submits that is a handful of fsyncs instead of 64, and each reply still waits
//! for its own record to be on disk.
//!
//! Changes are published to watchers by the same thread, after the flush that made them
//! durable: a watcher never sees a change that a crash could take back, so a client resuming
//! after the last feed sequence it saw misses nothing and sees nothing twice.
//!
//! A change nobody waits on does not ask for a flush of its own: it waits for the next flush,
//! one that someone asked for or, at the latest `publish_within` after the first such change,
//! one the committer starts for it. A writer that nobody waits on (the reconciler recording
//! polls, a bulk load) then costs one flush per window instead of one per write, and watchers
//! still hear of every change within the window plus a flush.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};

use super::Change;

type Waiter = oneshot::Sender<Result<(), String>>;

/// How long a change that nobody waits on may wait for a flush before the committer starts
/// one: short against what a watcher notices, long against a flush (a few ms under load).
pub const PUBLISH_WITHIN: Duration = Duration::from_millis(10);

enum Request {
    /// Someone waits for their writes to be durable.
    Commit(Waiter),
    /// Changes are waiting to be published and none were before: start the window.
    Publish,
}

pub struct GroupCommit {
    requests: Option<mpsc::Sender<Request>>,
    /// Written, not yet durable, in the order they were written.
    pending: Arc<Mutex<Vec<Change>>>,
    /// Flushes the committer has made .
    flushes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the committer thread for `db`. It is a thread, not a task, because a flush
    /// blocks on the disk and the store opens outside any runtime; it ends with the store.
    pub fn start(
        db: sled::Db,
        changes: broadcast::Sender<Change>,
        publish_within: Duration,
    ) -> std::io::Result<Self> {
        let (requests, queue) = mpsc::channel::<Request>();
        let pending: Arc<Mutex<Vec<Change>>> = Arc::default();
        let flushes: Arc<AtomicU64> = Arc::default();
        let to_publish = pending.clone();
        let flushed = flushes.clone();
        let thread = std::thread::Builder::new()
            .name("mlgw-store-commit".into())
            .spawn(move || {
                let take =
                    || std::mem::take(&mut *to_publish.lock().unwrap_or_else(|p| p.into_inner()));
                // When the oldest change nobody has asked a flush for must be published by.
                let mut due: Option<Instant> = None;
                loop {
                    let first = match due {
                        None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(at) => {
                            queue.recv_timeout(at.saturating_duration_since(Instant::now()))
                        }
                    };
                    let mut waiters = Vec::new();
                    let last = match first {
                        Ok(Request::Publish) if due.is_none() => {
                            due = Some(Instant::now() + publish_within);
                            continue;
                        }
                        Ok(Request::Publish) => continue,
                        Ok(Request::Commit(w)) => {
                            waiters.push(w);
                            false
                        }
                        Err(RecvTimeoutError::Timeout) => false,
                        // The store is closing: what was written is still made durable and
                        // published.
                        Err(RecvTimeoutError::Disconnected) => true,
                    };
                    // Everyone who has asked by now shares this flush.
                    for r in queue.try_iter() {
                        if let Request::Commit(w) = r {
                            waiters.push(w);
                        }
                    }
                    // Taken before the flush starts, so the flush covers every one of them.
                    let publish = take();
                    due = None;
                    if publish.is_empty() && waiters.is_empty() {
                        if last {
                            return;
                        }
                        continue;
                    }
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    flushed.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = &result {
                        // The records are in the store; watchers still hear of them.
                        tracing::error!("store: flushing: {e}");
                    }
                    for c in publish {
                        let _ = changes.send(c);
                    }
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                    if last {
                        return;
                    }
                }
            })?;
        Ok(Self {
            requests: Some(requests),
            pending,
            flushes,
            thread: Some(thread),
        })
    }

    fn request(&self, r: Request) -> Result<(), String> {
        self.requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(r)
            .map_err(|_| stopped())
    }

    /// Returns once every write this caller made before calling is durable (and every change
    /// written before it published).
    pub async fn commit(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Commit(tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Publishes `change`, already written, once it is durable. Callers keep the order of
    /// their writes by calling this in that order.
    pub fn publish(&self, change: Change) {
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push(change);
            pending.len() == 1
        };
        // Only the first change since the last flush starts a window; the rest ride along.
        if first && self.request(Request::Publish).is_err() {
            tracing::error!("store: the committer has stopped; a change was not published");
        }
    }

    /// How many flushes the committer has made.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

fn stopped() -> String {
    "the store's committer has stopped".to_string()
}

impl Drop for GroupCommit {
    /// The thread holds the database open; the store is closed (and can be opened again, as a
    /// restart does) only once it has ended.
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
