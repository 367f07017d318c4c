//! Training jobs: submit, read, cancel, watch and logs.

use std::pin::Pin;

use futures::Stream;
use tracing::Instrument;

use super::{DEFAULT_TENANT, Gateway, Start};
use crate::artifacts::{ArtifactError, ArtifactKind};
use crate::domain::{
    Feature, Job, JobState, LogLine, TrainingSpec, now_ms, validate_training_spec,
};
use crate::error::{GatewayError, Result};
use crate::runtime::{BackendFailure, PluginError, Target};
use crate::store::{Change, Inserted, JobIndex, new_id};

/// Lines fetched from a backend per call.
const LOG_PAGE: u32 = 2000;
/// How long a cancel may take before the backend is asked again: longer than any grace
/// period a target gives a job to stop (the local target's is 5 s).
const CANCEL_RESEND_MS: u64 = 15_000;

pub type JobStream = Pin<Box<dyn Stream<Item = Result<Job>> + Send>>;
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogItem>> + Send>>;

pub struct LogItem {
    pub line: LogLine,
    /// Set on the last line of each page: where to resume.
    pub cursor: String,
}

#[derive(Default)]
pub struct JobFilter {
    pub target: Option<String>,
    pub state: Option<JobState>,
}

/// Which changes a Watch of every job streams.
#[derive(Debug, Default, Clone)]
pub struct WatchFilter {
    pub target: Option<String>,
    /// Any of these states; empty: all.
    pub states: Vec<JobState>,
}

impl WatchFilter {
    fn matches(&self, j: &Job) -> bool {
        self.target.as_ref().is_none_or(|t| &j.target == t)
            && (self.states.is_empty() || self.states.contains(&j.state))
    }
}

/// Feed entries read at once when a watcher replays.
const FEED_PAGE: usize = 512;

/// A URI naming a file on the gateway's machine: what a target elsewhere cannot read.
fn is_local_path(uri: &str) -> bool {
    uri.starts_with("file:") || !uri.contains("://")
}

/// A target elsewhere cannot read the gateway's files: inputs and outputs must be URIs it can
/// reach, such as `s3://` (code reaches it through the artifact store).
fn refuse_local_paths(target: &str, spec: &TrainingSpec) -> Result<()> {
    let why = |what: &str| {
        format!(
            "{what} is a path on the gateway's machine, which target {target} cannot read; \
             upload it to the artifact store (ArtifactService, or code= in the SDK) or give an \
             s3:// URI"
        )
    };
    for (i, input) in spec.inputs.iter().enumerate() {
        if is_local_path(&input.uri) {
            return Err(GatewayError::Invalid {
                field: format!("spec.inputs[{i}].uri"),
                reason: why(&format!("input {:?}", input.name)),
            });
        }
    }
    if let Some(out) = spec.output_uri.as_deref().filter(|u| is_local_path(u)) {
        return Err(GatewayError::Invalid {
            field: "spec.output_uri".into(),
            reason: why(&format!("{out:?}")),
        });
    }
    Ok(())
}

pub(super) fn is_transient(e: &PluginError) -> bool {
    matches!(
        e,
        PluginError::Backend {
            failure: BackendFailure::Unavailable(_) | BackendFailure::Throttled(_),
            ..
        } | PluginError::OverBudget { .. }
    )
}

impl Gateway {
    pub async fn submit_job(
        &self,
        target: &str,
        mut spec: TrainingSpec,
        idempotency_key: Option<String>,
    ) -> Result<Job> {
        spec.resources.nodes = spec.resources.nodes.max(1);
        validate_training_spec(&spec)?;
        let t = self.resolve_target(target)?;
        t.require(Feature::Training)?;
        if t.is_remote() {
            refuse_local_paths(&t.name, &spec)?;
        }
        let id = new_id("j");
        // Claimed before the record exists, so the reconciler (which starts pending jobs it
        // finds) never hands this one over first: the caller gets the submit's own answer.
        let _claim = self
            .claim_start(&id)
            .expect("a new id is claimed by no one");
        // Pure check first, so a spec the backend cannot run is refused and nothing is stored.
        self.check_code(&t, &spec).await?;
        self.runtime.validate_training(&t, &id, &spec).await?;
        let now = now_ms();
        let job = Job {
            id,
            tenant: DEFAULT_TENANT.into(),
            target: t.name.clone(),
            spec,
            state: JobState::Pending,
            message: String::new(),
            backend_state: String::new(),
            backend_ref: None,
            output_uri: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            cancel_requested: false,
            cancel_sent_at: None,
            sequence: 1,
            feed_sequence: 0,
        };
        // Durable before anything runs: a crash from here on is recovered by the reconciler.
        let job = match self
            .store
            .insert_job(job, idempotency_key.as_deref())
            .await?
        {
            Inserted::Existing(j) => return Ok(j),
            Inserted::Created(j) => j,
        };
        Ok(self.start_claimed(&t, &job).await?.record())
    }

    /// Hands a recorded job to its backend. A transient failure leaves it pending for the
    /// reconciler to retry under the same backend name; any other failure ends it.
    pub(crate) async fn start_job(&self, t: &Target, job: &Job) -> Result<Start<Job>> {
        let Some(_claim) = self.claim_start(&job.id) else {
            // Another task is handing this job over right now; it records the outcome.
            return Ok(Start::Done(self.store.job(&job.id)?));
        };
        self.start_claimed(t, job).await
    }

    /// `start_job` for a caller that holds the job's start claim.
    async fn start_claimed(&self, t: &Target, job: &Job) -> Result<Start<Job>> {
        // The caller's copy may predate a start that finished meanwhile.
        let job = self.store.job(&job.id)?;
        if job.backend_ref.is_some() || job.state.is_terminal() {
            return Ok(Start::Done(job));
        }
        match self.runtime.submit_training(t, &job.id, &job.spec).await {
            Ok(r) => {
                let job = self
                    .store
                    .update_job(&job.id, |j| {
                        j.backend_state = format!("submitted as {}", r.name);
                        j.backend_ref = Some(r.clone());
                        false
                    })
                    .await?;
                // Cancelled while it was being handed over: stop what just started.
                if job.cancel_requested
                    && let Err(e) = self.runtime.cancel_training(t, &job.id, &r).await
                {
                    tracing::warn!(job = %job.id, "cancelling a job cancelled while it started: {e}");
                }
                Ok(Start::Done(job))
            }
            Err(e) if is_transient(&e) => {
                let job = self
                    .store
                    .update_job(&job.id, |j| {
                        let msg = format!("waiting for the target: {e}");
                        let changed = j.message != msg;
                        if changed {
                            j.transition(JobState::Pending, msg, now_ms());
                        }
                        changed
                    })
                    .await?;
                Ok(Start::Waiting(job, e))
            }
            Err(e) => {
                self.store
                    .update_job(&job.id, |j| {
                        j.transition(JobState::Failed, format!("submit failed: {e}"), now_ms());
                        true
                    })
                    .await?;
                Err(e.into())
            }
        }
    }

    pub fn get_job(&self, id: &str) -> Result<Job> {
        Ok(self.store.job(id)?)
    }

    pub fn list_jobs(
        &self,
        filter: &JobFilter,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<(Vec<Job>, Option<String>)> {
        if let Some(t) = &filter.target
            && self.runtime.target(t).is_none()
        {
            return Err(GatewayError::NotFound(format!("target {t}")));
        }
        // Read only the records the narrowest index holds.
        let index = match (filter.target.as_deref(), filter.state) {
            (Some(t), Some(s)) => Some(JobIndex::TargetState(t, s)),
            (None, Some(s)) => Some(JobIndex::State(s)),
            (Some(t), None) => Some(JobIndex::Target(t)),
            (None, None) => None,
        };
        Ok(self.store.list_jobs_by(
            index,
            |j| {
                filter.target.as_ref().is_none_or(|t| &j.target == t)
                    && filter.state.is_none_or(|s| j.state == s)
            },
            page_token,
            page_size,
        )?)
    }

    pub async fn cancel_job(&self, id: &str) -> Result<Job> {
        let job = self.store.job(id)?;
        match job.state {
            JobState::Cancelled => return Ok(job),
            s if s.is_terminal() => {
                return Err(GatewayError::FailedPrecondition(format!(
                    "job {id} already ended: {}",
                    s.as_str()
                )));
            }
            _ => {}
        }
        let t = self.resolve_target(&job.target)?;
        // A job that never reached its backend can always be cancelled; only stopping one
        // that runs needs the plugin.
        if job.backend_ref.is_some() {
            t.require(Feature::TrainingCancel)?;
        }
        let job = self
            .store
            .update_job(id, |j| {
                j.cancel_requested = true;
                if j.backend_ref.is_some() {
                    j.cancel_sent_at = Some(now_ms());
                }
                false
            })
            .await?;
        // The user's intent is durable before anything acts on it: a gateway that crashes
        // from here on still knows the job is to stop, and the reconciler sees to it.
        self.store.flush().await?;
        match &job.backend_ref {
            // Never reached the backend: nothing to stop.
            None => Ok(self
                .store
                .update_job(id, |j| {
                    j.transition(
                        JobState::Cancelled,
                        "cancelled before it started".into(),
                        now_ms(),
                    );
                    true
                })
                .await?),
            Some(r) => {
                self.runtime.cancel_training(&t, id, r).await?;
                Ok(self.store.job(id)?)
            }
        }
    }

    /// The job as it is now, then each recorded change until it ends.
    pub fn watch_job(&self, id: &str) -> Result<JobStream> {
        let mut changes = self.store.subscribe();
        let first = self.store.job(id)?;
        let store = self.store.clone();
        let id = id.to_string();
        Ok(Box::pin(async_stream::try_stream! {
            let mut seen = first.sequence;
            let done = first.state.is_terminal();
            yield first;
            if done {
                return;
            }
            loop {
                let next = match changes.recv().await {
                    Ok(Change::Job(j)) if j.id == id => vec![*j],
                    Ok(_) => continue,
                    // Fell behind the broadcast: the event log has every change.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        store.job_events(&id, seen)?
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                for j in next {
                    if j.sequence <= seen {
                        continue;
                    }
                    seen = j.sequence;
                    let done = j.state.is_terminal();
                    yield j;
                    if done {
                        return;
                    }
                }
            }
        }))
    }

    /// Every job change from now (or after feed sequence `after`) that passes `filter`, in
    /// feed order, until the client goes. The feed has every change that was published, so a
    /// client resuming after the last sequence it saw gets each later change exactly once.
    pub fn watch_jobs(&self, filter: WatchFilter, after: Option<u64>) -> Result<JobStream> {
        // Subscribed before reading the feed's head, so nothing falls between the two.
        let mut changes = self.store.subscribe();
        if let Some(t) = &filter.target
            && self.runtime.target(t).is_none()
        {
            return Err(GatewayError::NotFound(format!("target {t}")));
        }
        let store = self.store.clone();
        let start = match after {
            Some(a) => a,
            None => store.feed_head()?,
        };
        Ok(Box::pin(async_stream::try_stream! {
            let mut seen = start;
            // The replay, in pages, then live changes; a watcher that falls behind the
            // broadcast reads the feed again from where it was.
            let mut replay = after.is_some();
            loop {
                if replay {
                    let page = store.feed_after(seen, FEED_PAGE)?;
                    let more = page.len() == FEED_PAGE;
                    for (seq, job) in page {
                        seen = seq;
                        if let Some(j) = job.filter(|j| filter.matches(j)) {
                            yield j;
                        }
                    }
                    replay = more;
                    continue;
                }
                match changes.recv().await {
                    Ok(Change::Job(j)) => {
                        if j.feed_sequence > seen {
                            seen = j.feed_sequence;
                            if filter.matches(&j) {
                                yield *j;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => replay = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }))
    }

    /// Pages of log lines from the backend; with `follow`, keeps polling until the backend
    /// says the log is complete.
    pub fn job_logs(
        self: &std::sync::Arc<Self>,
        id: &str,
        follow: bool,
        cursor: Option<String>,
    ) -> Result<LogStream> {
        let job = self.store.job(id)?;
        let t = self.resolve_target(&job.target)?;
        t.require(Feature::TrainingLogs)?;
        let gw = self.clone();
        let id = id.to_string();
        // Backends hand out one cursor per page; clients want to resume after any line, so
        // each line's cursor is the page's start cursor plus how many of its lines to skip.
        let start = cursor.as_deref().map(LineCursor::parse).transpose()?;
        // Pages are read one ahead, on a task of their own: the plugin reads the next page
        // while this one is encoded and sent, instead of the two taking turns. The task ends
        // when the stream is dropped.
        let (pages, mut next) = tokio::sync::mpsc::channel::<Result<Fetched>>(1);
        let (cursor, skip) = match start {
            Some(c) => (c.page, c.skip),
            None => (None, 0),
        };
        tokio::spawn(
            async move {
                if let Err(e) = gw
                    .read_log_pages(&t, &id, follow, cursor, skip, &pages)
                    .await
                {
                    let _ = pages.send(Err(e)).await;
                }
            }
            .instrument(tracing::Span::current()),
        );
        Ok(Box::pin(async_stream::try_stream! {
            while let Some(fetched) = next.recv().await {
                let Fetched { start, skip, page } = fetched?;
                let n = page.lines.len();
                for (i, line) in page.lines.into_iter().enumerate().skip(skip) {
                    let cursor = if i + 1 == n {
                        LineCursor::encode_at(0, Some(&page.next_cursor))
                    } else {
                        LineCursor::encode_at(i + 1, start.as_deref())
                    };
                    yield LogItem { line, cursor };
                }
            }
        }))
    }

    /// Reads a job's log pages from `cursor` on into `pages`, until the log is complete (or,
    /// without `follow`, until a page brings nothing new) or nobody reads `pages` any more.
    async fn read_log_pages(
        &self,
        t: &Target,
        id: &str,
        follow: bool,
        mut cursor: Option<String>,
        mut skip: usize,
        pages: &tokio::sync::mpsc::Sender<Result<Fetched>>,
    ) -> Result<()> {
        while !pages.is_closed() {
            let job = self.store.job(id)?;
            let Some(r) = job.backend_ref.clone() else {
                if job.state.is_terminal() || !follow {
                    return Ok(());
                }
                tokio::time::sleep(self.log_poll).await;
                continue;
            };
            let page = self
                .runtime
                .training_logs(t, id, &r, cursor.as_deref(), LOG_PAGE)
                .await?;
            let (n, complete) = (page.lines.len(), page.complete);
            let next_cursor = page.next_cursor.clone();
            let fetched = Fetched {
                start: cursor,
                skip,
                page,
            };
            if pages.send(Ok(fetched)).await.is_err() {
                return Ok(());
            }
            skip = 0;
            cursor = Some(next_cursor);
            // Without follow, read until a page brings nothing new: a short page is no end,
            // since the host cuts pages by size and a backend by its own limits.
            if complete || (!follow && n == 0) {
                return Ok(());
            }
            if n == 0 {
                tokio::time::sleep(self.log_poll).await;
            }
        }
        Ok(())
    }

    /// The job's code must be a directory artifact of this gateway's store, and one its
    /// target can reach.
    async fn check_code(&self, t: &Target, spec: &TrainingSpec) -> Result<()> {
        let Some(code) = spec.code_uri.as_deref() else {
            return Ok(());
        };
        let invalid = |reason: String| GatewayError::Invalid {
            field: "spec.code_uri".into(),
            reason,
        };
        let a = match self.artifacts.stat(DEFAULT_TENANT, code).await {
            Ok(a) => a,
            Err(ArtifactError::NotFound(_)) => {
                return Err(invalid(format!(
                    "{code:?} is no artifact of this gateway; upload the code first \
                     (ArtifactService.Upload, code= in the SDK, mlgw submit --code)"
                )));
            }
            Err(ArtifactError::Invalid { reason, .. }) => return Err(invalid(reason)),
            Err(e) => return Err(e.into()),
        };
        if a.kind != ArtifactKind::Directory {
            return Err(invalid(format!(
                "{code:?} is a single file; a job's code is a directory artifact"
            )));
        }
        if t.is_remote() && !self.artifacts.is_remote() {
            return Err(invalid(format!(
                "the artifact store is a directory on the gateway's machine, which target {} \
                 cannot read; configure [artifacts] store = \"s3\"",
                t.name
            )));
        }
        Ok(())
    }

    /// With an object store, a job that wrote its outputs on the gateway's machine has them
    /// published there, and its output URI is where every target can read them. Only outputs
    /// inside the target's own root are published: a plugin cannot make the gateway upload
    /// anything else it can read.
    async fn publish_outputs(
        &self,
        t: &Target,
        job: &Job,
        obs: &mut crate::domain::JobObservation,
    ) -> Result<()> {
        let (Some(out), Some(process)) = (obs.output_uri.as_deref(), t.caps.process.as_ref())
        else {
            return Ok(());
        };
        if !self.artifacts.is_remote() {
            return Ok(());
        }
        let Some(path) = out.strip_prefix("file://") else {
            return Ok(());
        };
        let path = std::path::Path::new(path);
        let inside = path
            .canonicalize()
            .is_ok_and(|real| real.starts_with(process.root()));
        if !inside {
            return Ok(());
        }
        let uri = self
            .artifacts
            .publish_dir(DEFAULT_TENANT, &job.id, path)
            .await?;
        tracing::info!(job = %job.id, %uri, "published the job's outputs");
        obs.output_uri = Some(uri);
        Ok(())
    }

    /// A cancel is what the job should come to, not a one-off signal: the backend is asked
    /// again while the job still runs. Stopping often escalates after a grace period inside
    /// the gateway (SIGTERM, then SIGKILL); a gateway that restarted within it never sent the
    /// second, and a job that ignores the first would run on.
    async fn resend_cancel(
        &self,
        t: &Target,
        job: &Job,
        r: &crate::domain::BackendRef,
    ) -> Result<()> {
        let now = now_ms();
        let due = job.cancel_requested
            && !job.state.is_terminal()
            && job
                .cancel_sent_at
                .is_none_or(|at| now.saturating_sub(at) >= CANCEL_RESEND_MS);
        if !due || !t.supports(Feature::TrainingCancel) {
            return Ok(());
        }
        tracing::info!(job = %job.id, "asking the target again to stop a cancelled job");
        self.runtime.cancel_training(t, &job.id, r).await?;
        self.store
            .update_job(&job.id, |j| {
                j.cancel_sent_at = Some(now);
                false
            })
            .await?;
        Ok(())
    }

    /// One reconciliation step for a live job: submit it if it never reached its backend,
    /// otherwise fold in the backend's status.
    pub(crate) async fn reconcile_job(&self, job: &Job) -> Result<()> {
        let t = self.resolve_target(&job.target)?;
        let Some(r) = &job.backend_ref else {
            if job.cancel_requested {
                self.store
                    .update_job(&job.id, |j| {
                        j.transition(
                            JobState::Cancelled,
                            "cancelled before it started".into(),
                            now_ms(),
                        );
                        true
                    })
                    .await?;
                return Ok(());
            }
            // Still waiting: an error, so the reconciler backs off instead of asking the
            // target again every tick.
            return match self.start_job(&t, job).await? {
                Start::Done(_) => Ok(()),
                Start::Waiting(_, e) => Err(e.into()),
            };
        };
        match self.runtime.training_status(&t, &job.id, r).await {
            Ok(mut obs) => {
                if obs.state == JobState::Succeeded
                    && let Err(e) = self.publish_outputs(&t, job, &mut obs).await
                {
                    // Not succeeded until every target can read what it made.
                    self.say_why(&job.id, format!("publishing the job's outputs: {e}"))
                        .await?;
                    return Err(e);
                }
                let job = self
                    .store
                    .update_job(&job.id, |j| {
                        // A cancel or finish recorded meanwhile wins over a stale observation.
                        if j.state.is_terminal() {
                            return false;
                        }
                        j.observe(obs.clone(), now_ms())
                    })
                    .await?;
                self.resend_cancel(&t, &job, r).await
            }
            Err(PluginError::Backend {
                failure: BackendFailure::NotFound(m),
                ..
            }) => {
                self.store
                    .update_job(&job.id, |j| {
                        if j.state.is_terminal() {
                            return false;
                        }
                        // A cancel that deletes the backend's object ends with the object gone:
                        // that is the cancel done, not a failure.
                        if j.cancel_requested {
                            j.transition(JobState::Cancelled, "cancelled".into(), now_ms());
                        } else {
                            j.transition(
                                JobState::Failed,
                                format!("the backend no longer knows this job: {m}"),
                                now_ms(),
                            );
                        }
                        true
                    })
                    .await?;
                Ok(())
            }
            // Nothing of the answer is kept, but the job should say why it stopped moving.
            Err(e @ (PluginError::Oversized { .. } | PluginError::Contract { .. })) => {
                self.say_why(
                    &job.id,
                    format!("the target's status could not be read: {e}"),
                )
                .await?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a live job's message, keeping its state, when it says something new.
    async fn say_why(&self, id: &str, msg: String) -> Result<()> {
        self.store
            .update_job(id, |j| {
                let changed = !j.state.is_terminal() && j.message != msg;
                if changed {
                    j.transition(j.state, msg.clone(), now_ms());
                }
                changed
            })
            .await?;
        Ok(())
    }
}

/// A page of log lines as read, with the cursor it was read from and how many of its lines
/// the reader has already seen.
struct Fetched {
    start: Option<String>,
    skip: usize,
    page: crate::domain::LogPage,
}

/// A resume point after one log line: the backend cursor of the page holding the line and
/// how many of that page's lines were already delivered. Encoded as `<skip>.<page cursor>`
/// (an empty page cursor is the start of the log).
#[derive(Debug, PartialEq)]
struct LineCursor {
    page: Option<String>,
    skip: usize,
}

impl LineCursor {
    #[cfg(test)]
    fn encode(&self) -> String {
        Self::encode_at(self.skip, self.page.as_deref())
    }

    /// The cursor after `skip` lines of the page read from `page`.
    fn encode_at(skip: usize, page: Option<&str>) -> String {
        format!("{skip}.{}", page.unwrap_or(""))
    }

    fn parse(s: &str) -> Result<Self> {
        let invalid = || GatewayError::Invalid {
            field: "cursor".into(),
            reason: format!("{s:?} is not a cursor this gateway returned"),
        };
        let (skip, page) = s.split_once('.').ok_or_else(invalid)?;
        let skip: usize = skip.parse().map_err(|_| invalid())?;
        if skip >= LOG_PAGE as usize {
            return Err(invalid());
        }
        Ok(Self {
            page: (!page.is_empty()).then(|| page.to_string()),
            skip,
        })
    }
}

#[cfg(test)]
mod line_cursor_tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_cursors() {
        for c in [
            LineCursor {
                page: None,
                skip: 3,
            },
            LineCursor {
                page: Some("120".into()),
                skip: 0,
            },
            LineCursor {
                page: Some("a.b:c".into()),
                skip: 7,
            },
        ] {
            assert_eq!(LineCursor::parse(&c.encode()).unwrap(), c);
        }
        for bad in ["", "12", "x.5", "-1.4", "99999999.1"] {
            assert!(
                matches!(LineCursor::parse(bad), Err(GatewayError::Invalid { ref field, .. }) if field == "cursor"),
                "{bad:?} accepted"
            );
        }
    }
}
