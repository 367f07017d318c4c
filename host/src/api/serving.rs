use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, serving_service_server::ServingService};
use super::status::to_status;
use super::training::page_size;
use crate::gateway::{EndpointFilter, Gateway};

pub struct ServingApi {
    gw: Arc<Gateway>,
}

impl ServingApi {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

#[tonic::async_trait]
impl ServingService for ServingApi {
    async fn deploy(
        &self,
        req: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: required"))?;
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
        let ep = self
            .gw
            .get_endpoint(&req.into_inner().id)
            .map_err(to_status)?;
        Ok(Response::new(convert::endpoint(&ep)))
    }

    async fn list(
        &self,
        req: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let r = req.into_inner();
        let filter = EndpointFilter {
            target: (!r.target.is_empty()).then_some(r.target),
            state: convert::endpoint_state_from(r.state).map_err(to_status)?,
            include_deleted: r.include_deleted,
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token);
        let (eps, next) = self
            .gw
            .list_endpoints(&filter, token.as_deref(), page_size(r.page_size))
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
        let spec = convert::endpoint_spec(r.spec.unwrap_or_default()).map_err(to_status)?;
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
        let ep = self
            .gw
            .delete_endpoint(&req.into_inner().id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::endpoint(&ep)))
    }

    async fn predict(
        &self,
        req: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let r = req.into_inner();
        let endpoint = r.endpoint.clone();
        let infer = convert::infer_request(r).map_err(to_status)?;
        let resp = self.gw.predict(&endpoint, infer).await.map_err(to_status)?;
        Ok(Response::new(convert::predict_response(resp)))
    }
}
