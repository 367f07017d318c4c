//! The gateway's one error type. Lower layers (domain validation, store, plugin runtime, data
//! plane) convert into it; `api::status` maps it to gRPC codes in one place.

use crate::artifacts::ArtifactError;
use crate::dataplane::DataPlaneError;
use crate::domain::FieldError;
use crate::runtime::PluginError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Exists but cannot serve now; worth retrying (the Open Inference Protocol's answer for a
    /// model that is not ready).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("storage: {0}")]
    Store(StoreError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

impl From<FieldError> for GatewayError {
    fn from(e: FieldError) -> Self {
        Self::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(m) => Self::AlreadyExists(m),
            StoreError::Invalid(f) => f.into(),
            other => Self::Store(other),
        }
    }
}

pub type Result<T, E = GatewayError> = std::result::Result<T, E>;
