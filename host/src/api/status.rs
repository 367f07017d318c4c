//! The one mapping from gateway errors to gRPC status codes. INVALID_ARGUMENT carries the field
//! path in its message ("field: reason") and in the `mlgw-field` trailer.

use tonic::{Code, Status};

use crate::dataplane::DataPlaneError;
use crate::error::GatewayError;
use crate::runtime::{BackendFailure, PluginError};

fn invalid(field: &str, reason: &str) -> Status {
    let mut s = Status::invalid_argument(format!("{field}: {reason}"));
    if let Ok(v) = field.parse() {
        s.metadata_mut().insert("mlgw-field", v);
    }
    s
}

pub fn to_status(e: GatewayError) -> Status {
    let msg = e.to_string();
    match e {
        GatewayError::Invalid { field, reason } => invalid(&field, &reason),
        GatewayError::NotFound(_) => Status::not_found(msg),
        GatewayError::AlreadyExists(_) => Status::already_exists(msg),
        GatewayError::FailedPrecondition(_) => Status::failed_precondition(msg),
        GatewayError::Store(_) => Status::internal(msg),
        GatewayError::Plugin(p) => match p {
            PluginError::Backend { target, failure } => match failure {
                BackendFailure::InvalidSpec { field, reason } => {
                    // Backend field paths are relative to the spec.
                    let field = if field.is_empty() || field.starts_with("spec") {
                        if field.is_empty() {
                            "spec".to_string()
                        } else {
                            field
                        }
                    } else {
                        format!("spec.{field}")
                    };
                    invalid(&field, &format!("{reason} (target {target})"))
                }
                BackendFailure::NotFound(_) => Status::not_found(msg),
                BackendFailure::Denied { .. } => Status::permission_denied(msg),
                BackendFailure::Unavailable(_) => Status::unavailable(msg),
                BackendFailure::Conflict(_) => Status::aborted(msg),
                BackendFailure::Unsupported(_) => Status::unimplemented(msg),
                BackendFailure::Internal(_) => Status::internal(msg),
            },
            PluginError::Trap { .. } | PluginError::Load { .. } => Status::internal(msg),
            PluginError::Deadline { .. } => Status::deadline_exceeded(msg),
            PluginError::MemoryExhausted { .. } => Status::resource_exhausted(msg),
            PluginError::Unsupported { .. } => Status::unimplemented(msg),
        },
        GatewayError::DataPlane(d) => match d {
            DataPlaneError::Invalid { field, reason } => invalid(&field, &reason),
            DataPlaneError::Rejected { .. } => Status::new(Code::InvalidArgument, msg),
            DataPlaneError::RouteDenied(_) => Status::permission_denied(msg),
            DataPlaneError::Unreachable { .. } => Status::unavailable(msg),
            DataPlaneError::ResponseTooLarge { .. } => Status::resource_exhausted(msg),
            DataPlaneError::ServerError { .. }
            | DataPlaneError::BadResponse(_)
            | DataPlaneError::Redirected { .. } => Status::internal(msg),
            DataPlaneError::Unsupported(_) => Status::unimplemented(msg),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_spec_from_a_backend_names_the_spec_field() {
        let s = to_status(GatewayError::Plugin(PluginError::Backend {
            target: "local".into(),
            failure: BackendFailure::InvalidSpec {
                field: "resources.gpus".into(),
                reason: "no GPUs here".into(),
            },
        }));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().starts_with("spec.resources.gpus: no GPUs here"),
            "{}",
            s.message()
        );
        assert_eq!(
            s.metadata().get("mlgw-field").unwrap(),
            "spec.resources.gpus"
        );
    }

    #[test]
    fn sandbox_failures_have_their_own_codes() {
        let d = to_status(GatewayError::Plugin(PluginError::Deadline {
            target: "t".into(),
            limit_ms: 5,
        }));
        assert_eq!(d.code(), Code::DeadlineExceeded);
        assert!(d.message().contains("target t"));
        let m = to_status(GatewayError::Plugin(PluginError::MemoryExhausted {
            target: "t".into(),
            limit_mib: 1,
        }));
        assert_eq!(m.code(), Code::ResourceExhausted);
        let p = to_status(GatewayError::Plugin(PluginError::Backend {
            target: "t".into(),
            failure: BackendFailure::Denied {
                capability: "kube".into(),
                reason: "not granted".into(),
            },
        }));
        assert_eq!(p.code(), Code::PermissionDenied);
        assert!(p.message().contains("kube"));
    }
}
