//! The gateway's record of every job and endpoint, in sled. A submitted job is durable before
//! Submit answers (through one writer that batches job writes and shares flushes); idempotency
//! keys map to the record they created; every job state change is kept as an event so Watch
//! can replay, numbered in one gateway-wide change feed that Watch-all resumes from, and is
//! published to live watchers.
//!
//! Indexes keep the gateway's cost with what is live, not with history: the reconciler finds a
//! target's live records, and a filtered list its page, without decoding anything else. A write
//! that changes nothing is not written. An event keeps the job's status at that version, not a
//! copy of its spec. Finished jobs and deleted endpoints older than the operator's retention are
//! pruned with everything that belongs to them (see `prune_batch`), found through an index by
//! the time they ended.

mod record;
mod writer;
use record::{decode_event, decode_job, encode_event, encode_job, event_feed_sequence};
pub use writer::WriterStats;

use std::path::Path;
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::broadcast;

use crate::domain::validate::validate_page_token;
use crate::domain::{Endpoint, EndpointState, FieldError, Job, JobState, Millis};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("storage: making writes durable: {0}")]
    Flush(String),
    #[error("{0}")]
    Conflict(String),
    /// A request named something the store can never hold (a page token it did not hand out).
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Flushes a tree (or the whole database) without sled's `flush_async`; see `Store::flush`.
pub async fn flush_tree(tree: &sled::Tree) -> Result<()> {
    let tree = tree.clone();
    tokio::task::spawn_blocking(move || tree.flush())
        .await
        .map_err(|e| StoreError::Sled(sled::Error::ReportableBug(format!("flush task: {e}"))))??;
    Ok(())
}

/// A change a watcher may care about.
#[derive(Debug, Clone)]
pub enum Change {
    Job(Box<Job>),
    Endpoint(Box<Endpoint>),
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    endpoints: sled::Tree,
    idempotency: sled::Tree,
    endpoint_names: sled::Tree,
    events: sled::Tree,
    /// Secondary keys (see `job_index_keys`, `endpoint_index_keys`), values empty.
    index: sled::Tree,
    /// The change feed: feed sequence (big-endian) → the job event's key.
    feed: sled::Tree,
    meta: sled::Tree,
    /// Every job write goes through it: the feed's order, the commit order and what live
    /// watchers see are one order, so a watcher resuming after sequence N can never miss a
    /// change numbered below N committed later.
    writer: Arc<writer::Writer>,
    changes: broadcast::Sender<Change>,
    /// The id of every job written, as it is written, whether watchers hear of it or not (a
    /// cancel request is not news to them, but it is to the reconciler).
    written: broadcast::Sender<Arc<str>>,
}

/// The index entries a job has: by target and state, by target, by state, and once it has
/// ended, by when. A target's live jobs are its entries under the states that are not
/// terminal; there is no tenant index until something lists by tenant. Each entry is a write
/// in every Submit's transaction, so none is kept that no query reads.
fn job_index_keys(j: &Job) -> Vec<Vec<u8>> {
    let mut keys = vec![
        index_key(b'j', b'x', &target_state(&j.target, j.state), &j.id),
        index_key(b'j', b't', &j.target, &j.id),
        index_key(b'j', b's', j.state.as_str(), &j.id),
    ];
    if j.state.is_terminal() {
        // A terminal job always has `finished_at` once `transition` made it so; a record
        // that reached its end another way ended at its last update.
        let ended = j.finished_at.unwrap_or(j.updated_at);
        keys.push(index_key(b'j', b'f', &ended_value(ended), &j.id));
    }
    keys
}

/// The by-end-time index's value: fixed width, so keys sort by time.
fn ended_value(at: Millis) -> String {
    format!("{at:020}")
}

/// An idempotency key's entry under the record it created (`<kind> k <id>\0<key>`), so
/// pruning the record finds its keys without scanning them all.
fn idem_owner_key(kind: u8, id: &str, ikey: &[u8]) -> Vec<u8> {
    let mut k = index_key(kind, b'k', id, "");
    k.extend_from_slice(ikey);
    k
}

/// The by-target-and-state index's value: what the metrics count, a filtered List reads and
/// the live jobs are found under.
fn target_state(target: &str, state: JobState) -> String {
    format!("{target}\0{}", state.as_str())
}

fn endpoint_index_keys(e: &Endpoint) -> Vec<Vec<u8>> {
    if e.state == EndpointState::Deleted {
        // Deleting is its last update.
        vec![index_key(b'e', b'f', &ended_value(e.updated_at), &e.id)]
    } else {
        vec![index_key(b'e', b'l', &e.target, &e.id)]
    }
}

/// `<kind> <index> <value>\0<id>`: the ids under one value sort by creation time, as the
/// records do.
fn index_key(kind: u8, index: u8, value: &str, id: &str) -> Vec<u8> {
    let mut k = index_prefix(kind, index, value);
    k.extend_from_slice(id.as_bytes());
    k
}

fn index_prefix(kind: u8, index: u8, value: &str) -> Vec<u8> {
    let mut k = vec![kind, index];
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

/// Which index a job listing can use instead of reading every record.
#[derive(Debug, Clone, Copy)]
pub enum JobIndex<'a> {
    TargetState(&'a str, JobState),
    Target(&'a str),
    State(JobState),
}

impl JobIndex<'_> {
    fn prefix(self) -> Vec<u8> {
        match self {
            Self::TargetState(t, s) => index_prefix(b'j', b'x', &target_state(t, s)),
            Self::Target(t) => index_prefix(b'j', b't', t),
            Self::State(s) => index_prefix(b'j', b's', s.as_str()),
        }
    }
}

/// Moves a record's index entries from `old` to `new` inside a transaction.
fn reindex<E>(
    index: &sled::transaction::TransactionalTree,
    old: &[Vec<u8>],
    new: &[Vec<u8>],
) -> std::result::Result<(), ConflictableTransactionError<E>> {
    for k in old.iter().filter(|k| !new.contains(k)) {
        index.remove(k.as_slice())?;
    }
    for k in new.iter().filter(|k| !old.contains(k)) {
        index.insert(k.as_slice(), &[][..])?;
    }
    Ok(())
}

const INDEX_VERSION: &[u8] = b"index-version";
/// Bump when the index keys change: the next open rebuilds them.
const INDEX_CURRENT: &[u8] = b"4";

/// Records removed in one pruning transaction: small enough that the writes of live records
/// never wait long behind it.
pub const PRUNE_BATCH: usize = 128;

/// What an insert with an idempotency key did.
pub enum Inserted<T> {
    Created(T),
    Existing(T),
}

/// Endpoint records, as JSON: few and rarely written. Jobs and their events are laid out by
/// `record`.
fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("domain records always serialise")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn idem_key(tenant: &str, kind: &str, key: &str) -> Vec<u8> {
    format!("{tenant}\0{kind}\0{key}").into_bytes()
}

fn name_key(tenant: &str, name: &str) -> Vec<u8> {
    format!("{tenant}\0{name}").into_bytes()
}

fn event_key(id: &str, seq: u64) -> Vec<u8> {
    let mut k = event_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn event_prefix(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(0);
    k
}

/// The job an event key belongs to.
fn event_job_id(event: &[u8]) -> &[u8] {
    &event[..event.len().saturating_sub(9)]
}

fn feed_seq(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

fn unwrap_tx<T>(r: std::result::Result<T, TransactionError<StoreError>>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(e.into()),
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_publishing_within(dir, writer::PUBLISH_WITHIN)
    }

    /// `open`, with changes nobody waits on published within `window` (see `writer`).
    fn open_publishing_within(dir: &Path, window: std::time::Duration) -> Result<Self> {
        let db = sled::Config::new().path(dir).open()?;
        let (changes, _) = broadcast::channel(1024);
        let written = broadcast::channel(4096).0;
        let trees = writer::JobTrees {
            db: db.clone(),
            jobs: db.open_tree("jobs")?,
            idempotency: db.open_tree("idempotency")?,
            events: db.open_tree("job_events")?,
            index: db.open_tree("index")?,
            feed: db.open_tree("feed")?,
        };
        let store = Self {
            jobs: trees.jobs.clone(),
            endpoints: db.open_tree("endpoints")?,
            idempotency: trees.idempotency.clone(),
            endpoint_names: db.open_tree("endpoint_names")?,
            events: trees.events.clone(),
            index: trees.index.clone(),
            feed: trees.feed.clone(),
            meta: db.open_tree("meta")?,
            writer: Arc::new(
                writer::Writer::start(trees, changes.clone(), written.clone(), window)
                    .map_err(|e| StoreError::Flush(format!("starting the writer: {e}")))?,
            ),
            db,
            changes,
            written,
        };
        store.build_indexes()?;
        Ok(store)
    }

    /// A store written before the indexes existed (or with older keys) gets them once; every
    /// later open reads one key and moves on.
    fn build_indexes(&self) -> Result<()> {
        if self.meta.get(INDEX_VERSION)?.as_deref() == Some(INDEX_CURRENT) {
            return Ok(());
        }
        self.index.clear()?;
        for item in self.jobs.iter() {
            let (k, v) = item?;
            let job = decode_job(&k, &v)?;
            for key in job_index_keys(&job) {
                self.index.insert(key, &[][..])?;
            }
        }
        for item in self.endpoints.iter() {
            let (k, v) = item?;
            let ep: Endpoint = decode(&k, &v)?;
            for key in endpoint_index_keys(&ep) {
                self.index.insert(key, &[][..])?;
            }
        }
        // `<tenant>\0<kind>\0<key>` → id.
        for item in self.idempotency.iter() {
            let (k, id) = item?;
            let kind = match k.split(|b| *b == 0).nth(1) {
                Some(b"job") => b'j',
                Some(b"endpoint") => b'e',
                _ => {
                    return Err(StoreError::Corrupt {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        message: "an idempotency key of no known kind".into(),
                    });
                }
            };
            self.index.insert(
                idem_owner_key(kind, &String::from_utf8_lossy(&id), &k),
                &[][..],
            )?;
        }
        self.meta.insert(INDEX_VERSION, INDEX_CURRENT)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The ids of jobs written from now on (inserted or updated, news or not), each as it is
    /// written, before it is durable: for caches of what a record holds.
    pub fn written_jobs(&self) -> broadcast::Receiver<Arc<str>> {
        self.written.subscribe()
    }

    /// A tree for a capability's own bookkeeping (e.g. the processes a target started).
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// The job writer's batches, transactions and flushes since the store opened.
    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// Makes every write so far durable, with one of the writer's shared flushes (see
    /// `writer`). Not sled's own `flush_async`: it runs on sled's small I/O pool, which also
    /// writes the log buffers; enough concurrent flushes filled that pool with waiters and the
    /// gateway hung under concurrent submits.
    pub async fn flush(&self) -> Result<()> {
        self.writer.commit().await
    }

    /// The feed's last sequence: a watcher starting now skips everything up to it.
    pub fn feed_head(&self) -> Result<u64> {
        Ok(self
            .feed
            .last()?
            .map(|(k, _)| feed_seq(&k))
            .unwrap_or_default())
    }

    /// The feed entries numbered above `after`, oldest first, at most `limit`: each entry's
    /// sequence and the job version it recorded — None where a later change of the same job
    /// event replaced it (that change has its own, later entry) or the job was pruned while
    /// this read. Pruned jobs' entries are gone, so a range they filled is simply skipped.
    pub fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Option<Job>)>> {
        let mut out = Vec::new();
        // Each job's immutable part, read once per page.
        let mut records: std::collections::HashMap<Vec<u8>, Option<Job>> = Default::default();
        for item in self.feed.range(after.saturating_add(1).to_be_bytes()..) {
            let (k, event) = item?;
            let seq = feed_seq(&k);
            let job = match self.events.get(&event)? {
                Some(v) => {
                    let id = event_job_id(&event);
                    if !records.contains_key(id) {
                        let record = match self.jobs.get(id)? {
                            Some(r) => Some(decode_job(id, &r)?),
                            None => None,
                        };
                        records.insert(id.to_vec(), record);
                    }
                    match &records[id] {
                        Some(record) => Some(decode_event(&event, &v, record)?)
                            .filter(|j| j.feed_sequence == seq),
                        None => None,
                    }
                }
                None => None,
            };
            out.push((seq, job));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Records a new job, or returns the one an earlier call with the same key created; either
    /// is durable when this returns. Feed sequences start at 1 (so "after 0" means the whole
    /// feed): sled's ids only grow, across restarts too.
    pub async fn insert_job(
        &self,
        job: Job,
        idempotency_key: Option<&str>,
    ) -> Result<Inserted<Job>> {
        let write = writer::JobWrite::Insert {
            idem: idempotency_key.map(|k| idem_key(&job.tenant, "job", k)),
            keys: job_index_keys(&job),
            job,
        };
        match self.writer.write(write).await? {
            writer::Applied::Created(j) => Ok(Inserted::Created(j)),
            writer::Applied::Existing(prev) => Ok(Inserted::Existing(self.job(&prev)?)),
            writer::Applied::Updated(_) | writer::Applied::Changed | writer::Applied::NotFound => {
                unreachable!("an insert creates or finds")
            }
        }
    }

    pub fn job(&self, id: &str) -> Result<Job> {
        match self.jobs.get(id)? {
            Some(b) => decode_job(id.as_bytes(), &b),
            None => Err(StoreError::NotFound(format!("job {id}"))),
        }
    }

    /// Applies `f` atomically to the stored job. `f` returns whether watchers should hear of it;
    /// such changes are appended to the job's event log and the feed. A record `f` leaves as
    /// it was is not written at all (a poll that saw nothing new costs no write). `f` runs
    /// here, on the record as read; if another write changed the record before this one is
    /// applied, it runs again on the new one. Applied, not yet durable, when this returns.
    pub async fn update_job<F>(&self, id: &str, f: F) -> Result<Job>
    where
        F: Fn(&mut Job) -> bool,
    {
        loop {
            let Some(expect) = self.jobs.get(id)? else {
                return Err(StoreError::NotFound(format!("job {id}")));
            };
            let before = decode_job(id.as_bytes(), &expect)?;
            let mut job = before.clone();
            let notify = f(&mut job);
            if !notify && job == before {
                return Ok(job);
            }
            let (old_keys, new_keys) = (job_index_keys(&before), job_index_keys(&job));
            if !notify && old_keys == new_keys {
                // Only the record changes, and nobody hears of it (a backend handle, a
                // cancel request): one compare-and-swap here, not a turn of the writer, which
                // then applies half the writes a Submit makes. sled runs it between the
                // writer's transactions, never inside one, and the writer's own updates
                // compare the record as this leaves it.
                match self
                    .jobs
                    .compare_and_swap(id, Some(&expect), Some(encode_job(&job)))?
                {
                    Ok(()) => {
                        let _ = self.written.send(job.id.as_str().into());
                        return Ok(job);
                    }
                    Err(sled::CompareAndSwapError { current: None, .. }) => {
                        return Err(StoreError::NotFound(format!("job {id}")));
                    }
                    Err(_) => continue,
                }
            }
            let write = writer::JobWrite::Update {
                expect,
                bytes: (!notify).then(|| encode_job(&job)),
                old_keys,
                new_keys,
                notify,
                job,
            };
            match self.writer.write(write).await? {
                writer::Applied::Updated(j) => return Ok(j),
                writer::Applied::NotFound => {
                    return Err(StoreError::NotFound(format!("job {id}")));
                }
                writer::Applied::Changed => continue,
                writer::Applied::Created(_) | writer::Applied::Existing(_) => {
                    unreachable!("an update updates")
                }
            }
        }
    }

    /// Jobs newest first (ids sort by creation time), after `after` if given. `after` must be a
    /// job id (the last of a page, as handed out): a range scan from any other bytes would
    /// answer a page of nonsense instead of an error.
    pub fn list_jobs(
        &self,
        filter: impl Fn(&Job) -> bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<String>)> {
        self.list_jobs_by(None, filter, after, limit)
    }

    /// As `list_jobs`, reading only the records under `index` (then `filter` on those).
    pub fn list_jobs_by(
        &self,
        index: Option<JobIndex<'_>>,
        filter: impl Fn(&Job) -> bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<String>)> {
        if let Some(a) = after {
            validate_page_token("j", a)?;
        }
        let mut out: Vec<Job> = Vec::new();
        let mut take = |job: Job| {
            if !filter(&job) {
                return None;
            }
            if out.len() == limit {
                return Some(out.last().map(|j: &Job| j.id.clone()));
            }
            out.push(job);
            None
        };
        let mut next = None;
        match index {
            None => {
                let iter = match after {
                    Some(a) => self.jobs.range(..a.as_bytes()),
                    None => self.jobs.range::<&[u8], _>(..),
                };
                for item in iter.rev() {
                    let (k, v) = item?;
                    if let Some(n) = take(decode_job(&k, &v)?) {
                        next = n;
                        break;
                    }
                }
            }
            Some(ix) => {
                let prefix = ix.prefix();
                let end = match after {
                    Some(a) => [prefix.as_slice(), a.as_bytes()].concat(),
                    None => [prefix.as_slice(), &[0xff]].concat(),
                };
                for item in self.index.range(prefix.clone()..end).rev() {
                    let (k, _) = item?;
                    let id = &k[prefix.len()..];
                    // Index and record are written in one transaction; a missing record
                    // would be a bug, and skipping it keeps listing the rest.
                    let Some(v) = self.jobs.get(id)? else {
                        continue;
                    };
                    if let Some(n) = take(decode_job(id, &v)?) {
                        next = n;
                        break;
                    }
                }
            }
        }
        Ok((out, next))
    }

    /// How many of `target`'s jobs are in `state`: index keys counted, no record read.
    pub fn count_jobs(&self, target: &str, state: JobState) -> Result<i64> {
        let prefix = JobIndex::TargetState(target, state).prefix();
        let mut n = 0;
        for item in self.index.scan_prefix(prefix) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// One target's jobs that have not ended, oldest first, from the index.
    pub fn live_jobs_of(&self, target: &str) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        for id in self.live_job_ids_of(target)? {
            if let Some(v) = self.jobs.get(&id)? {
                out.push(decode_job(id.as_bytes(), &v)?);
            }
        }
        Ok(out)
    }

    /// The ids of one target's jobs that have not ended, oldest first: index keys only, no
    /// record read.
    pub fn live_job_ids_of(&self, target: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for state in JobState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            let prefix = JobIndex::TargetState(target, state).prefix();
            for k in self.index.scan_prefix(&prefix).keys() {
                ids.push(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned());
            }
        }
        // Each state's ids come in creation order; sorted, so do all of them together.
        ids.sort_unstable();
        Ok(ids)
    }

    /// The job's recorded changes with a sequence above `after`, oldest first.
    pub fn job_events(&self, id: &str, after: u64) -> Result<Vec<Job>> {
        let record = self.job(id)?;
        let start = event_key(id, after.saturating_add(1));
        let end = event_key(id, u64::MAX);
        self.events
            .range(start..=end)
            .map(|item| {
                let (k, v) = item?;
                decode_event(&k, &v, &record)
            })
            .collect()
    }

    /// Records a new endpoint; its name must be free among the tenant's live endpoints.
    pub fn insert_endpoint(
        &self,
        ep: Endpoint,
        idempotency_key: Option<&str>,
    ) -> Result<Inserted<Endpoint>> {
        let id = ep.id.clone();
        let bytes = encode(&ep);
        let ikey = idempotency_key.map(|k| idem_key(&ep.tenant, "endpoint", k));
        let nkey = name_key(&ep.tenant, &ep.spec.name);
        let keys = endpoint_index_keys(&ep);
        let existing = unwrap_tx(
            (
                &self.endpoints,
                &self.idempotency,
                &self.endpoint_names,
                &self.index,
            )
                .transaction(|(eps, idem, names, index)| {
                    if let Some(k) = &ikey {
                        if let Some(prev) = idem.get(k)? {
                            return Ok(Some(prev));
                        }
                        idem.insert(k.as_slice(), id.as_bytes())?;
                        index.insert(idem_owner_key(b'e', &id, k), &[][..])?;
                    }
                    if names.get(&nkey)?.is_some() {
                        return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                            format!("an endpoint named {:?} already exists", ep.spec.name),
                        )));
                    }
                    names.insert(nkey.as_slice(), id.as_bytes())?;
                    eps.insert(id.as_bytes(), bytes.as_slice())?;
                    reindex(index, &[], &keys)?;
                    Ok(None)
                }),
        )?;
        match existing {
            Some(prev) => Ok(Inserted::Existing(
                self.endpoint(&String::from_utf8_lossy(&prev))?,
            )),
            None => {
                self.writer.publish(Change::Endpoint(Box::new(ep.clone())));
                Ok(Inserted::Created(ep))
            }
        }
    }

    pub fn endpoint(&self, id: &str) -> Result<Endpoint> {
        match self.endpoints.get(id)? {
            Some(b) => decode(id.as_bytes(), &b),
            None => Err(StoreError::NotFound(format!("endpoint {id}"))),
        }
    }

    /// By id, or by name among the tenant's live endpoints.
    pub fn find_endpoint(&self, tenant: &str, id_or_name: &str) -> Result<Endpoint> {
        if let Some(b) = self.endpoints.get(id_or_name)? {
            return decode(id_or_name.as_bytes(), &b);
        }
        match self.endpoint_names.get(name_key(tenant, id_or_name))? {
            Some(id) => self.endpoint(&String::from_utf8_lossy(&id)),
            None => Err(StoreError::NotFound(format!("endpoint {id_or_name}"))),
        }
    }

    pub fn update_endpoint<F>(&self, id: &str, f: F) -> Result<Endpoint>
    where
        F: Fn(&mut Endpoint) -> bool,
    {
        let (ep, notify) = unwrap_tx(
            (&self.endpoints, &self.endpoint_names, &self.index).transaction(
                |(eps, names, index)| {
                    let Some(b) = eps.get(id)? else {
                        return Err(ConflictableTransactionError::Abort(StoreError::NotFound(
                            format!("endpoint {id}"),
                        )));
                    };
                    let before: Endpoint =
                        decode(id.as_bytes(), &b).map_err(ConflictableTransactionError::Abort)?;
                    let mut ep = before.clone();
                    let notify = f(&mut ep);
                    if !notify && ep == before {
                        return Ok((ep, false));
                    }
                    eps.insert(id.as_bytes(), encode(&ep))?;
                    reindex(
                        index,
                        &endpoint_index_keys(&before),
                        &endpoint_index_keys(&ep),
                    )?;
                    // A deleted endpoint frees its name for reuse.
                    if ep.state == EndpointState::Deleted {
                        let nk = name_key(&ep.tenant, &ep.spec.name);
                        if names.get(&nk)?.as_deref() == Some(id.as_bytes()) {
                            names.remove(nk)?;
                        }
                    }
                    Ok((ep, notify))
                },
            ),
        )?;
        if notify {
            self.writer.publish(Change::Endpoint(Box::new(ep.clone())));
        }
        Ok(ep)
    }

    /// Endpoints newest first, after `after` (an endpoint id, as for `list_jobs`) if given.
    pub fn list_endpoints(
        &self,
        filter: impl Fn(&Endpoint) -> bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Endpoint>, Option<String>)> {
        if let Some(a) = after {
            validate_page_token("e", a)?;
        }
        let iter = match after {
            Some(a) => self.endpoints.range(..a.as_bytes()),
            None => self.endpoints.range::<&[u8], _>(..),
        };
        let mut out: Vec<Endpoint> = Vec::new();
        for item in iter.rev() {
            let (k, v) = item?;
            let ep: Endpoint = decode(&k, &v)?;
            if filter(&ep) {
                if out.len() == limit {
                    let next = out.last().unwrap().id.clone();
                    return Ok((out, Some(next)));
                }
                out.push(ep);
            }
        }
        Ok((out, None))
    }

    /// One target's endpoints that are not deleted, from the live index.
    pub fn live_endpoints_of(&self, target: &str) -> Result<Vec<Endpoint>> {
        let prefix = index_prefix(b'e', b'l', target);
        let mut out = Vec::new();
        for item in self.index.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = &k[prefix.len()..];
            if let Some(v) = self.endpoints.get(id)? {
                out.push(decode(id, &v)?);
            }
        }
        Ok(out)
    }
}

/// What one pruning batch removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: usize,
    pub endpoints: usize,
    /// The batch was full: more may be due.
    pub more: bool,
}

/// A record to prune and everything of it, read before its transaction.
struct Doomed {
    id: Vec<u8>,
    /// Its by-end-time index key, which led here.
    ended_key: Vec<u8>,
    /// The record as it was read, removed only if it is still exactly that; None where the
    /// index key leads nowhere it should (only that key goes).
    record: Option<sled::IVec>,
    /// Index keys, its idempotency keys' owner entries included.
    index_keys: Vec<Vec<u8>>,
    idem_keys: Vec<Vec<u8>>,
    /// A job's events and the feed entry each has.
    events: Vec<(sled::IVec, u64)>,
    /// An endpoint's name entry, in case it still holds one.
    name_key: Option<Vec<u8>>,
}

impl Store {
    /// Prunes what ended before `before` (ms since the epoch): finished jobs, with their
    /// events, feed entries, idempotency keys and index keys, then deleted endpoints, with
    /// theirs; at most `PRUNE_BATCH` records, in one transaction per kind. Found through the
    /// by-end-time index, so the cost is what is removed, never the store's size; a live job
    /// is in no such index, however old. Blocks on the disk: call it off the runtime threads.
    pub fn prune_batch(&self, before: Millis) -> Result<Pruned> {
        let jobs = self.doomed(b'j', before, PRUNE_BATCH)?;
        let full = jobs.len() == PRUNE_BATCH;
        let jobs = self.remove_jobs(&jobs)?;
        if full {
            return Ok(Pruned {
                jobs,
                endpoints: 0,
                more: true,
            });
        }
        let endpoints = self.doomed(b'e', before, PRUNE_BATCH)?;
        let more = endpoints.len() == PRUNE_BATCH;
        Ok(Pruned {
            jobs,
            endpoints: self.remove_endpoints(&endpoints)?,
            more,
        })
    }

    /// `prune_batch` until nothing that ended before `before` is left.
    pub fn prune_before(&self, before: Millis) -> Result<Pruned> {
        let mut total = Pruned::default();
        loop {
            let p = self.prune_batch(before)?;
            total.jobs += p.jobs;
            total.endpoints += p.endpoints;
            if !p.more || p.jobs + p.endpoints == 0 {
                return Ok(total);
            }
        }
    }

    /// Up to `limit` records of `kind` (`j` or `e`) that ended before `before`, oldest first.
    fn doomed(&self, kind: u8, before: Millis, limit: usize) -> Result<Vec<Doomed>> {
        let start = vec![kind, b'f'];
        let end = index_prefix(kind, b'f', &ended_value(before));
        // `<kind> f <20 digits>\0<id>`
        let id_at = end.len();
        let mut out = Vec::new();
        for item in self.index.range(start..end).take(limit) {
            let (key, _) = item?;
            let id = key[id_at.min(key.len())..].to_vec();
            let id_str = String::from_utf8_lossy(&id).into_owned();
            let mut d = Doomed {
                ended_key: key.to_vec(),
                record: None,
                index_keys: Vec::new(),
                idem_keys: Vec::new(),
                events: Vec::new(),
                name_key: None,
                id,
            };
            let owners = idem_owner_key(kind, &id_str, b"");
            if kind == b'j' {
                if let Some(bytes) = self.jobs.get(&d.id)? {
                    let job = decode_job(&d.id, &bytes)?;
                    if job.state.is_terminal() {
                        d.index_keys = job_index_keys(&job);
                        for item in self.events.scan_prefix(event_prefix(&id_str)) {
                            let (k, v) = item?;
                            let seq = event_feed_sequence(&k, &v)?;
                            d.events.push((k, seq));
                        }
                        d.record = Some(bytes);
                    }
                }
            } else if let Some(bytes) = self.endpoints.get(&d.id)? {
                let ep: Endpoint = decode(&d.id, &bytes)?;
                if ep.state == EndpointState::Deleted {
                    d.index_keys = endpoint_index_keys(&ep);
                    d.name_key = Some(name_key(&ep.tenant, &ep.spec.name));
                    d.record = Some(bytes);
                }
            }
            if d.record.is_some() {
                for item in self.index.scan_prefix(&owners) {
                    let (k, _) = item?;
                    d.idem_keys.push(k[owners.len()..].to_vec());
                    d.index_keys.push(k.to_vec());
                }
            }
            out.push(d);
        }
        Ok(out)
    }

    fn remove_jobs(&self, doomed: &[Doomed]) -> Result<usize> {
        if doomed.is_empty() {
            return Ok(0);
        }
        unwrap_tx(
            (
                &self.jobs,
                &self.events,
                &self.feed,
                &self.idempotency,
                &self.index,
            )
                .transaction(|(jobs, events, feed, idem, index)| {
                    let mut removed = 0;
                    for d in doomed {
                        let Some(record) = &d.record else {
                            index.remove(d.ended_key.as_slice())?;
                            continue;
                        };
                        // Changed since it was read: the next batch looks again.
                        if jobs.get(&d.id)?.as_ref() != Some(record) {
                            continue;
                        }
                        jobs.remove(d.id.as_slice())?;
                        for (event, seq) in &d.events {
                            events.remove(event)?;
                            let at = seq.to_be_bytes();
                            if feed.get(at)?.as_ref() == Some(event) {
                                feed.remove(&at[..])?;
                            }
                        }
                        remove_idem_keys(idem, d)?;
                        for k in &d.index_keys {
                            index.remove(k.as_slice())?;
                        }
                        removed += 1;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(removed)
                }),
        )
    }

    fn remove_endpoints(&self, doomed: &[Doomed]) -> Result<usize> {
        if doomed.is_empty() {
            return Ok(0);
        }
        unwrap_tx(
            (
                &self.endpoints,
                &self.endpoint_names,
                &self.idempotency,
                &self.index,
            )
                .transaction(|(eps, names, idem, index)| {
                    let mut removed = 0;
                    for d in doomed {
                        let Some(record) = &d.record else {
                            index.remove(d.ended_key.as_slice())?;
                            continue;
                        };
                        if eps.get(&d.id)?.as_ref() != Some(record) {
                            continue;
                        }
                        eps.remove(d.id.as_slice())?;
                        // Freed when it was deleted; a name a newer endpoint holds stays.
                        if let Some(nk) = &d.name_key
                            && names.get(nk)?.as_deref() == Some(d.id.as_slice())
                        {
                            names.remove(nk.as_slice())?;
                        }
                        remove_idem_keys(idem, d)?;
                        for k in &d.index_keys {
                            index.remove(k.as_slice())?;
                        }
                        removed += 1;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(removed)
                }),
        )
    }
}

/// A pruned record's idempotency keys; a key that maps elsewhere (it cannot, keys are only
/// ever written with a new record) is left alone.
fn remove_idem_keys(
    idem: &sled::transaction::TransactionalTree,
    d: &Doomed,
) -> std::result::Result<(), ConflictableTransactionError<StoreError>> {
    for k in &d.idem_keys {
        if idem.get(k)?.as_deref() == Some(d.id.as_slice()) {
            idem.remove(k.as_slice())?;
        }
    }
    Ok(())
}

/// Prunes what ended more than `retention` ago: once now, then every `every`, each batch on a
/// blocking thread, until the task is dropped (between batches, each one a transaction, so
/// dropping it mid-pass loses nothing).
pub async fn prune_periodically(
    store: Store,
    retention: std::time::Duration,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = crate::domain::now_ms().saturating_sub(retention.as_millis() as u64);
        let mut total = Pruned::default();
        loop {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.prune_batch(before)).await {
                Ok(Ok(p)) => {
                    total.jobs += p.jobs;
                    total.endpoints += p.endpoints;
                    if !p.more || p.jobs + p.endpoints == 0 {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!("store: pruning what ended before {before}: {e}");
                    break;
                }
                Err(e) => {
                    tracing::error!("store: the pruning task failed: {e}");
                    break;
                }
            }
        }
        if total.jobs + total.endpoints > 0 {
            tracing::info!(
                jobs = total.jobs,
                endpoints = total.endpoints,
                "store: pruned records that ended more than {retention:?} ago"
            );
        }
    }
}

/// Ids sort by creation time, so listing newest-first is a reverse range scan.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

pub fn is_live(state: JobState) -> bool {
    !state.is_terminal()
}

/// A pending job of the `local` target, for tests here and elsewhere in the crate.
#[cfg(test)]
pub(crate) fn test_job(id: &str) -> Job {
    use crate::domain::{TrainingSpec, now_ms};
    Job {
        id: id.into(),
        tenant: "t".into(),
        target: "local".into(),
        spec: TrainingSpec::default(),
        state: JobState::Pending,
        message: String::new(),
        backend_state: String::new(),
        backend_ref: None,
        output_uri: None,
        created_at: now_ms(),
        updated_at: now_ms(),
        finished_at: None,
        cancel_requested: false,
        cancel_sent_at: None,
        sequence: 1,
        feed_sequence: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BackendRef, TrainingSpec, now_ms};

    fn job(id: &str) -> Job {
        test_job(id)
    }

    /// Opens the store again once the last handle's files are released: sled's I/O threads
    /// may still hold them for a moment after the handle is dropped (seen on a loaded CI
    /// machine after a multi-threaded test), which `open` reports as a lock it cannot take.
    async fn reopen(dir: &Path) -> Store {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Err(StoreError::Sled(sled::Error::Io(e)))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < until =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                r => return r.unwrap(),
            }
        }
    }

    #[tokio::test]
    async fn idempotency_key_returns_the_first_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = s.insert_job(job(&new_id("j")), Some("k1")).await.unwrap();
        let b = s.insert_job(job(&new_id("j")), Some("k1")).await.unwrap();
        let (Inserted::Created(a), Inserted::Existing(b)) = (a, b) else {
            panic!("second insert must find the first")
        };
        assert_eq!(a.id, b.id);
        assert_eq!(s.list_jobs(|_| true, None, 10).unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn survives_reopen_and_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..5).map(|_| new_id("j")).collect();
        {
            let s = Store::open(dir.path()).unwrap();
            for id in &ids {
                s.insert_job(job(id), None).await.unwrap();
            }
            s.db.flush().unwrap();
        }
        let s = reopen(dir.path()).await;
        let (page1, next) = s.list_jobs(|_| true, None, 3).unwrap();
        assert_eq!(
            page1.iter().map(|j| &j.id).collect::<Vec<_>>(),
            vec![&ids[4], &ids[3], &ids[2]]
        );
        let (page2, next2) = s.list_jobs(|_| true, next.as_deref(), 3).unwrap();
        assert_eq!(
            page2.iter().map(|j| &j.id).collect::<Vec<_>>(),
            vec![&ids[1], &ids[0]]
        );
        assert!(next2.is_none());
    }

    #[tokio::test]
    async fn updates_append_events() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = new_id("j");
        s.insert_job(job(&id), None).await.unwrap();
        s.update_job(&id, |j| {
            j.transition(JobState::Running, String::new(), 2);
            true
        })
        .await
        .unwrap();
        s.update_job(&id, |j| {
            j.backend_state = "noise".into();
            false
        })
        .await
        .unwrap();
        let evs = s.job_events(&id, 0).unwrap();
        assert_eq!(
            evs.iter().map(|j| j.state).collect::<Vec<_>>(),
            vec![JobState::Pending, JobState::Running]
        );
        assert_eq!(s.job_events(&id, 1).unwrap().len(), 1);
        assert!(matches!(
            s.update_job("missing", |_| true).await,
            Err(StoreError::NotFound(_))
        ));
    }

    async fn done(s: &Store, id: &str) {
        move_to(s, id, JobState::Succeeded, 3).await;
    }

    async fn move_to(s: &Store, id: &str, state: JobState, at: Millis) {
        s.update_job(id, |j| {
            j.transition(state, String::new(), at);
            true
        })
        .await
        .unwrap();
    }

    /// Inserts a job for each id, the `i`th on `target(i)`.
    async fn insert_on(s: &Store, ids: &[String], target: impl Fn(usize) -> &'static str) {
        for (i, id) in ids.iter().enumerate() {
            let mut j = job(id);
            j.target = target(i).into();
            s.insert_job(j, None).await.unwrap();
        }
    }

    #[tokio::test]
    async fn live_records_come_from_the_index_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..4).map(|_| new_id("j")).collect();
        {
            let s = Store::open(dir.path()).unwrap();
            insert_on(&s, &ids, |i| if i % 2 == 0 { "a" } else { "b" }).await;
            done(&s, &ids[0]).await;
            s.db.flush().unwrap();
        }
        let s = reopen(dir.path()).await;
        let live = |t: &str| {
            s.live_jobs_of(t)
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(live("a"), vec![ids[2].clone()]);
        assert_eq!(live("b"), vec![ids[1].clone(), ids[3].clone()]);
        // Only what the index holds is read: a record removed behind the index's back
        // is not listed, and nothing else is.
        s.jobs.remove(ids[3].as_bytes()).unwrap();
        assert_eq!(live("b"), vec![ids[1].clone()]);
        let by_state = s
            .list_jobs_by(
                Some(JobIndex::State(JobState::Succeeded)),
                |_| true,
                None,
                10,
            )
            .unwrap()
            .0;
        assert_eq!(
            by_state.iter().map(|j| &j.id).collect::<Vec<_>>(),
            vec![&ids[0]]
        );
    }

    #[tokio::test]
    async fn a_targets_live_jobs_span_its_live_states_and_old_index_keys_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..4).map(|_| new_id("j")).collect();
        {
            let s = Store::open(dir.path()).unwrap();
            insert_on(&s, &ids, |i| if i == 3 { "b" } else { "a" }).await;
            // a: running, pending, running; b: running.
            for id in [&ids[0], &ids[2], &ids[3]] {
                move_to(&s, id, JobState::Running, 2).await;
            }
            // As a store written with version 3's keys: a tenant entry and a live entry that
            // no record has any more.
            s.index
                .insert(index_key(b'j', b'n', "default", &ids[1]), &[][..])
                .unwrap();
            s.index
                .insert(index_key(b'j', b'l', "a", "j-gone"), &[][..])
                .unwrap();
            s.meta.insert(INDEX_VERSION, &b"3"[..]).unwrap();
            s.db.flush().unwrap();
        }
        let s = reopen(dir.path()).await;
        assert_eq!(s.live_job_ids_of("a").unwrap(), &ids[..3], "oldest first");
        assert_eq!(s.live_job_ids_of("b").unwrap(), &ids[3..]);
        let running_a = s
            .list_jobs_by(
                Some(JobIndex::TargetState("a", JobState::Running)),
                |_| true,
                None,
                10,
            )
            .unwrap()
            .0;
        assert_eq!(
            running_a.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            [ids[2].as_str(), ids[0].as_str()],
            "newest first, only a's running jobs"
        );
        let kinds: std::collections::BTreeSet<u8> = s
            .index
            .scan_prefix([b'j'])
            .keys()
            .map(|k| k.unwrap()[1])
            .collect();
        assert_eq!(kinds, [b's', b't', b'x'].into(), "the old keys are gone");
    }

    #[tokio::test]
    async fn indexes_are_built_for_a_store_written_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let id = new_id("j");
        {
            let s = Store::open(dir.path()).unwrap();
            s.insert_job(job(&id), None).await.unwrap();
            // As a store from before the indexes: records only.
            s.index.clear().unwrap();
            s.meta.remove(INDEX_VERSION).unwrap();
            s.db.flush().unwrap();
        }
        let s = reopen(dir.path()).await;
        assert_eq!(s.live_jobs_of("local").unwrap().len(), 1);
        let page = |after: Option<&str>| {
            s.list_jobs_by(Some(JobIndex::Target("local")), |_| true, after, 10)
                .unwrap()
        };
        assert_eq!(page(None).0.len(), 1);
        assert!(page(Some(&id)).0.is_empty(), "after the only job: nothing");
    }

    #[tokio::test]
    async fn an_update_that_changes_nothing_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = new_id("j");
        let mut watch = s.subscribe();
        s.insert_job(job(&id), None).await.unwrap();
        let before = s.jobs.get(&id).unwrap().unwrap();
        let mut writes = s.jobs.watch_prefix(id.as_bytes());
        s.update_job(&id, |_| false).await.unwrap();
        s.update_job(&id, |j| {
            j.backend_state = String::new();
            false
        })
        .await
        .unwrap();
        assert!(
            writes.next_timeout(std::time::Duration::ZERO).is_err(),
            "no write reached the tree"
        );
        assert_eq!(s.jobs.get(&id).unwrap().unwrap(), before);
        s.flush().await.unwrap();
        assert!(
            matches!(watch.try_recv(), Ok(Change::Job(j)) if j.sequence == 1),
            "the insert is published"
        );
        assert!(
            watch.try_recv().is_err(),
            "and no watcher heard of the rest"
        );
    }

    #[tokio::test]
    async fn the_feed_replays_every_change_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..3).map(|_| new_id("j")).collect();
        let mut seen = Vec::new();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut live = s.subscribe();
            for id in &ids {
                s.insert_job(job(id), None).await.unwrap();
            }
            done(&s, &ids[1]).await;
            // A change watchers are not told of takes no place in the feed.
            s.update_job(&ids[0], |j| {
                j.backend_state = "x".into();
                false
            })
            .await
            .unwrap();
            done(&s, &ids[0]).await;
            // Published once durable: after a flush, every change written before it.
            s.flush().await.unwrap();
            while let Ok(Change::Job(j)) = live.try_recv() {
                seen.push((j.feed_sequence, j.id.clone(), j.state));
            }
            s.db.flush().unwrap();
        }
        assert_eq!(seen.len(), 5);
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
        let s = reopen(dir.path()).await;
        let replay = |after: u64, limit: usize| {
            s.feed_after(after, limit)
                .unwrap()
                .into_iter()
                .filter_map(|(_, j)| j.map(|j| (j.feed_sequence, j.id, j.state)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            replay(0, 100),
            seen,
            "what live watchers saw, after a reopen"
        );
        assert_eq!(replay(seen[2].0, 100), seen[3..]);
        assert_eq!(replay(0, 2), seen[..2]);
        assert_eq!(s.feed_head().unwrap(), seen[4].0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inserts_are_each_durable_when_they_answer() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    let id = new_id("j");
                    s.insert_job(job(&id), None).await.unwrap();
                    id
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        // Durable means on disk: a second handle on the same files after the first is
        // dropped sees every acknowledged record.
        drop(s);
        let s = reopen(dir.path()).await;
        for id in &ids {
            s.job(id).unwrap();
        }
    }

    #[tokio::test]
    async fn page_tokens_must_be_ids_the_store_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..3).map(|_| new_id("j")).collect();
        for id in &ids {
            s.insert_job(job(id), None).await.unwrap();
        }
        let (_, next) = s.list_jobs(|_| true, None, 2).unwrap();
        assert_eq!(next.as_deref(), Some(ids[1].as_str()));
        // "zzz" sorts after every id: a range scan from it would answer the first page again.
        let endpoint_id = new_id("e");
        for bad in ["zzz", "j-", "", endpoint_id.as_str(), &ids[0][..20]] {
            match s.list_jobs(|_| true, Some(bad), 2) {
                Err(StoreError::Invalid(f)) => assert_eq!(f.field, "page_token"),
                other => panic!("{bad:?} accepted: {:?}", other.map(|(j, n)| (j.len(), n))),
            }
            assert!(
                matches!(
                    s.list_endpoints(|_| true, Some(&ids[0]), 2),
                    Err(StoreError::Invalid(_))
                ),
                "a job id is no endpoint page token"
            );
        }
    }

    /// A job as users submit them: a command, 20 env vars, 10 hyperparameters, inputs.
    fn realistic_job(id: &str) -> Job {
        let mut j = job(id);
        j.spec = TrainingSpec {
            name: "resnet50-imagenet-sweep".into(),
            image: Some("ghcr.io/example/train:2026.11.3-cuda12.4".into()),
            command: [
                "python",
                "-m",
                "torch.distributed.run",
                "--nproc-per-node=8",
                "train.py",
            ]
            .map(String::from)
            .to_vec(),
            args: ["--config", "configs/resnet50.yaml", "--amp"]
                .map(String::from)
                .to_vec(),
            env: (0..20)
                .map(|i| {
                    (
                        format!("TRAIN_SETTING_{i:02}"),
                        format!("value-for-setting-{i}"),
                    )
                })
                .collect(),
            hyperparameters: (0..10)
                .map(|i| (format!("hp_{i}"), format!("{}", 0.001 * f64::from(i + 1))))
                .collect(),
            inputs: ["train", "validation", "test"]
                .map(|n| crate::domain::InputChannel {
                    name: n.into(),
                    uri: format!("s3://example-datasets/imagenet/2026-10/{n}/"),
                })
                .to_vec(),
            output_uri: Some("s3://example-models/resnet50/".into()),
            max_runtime_seconds: Some(86_400),
            framework: Some("pytorch".into()),
            ..TrainingSpec::default()
        };
        j
    }

    #[tokio::test]
    async fn an_event_keeps_the_status_not_a_copy_of_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = new_id("j");
        s.insert_job(realistic_job(&id), None).await.unwrap();
        let running = s
            .update_job(&id, |j| {
                j.backend_ref = Some(BackendRef {
                    name: "mlgw-0123456789ab".into(),
                    data: "{\"pid\":4242,\"start\":987654}".into(),
                });
                j.transition(JobState::Running, "started on node-7".into(), now_ms());
                true
            })
            .await
            .unwrap();
        let record = s.jobs.get(&id).unwrap().unwrap().len();
        let event = s
            .events
            .get(event_key(&id, running.sequence))
            .unwrap()
            .unwrap()
            .len();
        // What an event was before: the whole job, as JSON.
        let whole = encode(&running).len();
        println!(
            "bytes: {whole} for the whole job in JSON, {record} for its record, {event} for its event"
        );
        assert_eq!(encode_job(&running).len(), record);
        assert!(
            event * 4 < record,
            "an event of {event} bytes against a record of {record}"
        );
        // Readers still get whole jobs, each as it was at that version.
        let evs = s.job_events(&id, 0).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1], running);
        assert_eq!(evs[0].state, JobState::Pending);
        assert_eq!(evs[0].spec, running.spec);
        assert_eq!(evs[0].backend_ref, None);
        let feed: Vec<Job> = s
            .feed_after(0, 10)
            .unwrap()
            .into_iter()
            .filter_map(|(_, j)| j)
            .collect();
        assert_eq!(feed, evs);
    }

    #[tokio::test]
    async fn a_record_written_as_json_reads_lists_and_takes_the_new_format_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = new_id("j");
        let Inserted::Created(job) = s.insert_job(realistic_job(&id), None).await.unwrap() else {
            panic!("a new job")
        };
        // The record as stores before this wrote it.
        s.jobs.insert(id.as_bytes(), encode(&job)).unwrap();
        assert_eq!(s.job(&id).unwrap(), job);
        let listed = s
            .list_jobs_by(Some(JobIndex::State(JobState::Pending)), |_| true, None, 10)
            .unwrap()
            .0;
        assert_eq!(listed, vec![job.clone()]);
        let running = s
            .update_job(&id, |j| {
                j.transition(JobState::Running, "started".into(), now_ms());
                true
            })
            .await
            .unwrap();
        let bytes = s.jobs.get(&id).unwrap().unwrap();
        assert_eq!(bytes.first(), Some(&1), "rewritten as protobuf");
        assert!(bytes.len() < encode(&running).len());
        assert_eq!(s.job(&id).unwrap(), running);
    }

    #[tokio::test]
    async fn events_written_as_whole_jobs_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = new_id("j");
        let first = s.insert_job(realistic_job(&id), None).await.unwrap();
        let Inserted::Created(first) = first else {
            panic!("a new job")
        };
        // The insert's event as stores before this wrote it: the whole job.
        s.events.insert(event_key(&id, 1), encode(&first)).unwrap();
        let done = s
            .update_job(&id, |j| {
                j.transition(JobState::Succeeded, String::new(), now_ms());
                true
            })
            .await
            .unwrap();
        assert_eq!(
            s.job_events(&id, 0).unwrap(),
            vec![first.clone(), done.clone()]
        );
        let feed: Vec<Job> = s
            .feed_after(0, 10)
            .unwrap()
            .into_iter()
            .filter_map(|(_, j)| j)
            .collect();
        assert_eq!(feed, vec![first, done]);
    }

    #[tokio::test]
    async fn a_change_that_replaces_an_event_takes_its_feed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = new_id("j");
        s.insert_job(job(&id), None).await.unwrap();
        // Notified without a new version: the same event, written again.
        let j = s
            .update_job(&id, |j| {
                j.message = "again".into();
                true
            })
            .await
            .unwrap();
        let entries = s.feed_after(0, 10).unwrap();
        assert_eq!(entries.len(), 1, "one entry per event: {entries:?}");
        assert_eq!(entries[0].0, j.feed_sequence);
        assert_eq!(
            entries[0].1.as_ref().map(|j| j.message.as_str()),
            Some("again")
        );
    }

    /// Every tree in which `id` appears, in a key or a value.
    fn traces_of(s: &Store, id: &str) -> Vec<String> {
        let mut found = Vec::new();
        for name in s.db.tree_names() {
            let tree = s.db.open_tree(&name).unwrap();
            for item in tree.iter() {
                let (k, v) = item.unwrap();
                if [&k, &v]
                    .iter()
                    .any(|b| b.windows(id.len()).any(|w| w == id.as_bytes()))
                {
                    found.push(format!(
                        "{}: {}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(&k)
                    ));
                }
            }
        }
        found
    }

    fn endpoint(id: &str, name: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            tenant: "t".into(),
            target: "local".into(),
            spec: crate::domain::EndpointSpec {
                name: name.into(),
                ..Default::default()
            },
            state: EndpointState::Creating,
            message: String::new(),
            backend_state: String::new(),
            backend_ref: None,
            url: None,
            created_at: now_ms(),
            updated_at: now_ms(),
            sequence: 1,
            degraded_since: None,
            revision: 1,
        }
    }

    const LONG_AGO: Millis = 1_000_000;

    /// Runs, then ends at `at`.
    async fn finish_at(s: &Store, id: &str, state: JobState, at: Millis) {
        for st in [JobState::Running, state] {
            s.update_job(id, |j| {
                j.transition(st, String::new(), at);
                true
            })
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn pruning_removes_exactly_what_ended_before_and_everything_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let [old_done, old_failed, old_live, recent_done] = [0; 4].map(|_| new_id("j"));
        s.insert_job(realistic_job(&old_done), Some("nightly"))
            .await
            .unwrap();
        finish_at(&s, &old_done, JobState::Succeeded, LONG_AGO).await;
        s.insert_job(job(&old_failed), None).await.unwrap();
        finish_at(&s, &old_failed, JobState::Failed, LONG_AGO + 1).await;
        // Running since long ago: never pruned, however old.
        let mut live = job(&old_live);
        live.created_at = LONG_AGO;
        live.updated_at = LONG_AGO;
        s.insert_job(live, Some("long-run")).await.unwrap();
        s.update_job(&old_live, |j| {
            j.transition(JobState::Running, String::new(), LONG_AGO);
            true
        })
        .await
        .unwrap();
        s.insert_job(job(&recent_done), None).await.unwrap();
        finish_at(&s, &recent_done, JobState::Succeeded, now_ms()).await;
        let [old_deleted, recent_deleted, serving] = [0; 3].map(|_| new_id("e"));
        for (id, name) in [(&old_deleted, "a"), (&recent_deleted, "b"), (&serving, "c")] {
            s.insert_endpoint(endpoint(id, name), Some(&format!("deploy-{name}")))
                .unwrap();
        }
        s.update_endpoint(&old_deleted, |e| {
            e.transition(EndpointState::Deleted, String::new(), LONG_AGO)
        })
        .unwrap();
        s.update_endpoint(&recent_deleted, |e| {
            e.transition(EndpointState::Deleted, String::new(), now_ms())
        })
        .unwrap();
        let feed_before = s.feed_after(0, 100).unwrap();
        let kept_feed: Vec<(u64, String, JobState)> = feed_before
            .iter()
            .filter_map(|(seq, j)| j.as_ref().map(|j| (*seq, j.id.clone(), j.state)))
            .filter(|(_, id, _)| *id == old_live || *id == recent_done)
            .collect();
        for id in [&old_done, &old_failed, &old_deleted] {
            assert!(
                !traces_of(&s, id).is_empty(),
                "{id} is stored to begin with"
            );
        }

        let cutoff = now_ms() - 3_600_000;
        let p = s.prune_before(cutoff).unwrap();
        assert_eq!((p.jobs, p.endpoints), (2, 1));
        for id in [&old_done, &old_failed, &old_deleted] {
            assert_eq!(
                traces_of(&s, id),
                Vec::<String>::new(),
                "what is left of {id}"
            );
        }
        assert_eq!(s.job(&old_live).unwrap().state, JobState::Running);
        assert_eq!(s.job_events(&old_live, 0).unwrap().len(), 2);
        assert_eq!(s.job_events(&recent_done, 0).unwrap().len(), 3);
        assert!(matches!(s.job(&old_done), Err(StoreError::NotFound(_))));
        assert!(matches!(
            s.job_events(&old_done, 0),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            s.endpoint(&recent_deleted).unwrap().state,
            EndpointState::Deleted
        );
        assert_eq!(s.find_endpoint("t", "c").unwrap().id, serving);
        assert_eq!(s.count_jobs("local", JobState::Failed).unwrap(), 0);
        assert_eq!(s.count_jobs("local", JobState::Succeeded).unwrap(), 1);
        assert_eq!(s.live_jobs_of("local").unwrap().len(), 1);

        // Watch-all over the pruned range: the kept changes, in order, nothing in between.
        let replay = |after: u64| -> Vec<(u64, String, JobState)> {
            s.feed_after(after, 100)
                .unwrap()
                .into_iter()
                .map(|(seq, j)| {
                    let j = j.expect("no pruned entry is left to skip");
                    (seq, j.id, j.state)
                })
                .collect()
        };
        assert_eq!(replay(0), kept_feed);
        assert_eq!(
            replay(feed_before[0].0),
            kept_feed,
            "resuming inside the pruned range"
        );

        // The pruned job's key is free: the same key submits anew.
        let again = new_id("j");
        assert!(matches!(
            s.insert_job(job(&again), Some("nightly")).await.unwrap(),
            Inserted::Created(j) if j.id == again
        ));
        // A live job's key still finds it.
        assert!(matches!(
            s.insert_job(job(&new_id("j")), Some("long-run")).await.unwrap(),
            Inserted::Existing(j) if j.id == old_live
        ));
        assert!(matches!(
            s.insert_endpoint(endpoint(&new_id("e"), "a"), Some("deploy-a"))
                .unwrap(),
            Inserted::Created(_)
        ));
        assert_eq!(
            s.prune_before(cutoff).unwrap(),
            Pruned::default(),
            "nothing left"
        );
    }

    #[tokio::test]
    async fn pruning_goes_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let n = PRUNE_BATCH * 2 + 5;
        for _ in 0..n {
            let id = new_id("j");
            s.insert_job(job(&id), None).await.unwrap();
            finish_at(&s, &id, JobState::Succeeded, LONG_AGO).await;
        }
        let first = s.prune_batch(LONG_AGO + 1).unwrap();
        assert_eq!((first.jobs, first.more), (PRUNE_BATCH, true));
        let rest = s.prune_before(LONG_AGO + 1).unwrap();
        assert_eq!(rest.jobs, n - PRUNE_BATCH);
        assert!(s.list_jobs(|_| true, None, 10).unwrap().0.is_empty());
        assert!(s.events.is_empty() && s.feed.is_empty() && s.index.is_empty());
    }

    #[tokio::test]
    async fn a_store_from_before_the_end_time_index_gets_it_and_prunes_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let id = new_id("j");
        {
            let s = Store::open(dir.path()).unwrap();
            s.insert_job(job(&id), Some("k")).await.unwrap();
            finish_at(&s, &id, JobState::Cancelled, LONG_AGO).await;
            // As a store written before: no end-time or key-owner entries, version 2.
            for k in s.index.iter().keys() {
                let k = k.unwrap();
                if k[1] == b'f' || k[1] == b'k' {
                    s.index.remove(k).unwrap();
                }
            }
            s.meta.insert(INDEX_VERSION, b"2").unwrap();
            assert_eq!(s.prune_before(now_ms()).unwrap().jobs, 0);
            s.db.flush().unwrap();
        }
        let s = reopen(dir.path()).await;
        assert_eq!(s.prune_before(now_ms()).unwrap().jobs, 1);
        assert_eq!(traces_of(&s, &id), Vec::<String>::new());
        assert!(s.idempotency.is_empty());
    }

    #[tokio::test]
    async fn changes_nobody_waits_on_share_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        // A window longer than the test: only a flush someone asks for publishes.
        let s = Store::open_publishing_within(dir.path(), std::time::Duration::from_secs(3600))
            .unwrap();
        let mut watch = s.subscribe();
        let ids: Vec<String> = (0..50).map(|_| new_id("j")).collect();
        // Inserts are durable when they answer: each waits for a flush.
        futures::future::join_all(ids.iter().map(|id| s.insert_job(job(id), None)))
            .await
            .into_iter()
            .for_each(|r| {
                r.unwrap();
            });
        let after_inserts = s.writer_stats().flushes;
        for id in &ids {
            s.update_job(id, |j| {
                j.transition(JobState::Running, String::new(), now_ms());
                true
            })
            .await
            .unwrap();
        }
        s.flush().await.unwrap();
        assert_eq!(
            s.writer_stats().flushes,
            after_inserts + 1,
            "50 changes and one flush asked for: one flush"
        );
        let mut seen = 0;
        while let Ok(Change::Job(_)) = watch.try_recv() {
            seen += 1;
        }
        assert_eq!(
            seen, 100,
            "every change published, the updates by that flush"
        );
    }

    /// Runs `n` updates of job `id` at once, the `i`th applying `f(i, job)`, each to the end.
    async fn update_together(
        s: &Store,
        id: &str,
        n: usize,
        f: impl Fn(usize, &mut Job) -> bool + Copy + Send + 'static,
    ) {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (s, id) = (s.clone(), id.to_string());
                tokio::spawn(async move { s.update_job(&id, move |j| f(i, j)).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_updates_of_one_job_each_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.insert_job(job("j-1"), None).await.unwrap();
        // Every task reads the same record, so all but one find it changed under them and
        // decide again on what the others wrote.
        update_together(&s, "j-1", 64, |_, j| {
            let n: u32 = j.message.parse().unwrap_or(0);
            j.message = (n + 1).to_string();
            false
        })
        .await;
        assert_eq!(s.job("j-1").unwrap().message, "64");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quiet_record_updates_and_news_of_one_job_interleave_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.insert_job(job("j-1"), None).await.unwrap();
        // Half the updates only change the record (a compare-and-swap beside the writer), half
        // are news (the writer's transactions): each must see what the others wrote.
        update_together(&s, "j-1", 64, |i, j| {
            let field = if i % 2 == 0 {
                &mut j.message
            } else {
                &mut j.backend_state
            };
            let n: u32 = field.parse().unwrap_or(0);
            *field = (n + 1).to_string();
            i % 2 == 1
        })
        .await;
        s.flush().await.unwrap();
        drop(s);
        let s = reopen(dir.path()).await;
        let j = s.job("j-1").unwrap();
        assert_eq!((j.message.as_str(), j.backend_state.as_str()), ("32", "32"));
        // Only news reaches the events: the last of it set backend_state to 32.
        let last = s.job_events("j-1", 0).unwrap().pop().unwrap();
        assert_eq!(last.backend_state, "32");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_cannot_apply_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // Writes in flight together share batches: the updates of records that do not exist
        // must fail without taking the inserts beside them down.
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        s.insert_job(job(&format!("j-{i}")), None).await.map(|_| ())
                    } else {
                        s.update_job(&format!("missing-{i}"), |j| {
                            j.message = "x".into();
                            true
                        })
                        .await
                        .map(|_| ())
                    }
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            match (i % 2, t.await.unwrap()) {
                (0, r) => r.unwrap(),
                (_, Err(StoreError::NotFound(_))) => {}
                (_, r) => panic!("update of a missing job: {:?}", r.err()),
            }
        }
        drop(s);
        let s = reopen(dir.path()).await;
        for i in (0..64).step_by(2) {
            s.job(&format!("j-{i}")).unwrap();
        }
    }

    #[tokio::test]
    async fn a_change_nobody_waits_on_still_reaches_watchers_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut watch = s.subscribe();
        let id = new_id("j");
        s.insert_job(job(&id), None).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(30), watch.recv())
            .await
            .expect("published within the window")
            .unwrap();
        assert!(matches!(got, Change::Job(j) if j.id == id));
        assert!(
            s.writer_stats().flushes >= 1,
            "only after a flush made it durable"
        );
    }
}
