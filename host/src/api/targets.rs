use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, target_service_server::TargetService};
use crate::gateway::Gateway;

pub struct TargetApi {
    gw: Arc<Gateway>,
}

impl TargetApi {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

#[tonic::async_trait]
impl TargetService for TargetApi {
    async fn list(
        &self,
        _req: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsResponse>, Status> {
        Ok(Response::new(pb::ListTargetsResponse {
            targets: self
                .gw
                .targets()
                .iter()
                .map(|t| convert::target(t))
                .collect(),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetTargetRequest>,
    ) -> Result<Response<pb::Target>, Status> {
        let name = req.into_inner().name;
        let t = self
            .gw
            .runtime
            .target(&name)
            .ok_or_else(|| Status::not_found(format!("target {name} not found")))?;
        Ok(Response::new(convert::target(t)))
    }
}
