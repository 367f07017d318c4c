//! The gateway's behaviour independent of the wire: what Submit, Deploy, Predict and friends
//! do, in domain terms. `api` translates gRPC to these calls; the reconciler keeps records
//! in step with the backends.

mod endpoints;
mod jobs;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::artifacts::ArtifactStore;
use crate::dataplane::DataPlane;
use crate::error::{GatewayError, Result};
use crate::runtime::{Runtime, Target};
use crate::store::Store;

pub use endpoints::EndpointFilter;
pub use jobs::{JobFilter, LogItem, WatchFilter};

/// Until authentication lands every caller is this tenant.
pub const DEFAULT_TENANT: &str = "default";

pub struct Gateway {
    pub store: Store,
    pub runtime: Arc<Runtime>,
    pub dataplane: DataPlane,
    /// Code and model files that travel with jobs, where every target can read them.
    pub artifacts: Arc<ArtifactStore>,
    /// How often follow-mode log streams poll a backend that has nothing new.
    pub log_poll: std::time::Duration,
    /// Jobs and endpoints whose hand-over to their backend is in flight. The reconciler
    /// retries records without a backend ref; without this it would submit a job (or deploy an
    /// endpoint) a second time while Submit is still handing it over, and two creates racing
    /// in one backend can both start it.
    starting: Mutex<HashSet<String>>,
}

/// What handing a record to its backend came to.
pub(crate) enum Start<T> {
    /// It reached its backend, or it had already (or ended meanwhile).
    Done(T),
    /// The backend could not take it yet (`unavailable`); the record says so and the
    /// reconciler retries it, backing off.
    Waiting(T, crate::runtime::PluginError),
}

impl<T> Start<T> {
    pub(crate) fn record(self) -> T {
        match self {
            Self::Done(r) | Self::Waiting(r, _) => r,
        }
    }
}

/// Holds a record's place in `Gateway::starting` until dropped.
struct Starting<'g> {
    set: &'g Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Gateway {
    pub fn new(
        store: Store,
        runtime: Arc<Runtime>,
        dataplane: DataPlane,
        artifacts: Arc<ArtifactStore>,
        log_poll: std::time::Duration,
    ) -> Self {
        Self {
            store,
            runtime,
            dataplane,
            artifacts,
            log_poll,
            starting: Mutex::default(),
        }
    }

    /// Claims the start of a job or endpoint; None while another task is starting it.
    fn claim_start(&self, id: &str) -> Option<Starting<'_>> {
        let mut set = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(id.to_string()).then(|| Starting {
            set: &self.starting,
            id: id.to_string(),
        })
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
