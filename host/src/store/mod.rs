//! The gateway's record of every job and endpoint, in sled. A submitted job is flushed to disk
//! before Submit answers; idempotency keys map to the record they created; every job state
//! change is kept as an event so Watch can replay, and is also published to live watchers.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::broadcast;

use crate::domain::validate::validate_page_token;
use crate::domain::{Endpoint, EndpointState, FieldError, Job, JobState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
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
    changes: broadcast::Sender<Change>,
}

/// What an insert with an idempotency key did.
pub enum Inserted<T> {
    Created(T),
    Existing(T),
}

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
    let mut k = id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
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
        let db = sled::Config::new().path(dir).open()?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Self {
            jobs: db.open_tree("jobs")?,
            endpoints: db.open_tree("endpoints")?,
            idempotency: db.open_tree("idempotency")?,
            endpoint_names: db.open_tree("endpoint_names")?,
            events: db.open_tree("job_events")?,
            db,
            changes,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// A tree for a capability's own bookkeeping (e.g. the processes a target started).
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// Makes every write so far durable. sled's own `flush_async` runs on sled's small I/O
    /// pool, which also writes the log buffers; enough concurrent flushes fill that pool with
    /// waiters and nothing is left to write, so the gateway hung under concurrent submits. A
    /// blocking flush on tokio's blocking pool leaves sled's pool free to do the writing.
    pub async fn flush(&self) -> Result<()> {
        flush_tree(&self.db).await
    }

    /// Records a new job, or returns the one an earlier call with the same key created.
    pub fn insert_job(&self, job: Job, idempotency_key: Option<&str>) -> Result<Inserted<Job>> {
        let id = job.id.clone();
        let bytes = encode(&job);
        let ikey = idempotency_key.map(|k| idem_key(&job.tenant, "job", k));
        let existing = unwrap_tx((&self.jobs, &self.idempotency, &self.events).transaction(
            |(jobs, idem, events)| {
                if let Some(k) = &ikey {
                    if let Some(prev) = idem.get(k)? {
                        return Ok(Some(prev));
                    }
                    idem.insert(k.as_slice(), id.as_bytes())?;
                }
                jobs.insert(id.as_bytes(), bytes.as_slice())?;
                events.insert(event_key(&id, job.sequence), bytes.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(None)
            },
        ))?;
        match existing {
            Some(prev_id) => {
                let prev_id = String::from_utf8_lossy(&prev_id).into_owned();
                Ok(Inserted::Existing(self.job(&prev_id)?))
            }
            None => {
                let _ = self.changes.send(Change::Job(Box::new(job.clone())));
                Ok(Inserted::Created(job))
            }
        }
    }

    pub fn job(&self, id: &str) -> Result<Job> {
        match self.jobs.get(id)? {
            Some(b) => decode(id.as_bytes(), &b),
            None => Err(StoreError::NotFound(format!("job {id}"))),
        }
    }

    /// Applies `f` atomically to the stored job. `f` returns whether watchers should hear of it;
    /// such changes are appended to the job's event log.
    pub fn update_job<F>(&self, id: &str, f: F) -> Result<Job>
    where
        F: Fn(&mut Job) -> bool,
    {
        let (job, notify) = unwrap_tx((&self.jobs, &self.events).transaction(|(jobs, events)| {
            let Some(b) = jobs.get(id)? else {
                return Err(ConflictableTransactionError::Abort(StoreError::NotFound(
                    format!("job {id}"),
                )));
            };
            let mut job: Job =
                decode(id.as_bytes(), &b).map_err(ConflictableTransactionError::Abort)?;
            let notify = f(&mut job);
            let bytes = encode(&job);
            jobs.insert(id.as_bytes(), bytes.as_slice())?;
            if notify {
                events.insert(event_key(id, job.sequence), bytes.as_slice())?;
            }
            Ok((job, notify))
        }))?;
        if notify {
            let _ = self.changes.send(Change::Job(Box::new(job.clone())));
        }
        Ok(job)
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
        if let Some(a) = after {
            validate_page_token("j", a)?;
        }
        let iter = match after {
            Some(a) => self.jobs.range(..a.as_bytes()),
            None => self.jobs.range::<&[u8], _>(..),
        };
        let mut out = Vec::new();
        for item in iter.rev() {
            let (k, v) = item?;
            let job: Job = decode(&k, &v)?;
            if filter(&job) {
                if out.len() == limit {
                    let last: &Job = out.last().unwrap();
                    return Ok((out.clone(), Some(last.id.clone())));
                }
                out.push(job);
            }
        }
        Ok((out, None))
    }

    /// One target's jobs that have not ended.
    pub fn live_jobs_of(&self, target: &str) -> Result<Vec<Job>> {
        Ok(self
            .list_jobs(
                |j| j.target == target && !j.state.is_terminal(),
                None,
                usize::MAX,
            )?
            .0)
    }

    /// The job's recorded changes with a sequence above `after`, oldest first.
    pub fn job_events(&self, id: &str, after: u64) -> Result<Vec<Job>> {
        let start = event_key(id, after.saturating_add(1));
        let end = event_key(id, u64::MAX);
        self.events
            .range(start..=end)
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
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
        let existing = unwrap_tx(
            (&self.endpoints, &self.idempotency, &self.endpoint_names).transaction(
                |(eps, idem, names)| {
                    if let Some(k) = &ikey {
                        if let Some(prev) = idem.get(k)? {
                            return Ok(Some(prev));
                        }
                        idem.insert(k.as_slice(), id.as_bytes())?;
                    }
                    if names.get(&nkey)?.is_some() {
                        return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                            format!("an endpoint named {:?} already exists", ep.spec.name),
                        )));
                    }
                    names.insert(nkey.as_slice(), id.as_bytes())?;
                    eps.insert(id.as_bytes(), bytes.as_slice())?;
                    Ok(None)
                },
            ),
        )?;
        match existing {
            Some(prev) => Ok(Inserted::Existing(
                self.endpoint(&String::from_utf8_lossy(&prev))?,
            )),
            None => {
                let _ = self.changes.send(Change::Endpoint(Box::new(ep.clone())));
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
        let (ep, notify) = unwrap_tx((&self.endpoints, &self.endpoint_names).transaction(
            |(eps, names)| {
                let Some(b) = eps.get(id)? else {
                    return Err(ConflictableTransactionError::Abort(StoreError::NotFound(
                        format!("endpoint {id}"),
                    )));
                };
                let mut ep: Endpoint =
                    decode(id.as_bytes(), &b).map_err(ConflictableTransactionError::Abort)?;
                let notify = f(&mut ep);
                eps.insert(id.as_bytes(), encode(&ep))?;
                // A deleted endpoint frees its name for reuse.
                if ep.state == EndpointState::Deleted {
                    let nk = name_key(&ep.tenant, &ep.spec.name);
                    if names.get(&nk)?.as_deref() == Some(id.as_bytes()) {
                        names.remove(nk)?;
                    }
                }
                Ok((ep, notify))
            },
        ))?;
        if notify {
            let _ = self.changes.send(Change::Endpoint(Box::new(ep.clone())));
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

    /// One target's endpoints that are not deleted.
    pub fn live_endpoints_of(&self, target: &str) -> Result<Vec<Endpoint>> {
        Ok(self
            .list_endpoints(
                |e| e.target == target && e.state != EndpointState::Deleted,
                None,
                usize::MAX,
            )?
            .0)
    }
}

/// Ids sort by creation time, so listing newest-first is a reverse range scan.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

pub fn is_live(state: JobState) -> bool {
    !state.is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TrainingSpec, now_ms};

    fn job(id: &str) -> Job {
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
        }
    }

    #[test]
    fn idempotency_key_returns_the_first_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = s.insert_job(job(&new_id("j")), Some("k1")).unwrap();
        let b = s.insert_job(job(&new_id("j")), Some("k1")).unwrap();
        let (Inserted::Created(a), Inserted::Existing(b)) = (a, b) else {
            panic!("second insert must find the first")
        };
        assert_eq!(a.id, b.id);
        assert_eq!(s.list_jobs(|_| true, None, 10).unwrap().0.len(), 1);
    }

    #[test]
    fn survives_reopen_and_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..5).map(|_| new_id("j")).collect();
        {
            let s = Store::open(dir.path()).unwrap();
            for id in &ids {
                s.insert_job(job(id), None).unwrap();
            }
            s.db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
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

    #[test]
    fn updates_append_events() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = new_id("j");
        s.insert_job(job(&id), None).unwrap();
        s.update_job(&id, |j| {
            j.transition(JobState::Running, String::new(), 2);
            true
        })
        .unwrap();
        s.update_job(&id, |j| {
            j.backend_state = "noise".into();
            false
        })
        .unwrap();
        let evs = s.job_events(&id, 0).unwrap();
        assert_eq!(
            evs.iter().map(|j| j.state).collect::<Vec<_>>(),
            vec![JobState::Pending, JobState::Running]
        );
        assert_eq!(s.job_events(&id, 1).unwrap().len(), 1);
        assert!(matches!(
            s.update_job("missing", |_| true),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn page_tokens_must_be_ids_the_store_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..3).map(|_| new_id("j")).collect();
        for id in &ids {
            s.insert_job(job(id), None).unwrap();
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
}
