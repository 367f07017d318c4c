//! Group commit: callers that need their writes durable share one flush. A flush covers every
//! write made before it started, so a caller waits for the first flush that starts after it
//! asked; while one flush runs, everyone who asks meanwhile is answered by the next one. Under
//! 64 concurrent Submits that is a handful of fsyncs instead of 64, and each reply still waits
//! for its own record to be on disk.
//!
//! Changes are published to watchers by the same thread, after the flush that made them
//! durable: a watcher never sees a change that a crash could take back, so a client resuming
//! after the last feed sequence it saw misses nothing and sees nothing twice.

use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{broadcast, oneshot};

use super::Change;

type Waiter = oneshot::Sender<Result<(), String>>;

pub struct GroupCommit {
    /// A flush request, with someone waiting for it or (a change to publish) without.
    requests: Option<mpsc::Sender<Option<Waiter>>>,
    /// Written, not yet durable, in the order they were written.
    pending: Arc<Mutex<Vec<Change>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the committer thread for `db`. It is a thread, not a task, because a flush
    /// blocks on the disk and the store opens outside any runtime; it ends with the store.
    pub fn start(db: sled::Db, changes: broadcast::Sender<Change>) -> std::io::Result<Self> {
        let (requests, queue) = mpsc::channel::<Option<Waiter>>();
        let pending: Arc<Mutex<Vec<Change>>> = Arc::default();
        let to_publish = pending.clone();
        let thread = std::thread::Builder::new()
            .name("mlgw-store-commit".into())
            .spawn(move || {
                // Wait for someone to ask, take everyone who has asked by now, flush once.
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    batch.extend(queue.try_iter());
                    // Taken before the flush starts, so the flush covers every one of them.
                    let publish =
                        std::mem::take(&mut *to_publish.lock().unwrap_or_else(|p| p.into_inner()));
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    if let Err(e) = &result {
                        // The records are in the store; watchers still hear of them.
                        tracing::error!("store: flushing: {e}");
                    }
                    for c in publish {
                        let _ = changes.send(c);
                    }
                    for w in batch.into_iter().flatten() {
                        let _ = w.send(result.clone());
                    }
                }
            })?;
        Ok(Self {
            requests: Some(requests),
            pending,
            thread: Some(thread),
        })
    }

    fn request(&self, waiter: Option<Waiter>) -> Result<(), String> {
        self.requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(waiter)
            .map_err(|_| stopped())
    }

    /// Returns once every write this caller made before calling is durable (and every change
    /// written before it published).
    pub async fn commit(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.request(Some(tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Publishes `change`, already written, once it is durable. Callers keep the order of
    /// their writes by calling this in that order.
    pub fn publish(&self, change: Change) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
        if self.request(None).is_err() {
            tracing::error!("store: the committer has stopped; a change was not published");
        }
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
