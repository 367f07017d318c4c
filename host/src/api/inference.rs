//! The Open Inference Protocol's own gRPC service (`inference.GRPCInferenceService`), so
//! clients written for one model server (tritonclient, the KServe SDK) point at the gateway
//! instead. The model name is the endpoint's name; ModelInfer takes the same path as
//! `ServingService.Predict`, to whichever target hosts the endpoint.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::oip::{self, grpc_inference_service_server::GrpcInferenceService};
use super::serving::check_predict;
use super::status::{field_status, to_status};
use crate::domain::validate::validate_id;
use crate::domain::{Endpoint, EndpointState};
use crate::error::GatewayError;
use crate::gateway::Gateway;

pub struct InferenceApi {
    gw: Arc<Gateway>,
}

impl InferenceApi {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }

    /// The endpoint a model name means; a deleted one is as unknown as a name never used.
    fn endpoint(&self, field: &str, name: &str) -> Result<Endpoint, Status> {
        validate_id(field, name).map_err(field_status)?;
        let ep = self.gw.get_endpoint(name).map_err(to_status)?;
        if ep.state == EndpointState::Deleted {
            return Err(to_status(GatewayError::NotFound(format!("model {name}"))));
        }
        Ok(ep)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceApi {
    async fn server_live(
        &self,
        _: Request<oip::ServerLiveRequest>,
    ) -> Result<Response<oip::ServerLiveResponse>, Status> {
        Ok(Response::new(oip::ServerLiveResponse { live: true }))
    }

    /// The gateway answers once its store is open and its plugins are loaded, so it is ready
    /// whenever it answers; a model's readiness is ModelReady's.
    async fn server_ready(
        &self,
        _: Request<oip::ServerReadyRequest>,
    ) -> Result<Response<oip::ServerReadyResponse>, Status> {
        Ok(Response::new(oip::ServerReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<oip::ServerMetadataRequest>,
    ) -> Result<Response<oip::ServerMetadataResponse>, Status> {
        Ok(Response::new(oip::ServerMetadataResponse {
            name: "mlgw".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<oip::ModelReadyRequest>,
    ) -> Result<Response<oip::ModelReadyResponse>, Status> {
        let ep = self.endpoint("name", &req.into_inner().name)?;
        Ok(Response::new(oip::ModelReadyResponse {
            ready: ep.state == EndpointState::Ready,
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<oip::ModelMetadataRequest>,
    ) -> Result<Response<oip::ModelMetadataResponse>, Status> {
        let ep = self.endpoint("name", &req.into_inner().name)?;
        // A model server that is not up yet has nothing to say about tensors; the record
        // still names the model, its revision and its target.
        let served = if ep.serves() {
            self.gw.model_metadata(&ep).await.map_err(to_status)?
        } else {
            None
        };
        Ok(Response::new(convert::oip_model_metadata(&ep, served)))
    }

    async fn model_infer(
        &self,
        req: Request<oip::ModelInferRequest>,
    ) -> Result<Response<oip::ModelInferResponse>, Status> {
        let r = req.into_inner();
        validate_id("model_name", &r.model_name).map_err(field_status)?;
        let model = r.model_name.clone();
        // Checked before the endpoint is looked up, as Predict does: a malformed request is
        // INVALID_ARGUMENT whatever state the endpoint is in.
        let (infer, raw) = convert::oip_infer_request(r).map_err(to_status)?;
        check_predict(&infer).map_err(to_status)?;
        let ep = self.endpoint("model_name", &model)?;
        if !ep.serves() {
            return Err(to_status(GatewayError::Unavailable(format!(
                "model {model} is not ready: endpoint {} is {}{}",
                ep.id,
                ep.state.as_str(),
                if ep.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", ep.message)
                }
            ))));
        }
        let resp = self.gw.predict_on(&ep, infer).await.map_err(to_status)?;
        Ok(Response::new(
            convert::oip_infer_response(resp, raw).map_err(to_status)?,
        ))
    }
}
