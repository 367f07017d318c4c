//! The gateway's behaviour independent of the wire: what Submit, Deploy, Predict and friends
//! do, in domain terms. `api` translates gRPC to these calls; the reconciler keeps records
//! in step with the backends.

mod endpoints;
mod jobs;

use std::sync::Arc;

use crate::dataplane::DataPlane;
use crate::error::{GatewayError, Result};
use crate::runtime::{Runtime, Target};
use crate::store::Store;

pub use endpoints::EndpointFilter;
pub use jobs::{JobFilter, LogItem};

/// Until authentication lands every caller is this tenant.
pub const DEFAULT_TENANT: &str = "default";

pub struct Gateway {
    pub store: Store,
    pub runtime: Arc<Runtime>,
    pub dataplane: DataPlane,
    /// How often follow-mode log streams poll a backend that has nothing new.
    pub log_poll: std::time::Duration,
}

impl Gateway {
    pub fn new(store: Store, runtime: Arc<Runtime>, log_poll: std::time::Duration) -> Self {
        Self {
            store,
            runtime,
            dataplane: DataPlane::new(),
            log_poll,
        }
    }

    /// The named target, or the default one when the name is empty.
    pub fn resolve_target(&self, name: &str) -> Result<Arc<Target>> {
        let name = if name.is_empty() {
            self.runtime
                .default_target()
                .ok_or_else(|| GatewayError::Invalid {
                    field: "target".into(),
                    reason: "no target given and the gateway has no default target".into(),
                })?
        } else {
            name
        };
        self.runtime
            .target(name)
            .cloned()
            .ok_or_else(|| GatewayError::NotFound(format!("target {name}")))
    }

    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.runtime.targets().cloned().collect()
    }
}
