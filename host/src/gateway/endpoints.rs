//! Model endpoints: deploy, read, update, delete, and predictions through them.

use std::sync::Arc;

use super::jobs::is_transient;
use super::{DEFAULT_TENANT, Gateway, Start};
use crate::dataplane::{CheckedRoute, DataPlaneError, InferRequest, InferResponse, ModelMetadata};
use crate::domain::validate::is_record_id;
use crate::domain::{
    Endpoint, EndpointSpec, EndpointState, Feature, JobState, now_ms, validate_endpoint_spec,
};
use crate::error::{GatewayError, Result};
use crate::runtime::{BackendFailure, PluginError, Target};
use crate::store::{Inserted, new_id};

#[derive(Default)]
pub struct EndpointFilter {
    pub target: Option<String>,
    pub state: Option<EndpointState>,
    pub include_deleted: bool,
}

fn normalise(spec: &mut EndpointSpec) {
    spec.min_replicas = spec.min_replicas.max(1);
    if spec.max_replicas == 0 {
        spec.max_replicas = spec.min_replicas;
    }
    spec.resources.nodes = spec.resources.nodes.max(1);
}

impl Gateway {
    pub async fn deploy(
        &self,
        target: &str,
        mut spec: EndpointSpec,
        idempotency_key: Option<String>,
    ) -> Result<Endpoint> {
        normalise(&mut spec);
        validate_endpoint_spec(&spec)?;
        spec.model_uri = self.model_of(&spec.model_uri)?;
        let t = self.resolve_target(target)?;
        t.require(Feature::Serving)?;
        if spec.canary_percent.is_some() {
            t.require(Feature::Canary)?;
        }
        let id = new_id("e");
        // As for jobs: claimed before the record exists, so the reconciler never deploys it
        // first and the caller gets the deploy's own answer.
        let _claim = self
            .claim_start(&id)
            .expect("a new id is claimed by no one");
        self.runtime.validate_endpoint(&t, &id, 1, &spec).await?;
        let now = now_ms();
        let ep = Endpoint {
            id,
            tenant: DEFAULT_TENANT.into(),
            target: t.name.clone(),
            spec,
            state: EndpointState::Creating,
            message: String::new(),
            backend_state: String::new(),
            backend_ref: None,
            url: None,
            created_at: now,
            updated_at: now,
            sequence: 1,
            degraded_since: None,
            revision: 1,
        };
        let ep = match self.store.insert_endpoint(ep, idempotency_key.as_deref())? {
            Inserted::Existing(e) => return Ok(e),
            Inserted::Created(e) => e,
        };
        // Durable before anything runs: a crash from here on is recovered by the reconciler.
        self.store.flush().await?;
        Ok(self.start_endpoint_claimed(&t, &ep).await?.record())
    }

    /// Hands a recorded endpoint to its backend, like `start_job`: a transient failure leaves
    /// it `creating` for the reconciler to retry under the same backend name (which adopts
    /// what an interrupted earlier deploy created); any other failure fails it.
    pub(crate) async fn start_endpoint(
        &self,
        t: &Target,
        ep: &Endpoint,
    ) -> Result<Start<Endpoint>> {
        let Some(_claim) = self.claim_start(&ep.id) else {
            return Ok(Start::Done(self.store.endpoint(&ep.id)?));
        };
        self.start_endpoint_claimed(t, ep).await
    }

    /// `start_endpoint` for a caller that holds the endpoint's start claim.
    async fn start_endpoint_claimed(&self, t: &Target, ep: &Endpoint) -> Result<Start<Endpoint>> {
        let ep = self.store.endpoint(&ep.id)?;
        if ep.backend_ref.is_some() || ep.state != EndpointState::Creating {
            return Ok(Start::Done(ep));
        }
        match self
            .runtime
            .deploy_endpoint(t, &ep.id, ep.revision, &ep.spec)
            .await
        {
            Ok(r) => {
                let ep = self.store.update_endpoint(&ep.id, |e| {
                    e.backend_state = format!("deployed as {}", r.name);
                    e.backend_ref = Some(r.clone());
                    false
                })?;
                // Deleted while it was being deployed: remove what was just created.
                if ep.state == EndpointState::Deleted
                    && let Err(e) = self
                        .runtime
                        .delete_endpoint(t, &ep.id, ep.revision, &r)
                        .await
                {
                    tracing::warn!(endpoint = %ep.id, "deleting an endpoint deleted while it deployed: {e}");
                }
                Ok(Start::Done(ep))
            }
            Err(e) if is_transient(&e) => {
                let msg = format!("waiting for the target: {e}");
                let ep = self.store.update_endpoint(&ep.id, |x| {
                    x.state == EndpointState::Creating
                        && x.transition(EndpointState::Creating, msg.clone(), now_ms())
                })?;
                Ok(Start::Waiting(ep, e))
            }
            Err(err) => {
                self.store.update_endpoint(&ep.id, |e| {
                    e.state != EndpointState::Deleted
                        && e.transition(
                            EndpointState::Failed,
                            format!("deploy failed: {err}"),
                            now_ms(),
                        )
                })?;
                Err(err.into())
            }
        }
    }

    /// The model a spec names: a URI as given, or a job id for that job's output, so train →
    /// deploy needs no URI handling in client code.
    fn model_of(&self, model_uri: &str) -> Result<String> {
        if !is_record_id("j", model_uri) {
            return Ok(model_uri.to_string());
        }
        let invalid = |reason: String| GatewayError::Invalid {
            field: "spec.model_uri".into(),
            reason,
        };
        let job = self.store.job(model_uri).map_err(|_| {
            invalid(format!(
                "{model_uri} is neither a model URI nor a job this gateway knows"
            ))
        })?;
        if job.state != JobState::Succeeded {
            return Err(invalid(format!(
                "job {model_uri} is {}, so it has no model to deploy yet",
                job.state.as_str()
            )));
        }
        job.output_uri
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid(format!("job {model_uri} succeeded without an output URI")))
    }

    pub fn get_endpoint(&self, id_or_name: &str) -> Result<Endpoint> {
        Ok(self.store.find_endpoint(DEFAULT_TENANT, id_or_name)?)
    }

    pub fn list_endpoints(
        &self,
        filter: &EndpointFilter,
        page_token: Option<&str>,
        page_size: usize,
    ) -> Result<(Vec<Endpoint>, Option<String>)> {
        Ok(self.store.list_endpoints(
            |e| {
                filter.target.as_ref().is_none_or(|t| &e.target == t)
                    && filter.state.is_none_or(|s| e.state == s)
                    && (filter.include_deleted
                        || filter.state == Some(EndpointState::Deleted)
                        || e.state != EndpointState::Deleted)
            },
            page_token,
            page_size,
        )?)
    }

    /// Rolls the endpoint to `changes` (fields left empty keep their current value).
    pub async fn update_endpoint(
        &self,
        id_or_name: &str,
        changes: EndpointSpec,
    ) -> Result<Endpoint> {
        let ep = self.get_endpoint(id_or_name)?;
        if ep.state == EndpointState::Deleted {
            return Err(GatewayError::FailedPrecondition(format!(
                "endpoint {} is deleted",
                ep.spec.name
            )));
        }
        if !changes.name.is_empty() && changes.name != ep.spec.name {
            return Err(GatewayError::Invalid {
                field: "spec.name".into(),
                reason: "an endpoint cannot be renamed; deploy a new one".into(),
            });
        }
        let mut spec = ep.spec.clone();
        if !changes.model_uri.is_empty() {
            spec.model_uri = self.model_of(&changes.model_uri)?;
        }
        if !changes.model_format.is_empty() {
            spec.model_format = changes.model_format;
        }
        if changes.runtime.is_some() {
            spec.runtime = changes.runtime;
        }
        if changes.image.is_some() {
            spec.image = changes.image;
        }
        if changes.resources != Default::default() {
            spec.resources = changes.resources;
        }
        if changes.min_replicas > 0 {
            spec.min_replicas = changes.min_replicas;
        }
        if changes.max_replicas > 0 {
            spec.max_replicas = changes.max_replicas;
        }
        // Unset keeps the current split, as for every other field; 100 is a full rollout.
        match changes.canary_percent {
            Some(100) => spec.canary_percent = None,
            Some(p) => spec.canary_percent = Some(p),
            None => {}
        }
        normalise(&mut spec);
        validate_endpoint_spec(&spec)?;
        let t = self.resolve_target(&ep.target)?;
        t.require(Feature::ServingUpdate)?;
        if spec.canary_percent.is_some() {
            t.require(Feature::Canary)?;
        }
        let revision = ep.revision + 1;
        self.runtime
            .validate_endpoint(&t, &ep.id, revision, &spec)
            .await?;
        let Some(r) = ep.backend_ref.clone() else {
            return Err(GatewayError::FailedPrecondition(format!(
                "endpoint {} has not reached its backend yet",
                ep.spec.name
            )));
        };
        let new_ref = self
            .runtime
            .update_endpoint(&t, &ep.id, revision, &r, &spec)
            .await?;
        self.dataplane.forget(&ep.id);
        let ep = self.store.update_endpoint(&ep.id, |e| {
            e.spec = spec.clone();
            e.revision = revision;
            e.backend_ref = Some(new_ref.clone());
            e.url = None;
            e.transition(EndpointState::Updating, "rolling out".into(), now_ms());
            true
        })?;
        // The new revision's ref is the only way to reach (and stop) it: durable before the
        // answer, like a new record.
        self.store.flush().await?;
        Ok(ep)
    }

    pub async fn delete_endpoint(&self, id_or_name: &str) -> Result<Endpoint> {
        let ep = self.get_endpoint(id_or_name)?;
        if ep.state == EndpointState::Deleted {
            return Ok(ep);
        }
        let t = self.resolve_target(&ep.target)?;
        if let Some(r) = &ep.backend_ref {
            match self
                .runtime
                .delete_endpoint(&t, &ep.id, ep.revision, r)
                .await
            {
                Ok(())
                | Err(PluginError::Backend {
                    failure: BackendFailure::NotFound(_),
                    ..
                }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.dataplane.forget(&ep.id);
        let ep = self.store.update_endpoint(&ep.id, |e| {
            e.transition(EndpointState::Deleted, String::new(), now_ms())
        })?;
        self.store.flush().await?;
        Ok(ep)
    }

    pub async fn predict(&self, id_or_name: &str, req: InferRequest) -> Result<InferResponse> {
        let ep = self.get_endpoint(id_or_name)?;
        self.predict_on(&ep, req).await
    }

    /// A prediction through an endpoint the caller has already read.
    pub async fn predict_on(&self, ep: &Endpoint, req: InferRequest) -> Result<InferResponse> {
        if !ep.serves() {
            return Err(GatewayError::FailedPrecondition(format!(
                "endpoint {} is {}{}",
                ep.spec.name,
                ep.state.as_str(),
                if ep.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", ep.message)
                }
            )));
        }
        let route = self.route(ep).await?;
        let started = std::time::Instant::now();
        let out = self.dataplane.infer(&ep.id, &route, req).await;
        crate::observability::metrics().prediction(&ep.target, started.elapsed(), out.is_ok());
        Ok(out?)
    }

    /// What the endpoint's model server says about the model's tensors; None where its
    /// protocol has no metadata call.
    pub async fn model_metadata(&self, ep: &Endpoint) -> Result<Option<ModelMetadata>> {
        let route = self.route(ep).await?;
        Ok(self.dataplane.model_metadata(&route).await?)
    }

    /// The endpoint's route, checked against its target's policy.
    async fn route(&self, ep: &Endpoint) -> Result<Arc<CheckedRoute>> {
        let Some(r) = &ep.backend_ref else {
            return Err(GatewayError::FailedPrecondition(format!(
                "endpoint {} has no backend yet",
                ep.spec.name
            )));
        };
        let checked = match self.dataplane.cached(&ep.id, r) {
            Some(c) => c,
            None => {
                let t = self.resolve_target(&ep.target)?;
                let route = self
                    .runtime
                    .endpoint_route(&t, &ep.id, ep.revision, r)
                    .await?;
                let checked = self.dataplane.check(&t.name, &route);
                self.dataplane.remember(&ep.id, r, checked.clone());
                checked
            }
        };
        Ok(checked.map_err(DataPlaneError::from)?)
    }

    /// One reconciliation step for a live endpoint. "Ready" from a backend is only believed
    /// once the model server itself says the model is ready.
    pub(crate) async fn reconcile_endpoint(&self, ep: &Endpoint) -> Result<()> {
        let t = self.resolve_target(&ep.target)?;
        let Some(r) = &ep.backend_ref else {
            if ep.state != EndpointState::Creating {
                return Ok(());
            }
            // Recorded but never handed over (a crash, or the target was unavailable).
            return match self.start_endpoint(&t, ep).await? {
                Start::Done(_) => Ok(()),
                Start::Waiting(_, e) => Err(e.into()),
            };
        };
        let obs = match self
            .runtime
            .endpoint_status(&t, &ep.id, ep.revision, r)
            .await
        {
            Ok(o) => o,
            Err(PluginError::Backend {
                failure: BackendFailure::NotFound(m),
                ..
            }) => {
                self.store.update_endpoint(&ep.id, |e| {
                    // Deleted meanwhile (the object went because of it): that is the news,
                    // not a failure.
                    if e.state == EndpointState::Deleted {
                        return false;
                    }
                    e.transition(
                        EndpointState::Failed,
                        format!("the backend no longer knows this endpoint: {m}"),
                        now_ms(),
                    )
                })?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let mut state = obs.state;
        let mut message = obs.message.clone();
        let mut url = None;
        let mut degraded_since = None;
        if state == EndpointState::Ready {
            let probe = match self.route(ep).await {
                Ok(route) => self
                    .dataplane
                    .model_ready(&route)
                    .await
                    .map(|()| route.url.clone()),
                // A refused route fails the probe without a request being sent.
                Err(GatewayError::DataPlane(DataPlaneError::RouteDenied(d))) => Err(d.to_string()),
                Err(e) => return Err(e),
            };
            match probe {
                Ok(u) => url = Some(u),
                Err(why) => {
                    let now = now_ms();
                    (state, message) = match ep.state {
                        // It was serving: a blip is not a failure. Degraded while it lasts,
                        // failed once it has lasted.
                        EndpointState::Ready | EndpointState::Degraded => {
                            let since = ep.degraded_since.unwrap_or(now);
                            degraded_since = Some(since);
                            let limit = self.runtime.limits().endpoint_failure_after_ms;
                            let lasted = now.saturating_sub(since);
                            if lasted >= limit {
                                (
                                    EndpointState::Failed,
                                    format!(
                                        "the model server has not been ready for {} s: {why}",
                                        lasted / 1000
                                    ),
                                )
                            } else {
                                (
                                    EndpointState::Degraded,
                                    format!("the model server's readiness probe failed: {why}"),
                                )
                            }
                        }
                        EndpointState::Updating => (
                            EndpointState::Updating,
                            format!("waiting for the model server: {why}"),
                        ),
                        _ => (
                            EndpointState::Creating,
                            format!("waiting for the model server: {why}"),
                        ),
                    };
                }
            }
        }
        self.store.update_endpoint(&ep.id, |e| {
            if e.state == EndpointState::Deleted {
                return false;
            }
            // An update rolled the record to a new revision while this pass looked at the
            // old one (and probed the old route); the next pass looks at the new one.
            if e.backend_ref.as_ref() != Some(r) {
                return false;
            }
            if let Some(r) = &obs.updated_ref {
                e.backend_ref = Some(r.clone());
            }
            e.backend_state = obs.backend_state.clone();
            if url.is_some() {
                e.url = url.clone();
            }
            e.degraded_since = degraded_since;
            e.transition(state, message.clone(), now_ms())
        })?;
        Ok(())
    }
}
