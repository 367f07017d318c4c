//! The one mapping from gateway errors to gRPC status codes. INVALID_ARGUMENT carries the field
//! path in its message ("field: reason") and in the `mlgw-field` trailer.
//!
//! Both travel as HTTP/2 headers, which clients bound (hyper: 16 KiB for all of them; gRPC
//! C-core, under the Python SDK: 8 KiB by default). A status that does not fit breaks the whole
//! response, so the client would see a protocol error instead of the reason; field paths and
//! messages are cut to fit first, whatever a plugin or a request put into them.

use std::borrow::Cow;

use tonic::{Code, Status};

use crate::artifacts::ArtifactError;
use crate::dataplane::DataPlaneError;
use crate::domain::FieldError;
use crate::error::GatewayError;
use crate::runtime::{BackendFailure, PluginError};

/// The most of a field path that goes into the trailer and the message.
pub const MAX_FIELD_BYTES: usize = 256;
/// The most a message takes in `grpc-message`, measured percent-encoded as it is sent.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Marks a message that was cut.
const CUT: &str = "\u{2026}";
/// Marks a field path that was cut (metadata values are ASCII).
const CUT_FIELD: &str = "...";

/// A field path as printable ASCII, cut to `MAX_FIELD_BYTES`: metadata values carry nothing
/// else, and the message repeats exactly what the trailer says.
fn field_path(field: &str) -> String {
    let mut out = String::with_capacity(field.len().min(MAX_FIELD_BYTES));
    for c in field.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
        if out.len() > MAX_FIELD_BYTES {
            // All ASCII, so any byte offset is a char boundary.
            out.truncate(MAX_FIELD_BYTES - CUT_FIELD.len());
            out.push_str(CUT_FIELD);
            break;
        }
    }
    out
}

/// Bytes `c` takes in `grpc-message`: tonic percent-encodes controls, non-ASCII and a few
/// punctuation marks.
fn encoded_len(c: char) -> usize {
    let mut buf = [0; 4];
    c.encode_utf8(&mut buf)
        .bytes()
        .map(|b| {
            if !(0x20..0x7f).contains(&b) || b" \"#%<>`?{}".contains(&b) {
                3
            } else {
                1
            }
        })
        .sum()
}

/// The message cut at a char boundary so that, encoded, it takes at most `MAX_MESSAGE_BYTES`.
fn fit_message(msg: &str) -> Cow<'_, str> {
    if msg.len() * 3 <= MAX_MESSAGE_BYTES
        || msg.chars().map(encoded_len).sum::<usize>() <= MAX_MESSAGE_BYTES
    {
        return Cow::Borrowed(msg);
    }
    let budget = MAX_MESSAGE_BYTES - CUT.chars().map(encoded_len).sum::<usize>();
    let (mut used, mut end) = (0, 0);
    for (i, c) in msg.char_indices() {
        used += encoded_len(c);
        if used > budget {
            break;
        }
        end = i + c.len_utf8();
    }
    Cow::Owned(format!("{}{CUT}", &msg[..end]))
}

fn fit(s: Status) -> Status {
    match fit_message(s.message()) {
        Cow::Borrowed(_) => s,
        Cow::Owned(msg) => Status::with_metadata(s.code(), msg, s.metadata().clone()),
    }
}

fn invalid(field: &str, reason: &str) -> Status {
    let field = field_path(field);
    let mut s = Status::invalid_argument(format!("{field}: {reason}"));
    if let Ok(v) = field.parse() {
        s.metadata_mut().insert("mlgw-field", v);
    }
    s
}

/// A request field that failed its check where the request entered.
pub fn field_status(e: FieldError) -> Status {
    to_status(e.into())
}

pub fn to_status(e: GatewayError) -> Status {
    fit(map(e))
}

fn map(e: GatewayError) -> Status {
    let msg = e.to_string();
    match e {
        GatewayError::Invalid { field, reason } => invalid(&field, &reason),
        GatewayError::NotFound(_) => Status::not_found(msg),
        GatewayError::AlreadyExists(_) => Status::already_exists(msg),
        GatewayError::FailedPrecondition(_) => Status::failed_precondition(msg),
        GatewayError::Unavailable(_) => Status::unavailable(msg),
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
                // gRPC's code for "rate limited": the caller should slow down and retry.
                BackendFailure::Throttled(_) => Status::resource_exhausted(msg),
                BackendFailure::Conflict(_) => Status::aborted(msg),
                BackendFailure::Unsupported(_) => Status::unimplemented(msg),
                BackendFailure::Internal(_) => Status::internal(msg),
            },
            // The plugin's fault, not the caller's: nothing in the request can mend it.
            PluginError::Trap { .. }
            | PluginError::Load { .. }
            | PluginError::Oversized { .. }
            | PluginError::Contract { .. } => Status::internal(msg),
            PluginError::Deadline { .. } => Status::deadline_exceeded(msg),
            PluginError::OverBudget { .. } => Status::resource_exhausted(msg),
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
        GatewayError::Artifact(a) => match a {
            ArtifactError::Invalid { field, reason } => invalid(&field, &reason),
            ArtifactError::NotFound(_) => Status::not_found(msg),
            ArtifactError::Unsupported(_) => Status::unimplemented(msg),
            ArtifactError::Unavailable(_) => Status::unavailable(msg),
            ArtifactError::Cancelled(_) => Status::cancelled(msg),
            ArtifactError::Storage(_) => Status::internal(msg),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pb;

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

    fn wire_len(msg: &str) -> usize {
        msg.chars().map(encoded_len).sum()
    }

    fn oversized_plugin_error() -> GatewayError {
        GatewayError::Plugin(PluginError::Backend {
            target: "big".into(),
            failure: BackendFailure::InvalidSpec {
                field: "f".repeat(1 << 20),
                reason: "r".repeat(1 << 20),
            },
        })
    }

    #[test]
    fn a_mebibyte_field_path_and_reason_are_cut_to_fit() {
        let s = to_status(oversized_plugin_error());
        assert_eq!(s.code(), Code::InvalidArgument);
        let field = s.metadata().get("mlgw-field").unwrap().to_str().unwrap();
        assert_eq!(field.len(), MAX_FIELD_BYTES);
        assert!(
            field.starts_with("spec.fff") && field.ends_with("..."),
            "{field}"
        );
        assert!(
            s.message().starts_with(&format!("{field}: rrr")),
            "the message leads with the same field path"
        );
        assert!(s.message().ends_with('\u{2026}'), "a cut message says so");
        assert!(wire_len(s.message()) <= MAX_MESSAGE_BYTES);
        assert!(
            wire_len(s.message()) > MAX_MESSAGE_BYTES - 16,
            "cut, not emptied"
        );
    }

    #[test]
    fn cuts_respect_char_boundaries_and_the_trailer_stays_ascii() {
        let s = to_status(GatewayError::Invalid {
            field: "spec.env.\u{c9}\n".into(),
            reason: "\u{e9}".repeat(10_000),
        });
        let field = s.metadata().get("mlgw-field").unwrap().to_str().unwrap();
        assert_eq!(field, "spec.env.\\u{c9}\\n");
        assert!(s.message().starts_with(&format!("{field}: \u{e9}")));
        assert!(s.message().ends_with('\u{2026}'));
        // Each é is 6 bytes encoded: cut on a char, never inside one.
        assert!(wire_len(s.message()) <= MAX_MESSAGE_BYTES);
        assert!(s.message().trim_end_matches('\u{2026}').ends_with('\u{e9}'));

        // A short message is left exactly as it was.
        let s = to_status(GatewayError::Invalid {
            field: "spec.command".into(),
            reason: "must not be empty".into(),
        });
        assert_eq!(s.message(), "spec.command: must not be empty");
    }

    #[test]
    fn every_code_is_cut_to_fit() {
        let s = to_status(GatewayError::Plugin(PluginError::Backend {
            target: "t".into(),
            failure: BackendFailure::Internal("x".repeat(1 << 20)),
        }));
        assert_eq!(s.code(), Code::Internal);
        assert!(wire_len(s.message()) <= MAX_MESSAGE_BYTES);
        assert!(s.message().starts_with("target t: internal error: xxx"));
        let s = to_status(GatewayError::NotFound("\u{0}".repeat(1 << 16)));
        assert_eq!(s.code(), Code::NotFound);
        assert!(wire_len(s.message()) <= MAX_MESSAGE_BYTES);
    }

    /// Test double: a target service answering every Get with what a plugin that returns a
    /// 1 MiB field path and reason turns into. No bundled plugin can be made to do that, and
    /// the point is what a real client receives over a real HTTP/2 connection.
    struct OversizedFieldPlugin;

    #[tonic::async_trait]
    impl pb::target_service_server::TargetService for OversizedFieldPlugin {
        async fn list(
            &self,
            _: tonic::Request<pb::ListTargetsRequest>,
        ) -> Result<tonic::Response<pb::ListTargetsResponse>, Status> {
            Err(Status::unimplemented("not part of this double"))
        }

        async fn get(
            &self,
            _: tonic::Request<pb::GetTargetRequest>,
        ) -> Result<tonic::Response<pb::Target>, Status> {
            Err(to_status(oversized_plugin_error()))
        }
    }

    #[tokio::test]
    async fn a_real_client_reads_a_cut_status_over_http2() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::target_service_server::TargetServiceServer::new(
                    OversizedFieldPlugin,
                ))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut client =
            pb::target_service_client::TargetServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
        let err = client
            .get(pb::GetTargetRequest { name: "big".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let field = err.metadata().get("mlgw-field").unwrap().to_str().unwrap();
        assert!(field.starts_with("spec.fff") && field.ends_with("..."));
        assert!(err.message().starts_with(&format!("{field}: rrr")));
        assert!(err.message().ends_with('\u{2026}'));
        assert!(wire_len(err.message()) <= MAX_MESSAGE_BYTES);
        server.abort();
    }
}
