use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, serving_service_server::ServingService};
use super::status::{field_status, to_status};
use crate::dataplane::{InferRequest, check_tensor};
use crate::domain::FieldError;
use crate::domain::validate::{
    page_size, validate_endpoint_changes, validate_id, validate_idempotency_key, validate_predict,
    validate_target,
};
use crate::error::GatewayError;
use crate::gateway::{EndpointFilter, Gateway};

pub struct ServingApi {
    gw: Arc<Gateway>,
}

impl ServingApi {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

/// Everything in a prediction is checked before the endpoint is looked up, so a malformed
/// request is INVALID_ARGUMENT whatever state the endpoint is in.
pub(super) fn check_predict(r: &InferRequest) -> Result<(), GatewayError> {
    validate_predict(&r.id, r.inputs.len(), &r.outputs, &r.parameters)?;
    for (i, t) in r.inputs.iter().enumerate() {
        check_tensor(i, t)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl ServingService for ServingApi {
    async fn deploy(
        &self,
        req: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let r = req.into_inner();
        validate_target("target", &r.target).map_err(field_status)?;
        validate_idempotency_key(&r.idempotency_key).map_err(field_status)?;
        let spec = r
            .spec
            .ok_or_else(|| field_status(FieldError::new("spec", "required")))?;
        let spec = convert::endpoint_spec(spec).map_err(to_status)?;
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
        let ep = self
            .gw
            .deploy(&r.target, spec, key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::endpoint(&ep)))
    }

    async fn get(
        &self,
        req: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let id = req.into_inner().id;
        validate_id("id", &id).map_err(field_status)?;
        let ep = self.gw.get_endpoint(&id).map_err(to_status)?;
        Ok(Response::new(convert::endpoint(&ep)))
    }

    async fn list(
        &self,
        req: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let r = req.into_inner();
        validate_target("target", &r.target).map_err(field_status)?;
        let page_size = page_size(r.page_size).map_err(field_status)?;
        let filter = EndpointFilter {
            target: (!r.target.is_empty()).then_some(r.target),
            state: convert::endpoint_state_from(r.state).map_err(to_status)?,
            include_deleted: r.include_deleted,
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token);
        let (eps, next) = self
            .gw
            .list_endpoints(&filter, token.as_deref(), page_size)
            .map_err(to_status)?;
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints: eps.iter().map(convert::endpoint).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let r = req.into_inner();
        validate_id("id", &r.id).map_err(field_status)?;
        let spec = r.spec.ok_or_else(|| {
            field_status(FieldError::new(
                "spec",
                "required: set the fields to change",
            ))
        })?;
        let spec = convert::endpoint_spec(spec).map_err(to_status)?;
        validate_endpoint_changes(&spec).map_err(field_status)?;
        let ep = self
            .gw
            .update_endpoint(&r.id, spec)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::endpoint(&ep)))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let id = req.into_inner().id;
        validate_id("id", &id).map_err(field_status)?;
        let ep = self.gw.delete_endpoint(&id).await.map_err(to_status)?;
        Ok(Response::new(convert::endpoint(&ep)))
    }

    async fn predict(
        &self,
        req: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let r = req.into_inner();
        validate_id("endpoint", &r.endpoint).map_err(field_status)?;
        let endpoint = r.endpoint.clone();
        let infer = convert::infer_request(r).map_err(to_status)?;
        check_predict(&infer).map_err(to_status)?;
        let resp = self.gw.predict(&endpoint, infer).await.map_err(to_status)?;
        Ok(Response::new(convert::predict_response(resp)))
    }
}
