use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, target_service_server::TargetService};
use super::status::{field_status, to_status};
use crate::domain::validate::validate_target_name;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::runtime::{BackendFailure, PluginError, Target};

pub struct TargetApi {
    gw: Arc<Gateway>,
}

impl TargetApi {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }

    /// Whether the target can work: its plugin instantiates, and the outside systems its
    /// capabilities reach take the gateway's credentials. Bounded; never fails the call.
    async fn health(&self, t: &Target) -> Result<(), PluginError> {
        self.gw.runtime.check(t).await?;
        if let Some(sm) = &t.caps.sagemaker {
            sm.health().await.map_err(|why| PluginError::Backend {
                target: t.name.clone(),
                failure: BackendFailure::Unavailable(why),
            })?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl TargetService for TargetApi {
    async fn list(
        &self,
        _req: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsResponse>, Status> {
        let mut targets = Vec::new();
        for t in self.gw.targets() {
            let health = self.health(&t).await;
            targets.push(convert::target(&t, health));
        }
        Ok(Response::new(pb::ListTargetsResponse { targets }))
    }

    async fn get(
        &self,
        req: Request<pb::GetTargetRequest>,
    ) -> Result<Response<pb::Target>, Status> {
        let name = req.into_inner().name;
        validate_target_name("name", &name).map_err(field_status)?;
        let t = self
            .gw
            .runtime
            .target(&name)
            .ok_or_else(|| to_status(GatewayError::NotFound(format!("target {name}"))))?;
        let health = self.health(t).await;
        Ok(Response::new(convert::target(t, health)))
    }
}
