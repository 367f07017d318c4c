use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, training_service_server::TrainingService};
use super::status::{field_status, to_status};
use crate::domain::FieldError;
use crate::domain::validate::{
    page_size, validate_cursor, validate_id, validate_idempotency_key, validate_target,
};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::gateway::{JobFilter, WatchFilter};

pub struct TrainingApi {
    gw: Arc<Gateway>,
}

impl TrainingApi {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl TrainingService for TrainingApi {
    async fn submit(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = req.into_inner();
        validate_target("target", &r.target).map_err(field_status)?;
        validate_idempotency_key(&r.idempotency_key).map_err(field_status)?;
        let spec = r
            .spec
            .ok_or_else(|| field_status(FieldError::new("spec", "required")))?;
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
        let job = self
            .gw
            .submit_job(&r.target, convert::training_spec(spec), key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::job(job)))
    }

    async fn get(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().id;
        validate_id("id", &id).map_err(field_status)?;
        let job = self.gw.get_job(&id).map_err(to_status)?;
        Ok(Response::new(convert::job(job)))
    }

    async fn list(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = req.into_inner();
        validate_target("target", &r.target).map_err(field_status)?;
        let page_size = page_size(r.page_size).map_err(field_status)?;
        let filter = JobFilter {
            target: (!r.target.is_empty()).then_some(r.target),
            state: convert::job_state_from(r.state, "state").map_err(to_status)?,
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token);
        let (jobs, next) = self
            .gw
            .list_jobs(&filter, token.as_deref(), page_size)
            .map_err(to_status)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.into_iter().map(convert::job).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().id;
        validate_id("id", &id).map_err(field_status)?;
        let job = self.gw.cancel_job(&id).await.map_err(to_status)?;
        Ok(Response::new(convert::job(job)))
    }

    type WatchStream = Streamed<pb::JobEvent>;

    async fn watch(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        let stream = if r.id.is_empty() {
            validate_target("target", &r.target).map_err(field_status)?;
            let states = r
                .states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    convert::job_state_from(*s, &format!("states[{i}]"))?.ok_or_else(|| {
                        GatewayError::Invalid {
                            field: format!("states[{i}]"),
                            reason: "a state to watch for, not JOB_STATE_UNSPECIFIED".into(),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(to_status)?;
            let filter = WatchFilter {
                target: (!r.target.is_empty()).then_some(r.target),
                states,
            };
            self.gw
                .watch_jobs(filter, r.after_feed_sequence)
                .map_err(to_status)?
        } else {
            validate_id("id", &r.id).map_err(field_status)?;
            // One job's events are numbered by its own sequence; the filters and the feed
            // position belong to watching every job.
            let misplaced = [
                ("target", !r.target.is_empty()),
                ("states", !r.states.is_empty()),
                ("after_feed_sequence", r.after_feed_sequence.is_some()),
            ];
            if let Some((field, _)) = misplaced.iter().find(|(_, set)| *set) {
                return Err(field_status(FieldError {
                    field: (*field).into(),
                    reason: "applies to watching every job (no id)".into(),
                }));
            }
            self.gw.watch_job(&r.id).map_err(to_status)?
        };
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map(convert::job_event).map_err(to_status)),
        )))
    }

    type LogsStream = Streamed<pb::LogLine>;

    async fn logs(
        &self,
        req: Request<pb::JobLogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        validate_id("id", &r.id).map_err(field_status)?;
        validate_cursor(&r.cursor).map_err(field_status)?;
        let cursor = (!r.cursor.is_empty()).then_some(r.cursor);
        let stream = self
            .gw
            .job_logs(&r.id, r.follow, cursor)
            .map_err(to_status)?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map(convert::log_line).map_err(to_status)),
        )))
    }
}
