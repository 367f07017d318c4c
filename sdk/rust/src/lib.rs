//! Guest SDK for mlgw backend plugins.
//!
//! A backend plugin is a WebAssembly component (target `wasm32-wasip2`) that implements the
//! `mlgw:backend` world: it exports `plugin`, `training` and `serving`, and may import the host
//! capabilities `log`, `process`, `kube`, `sagemaker` and `http`. The gateway only lets a plugin
//! use the capabilities the operator granted to its target; anything else answers
//! [`BackendError::Denied`].
//!
//! With this crate a plugin is one library crate with one `impl Backend for X`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! mlgw-plugin-sdk = "0.1"
//! ```
//!
//! ```no_run
//! use mlgw_plugin_sdk::{
//!     Backend, BackendError, BackendInfo, BackendRef, CallContext, Capabilities, Features,
//!     JobState, JobStatus, TrainingSpec,
//! };
//!
//! struct Echo;
//!
//! impl Backend for Echo {
//!     fn describe() -> BackendInfo {
//!         BackendInfo {
//!             name: "echo".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             description: "runs nothing, successfully".into(),
//!             features: Features::TRAINING,
//!             needs: Capabilities::empty(),
//!         }
//!     }
//!
//!     fn validate_training(_ctx: CallContext, spec: TrainingSpec) -> Result<(), BackendError> {
//!         if spec.command.is_empty() {
//!             return Err(mlgw_plugin_sdk::invalid("command", "must not be empty"));
//!         }
//!         Ok(())
//!     }
//!
//!     fn submit_training(ctx: CallContext, spec: TrainingSpec) -> Result<BackendRef, BackendError> {
//!         Self::validate_training(ctx.clone(), spec)?;
//!         mlgw_plugin_sdk::info(&format!("pretending to start {}", ctx.backend_name));
//!         Ok(BackendRef { name: ctx.backend_name, data: String::new() })
//!     }
//!
//!     fn training_status(_ctx: CallContext, _job: BackendRef) -> Result<JobStatus, BackendError> {
//!         Ok(JobStatus {
//!             state: JobState::Succeeded,
//!             raw_state: "done".into(),
//!             message: None,
//!             output_uri: None,
//!             updated_ref: None,
//!         })
//!     }
//! }
//!
//! mlgw_plugin_sdk::export_backend!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is already a component the gateway can load.
//!
//! Things worth knowing:
//!
//! * Plugins are stateless. Everything needed to find work again goes into the
//!   [`BackendRef`] returned by submit/deploy (`data` is yours, JSON by convention); the host
//!   stores it and hands it back on every later call.
//! * Methods you do not override answer [`BackendError::Unsupported`]. Advertise only what you
//!   implement in [`BackendInfo::features`]; the gateway refuses the rest before calling you.
//! * `ctx.backend_name` is deterministic per resource. A retried create uses the same name, so
//!   creates should adopt an existing object (on `conflict`) rather than make a second one.
//! * `ctx.settings` is the operator's per-target configuration; read it with [`settings`] or
//!   [`settings_as`].
//! * Capabilities are plain functions in the [`log`], [`process`], [`kube`], [`sagemaker`],
//!   [`http`] and [`artifacts`] modules. [`ProcessError`] converts into [`BackendError`] with `?`.
//! * Pure logic (parsing, validation) can be unit-tested natively with `cargo test`; capability
//!   calls only work inside the gateway and panic when called natively.

// Lets the generated bindings and the exported macros name this crate the same way from inside
// it and from plugin crates, which do not depend on wit-bindgen themselves.
extern crate self as mlgw_plugin_sdk;

/// Raw bindings generated from the `mlgw:backend` WIT world. Most plugins need only the
/// re-exports at the crate root.
pub mod bindings {
    wit_bindgen::generate!({
        world: "backend",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "mlgw_plugin_sdk::bindings",
        runtime_path: "mlgw_plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

/// What [`export_backend!`] expands to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::exports::mlgw::backend::plugin::Guest as PluginGuest;
    pub use crate::bindings::exports::mlgw::backend::serving::Guest as ServingGuest;
    pub use crate::bindings::exports::mlgw::backend::training::Guest as TrainingGuest;
    pub use wit_bindgen;
}
pub use bindings::mlgw::backend::process::ProcessError;
pub use bindings::mlgw::backend::types::{
    BackendError, BackendInfo, BackendRef, CallContext, Capabilities, Denial, EndpointSpec,
    EndpointState, EndpointStatus, Features, FieldError, InputChannel, JobState, JobStatus,
    KeyValue, LogLine, LogPage, Protocol, Resources, Route, TrainingSpec,
};
pub use bindings::mlgw::backend::{artifacts, http, kube, log, process, sagemaker};

pub mod job_env;
pub mod kube_objects;

/// One backend: the gateway's view of an execution target.
///
/// Only [`Backend::describe`] is required. Every other method defaults to
/// [`BackendError::Unsupported`] naming the operation, so a training-only backend implements
/// just the training methods. Export the implementation with [`export_backend!`].
pub trait Backend {
    /// Name, version and the features this backend implements.
    fn describe() -> BackendInfo;

    /// Checks a spec against what this backend can run. Must have no side effects.
    fn validate_training(_ctx: CallContext, _spec: TrainingSpec) -> Result<(), BackendError> {
        Err(unsupported("validate-training"))
    }

    /// Starts the job under `ctx.backend_name`; adopts an existing one on a retry.
    fn submit_training(_ctx: CallContext, _spec: TrainingSpec) -> Result<BackendRef, BackendError> {
        Err(unsupported("submit-training"))
    }

    fn training_status(_ctx: CallContext, _job: BackendRef) -> Result<JobStatus, BackendError> {
        Err(unsupported("training-status"))
    }

    fn cancel_training(_ctx: CallContext, _job: BackendRef) -> Result<(), BackendError> {
        Err(unsupported("cancel-training"))
    }

    /// At most `max_lines` lines after `cursor` (`None`: from the start).
    fn training_logs(
        _ctx: CallContext,
        _job: BackendRef,
        _cursor: Option<String>,
        _max_lines: u32,
    ) -> Result<LogPage, BackendError> {
        Err(unsupported("training-logs"))
    }

    /// Checks a spec against what this backend can serve. Must have no side effects.
    fn validate_endpoint(_ctx: CallContext, _spec: EndpointSpec) -> Result<(), BackendError> {
        Err(unsupported("validate-endpoint"))
    }

    fn deploy_endpoint(_ctx: CallContext, _spec: EndpointSpec) -> Result<BackendRef, BackendError> {
        Err(unsupported("deploy-endpoint"))
    }

    /// Where the endpoint stands.
    fn describe_endpoint(
        _ctx: CallContext,
        _endpoint: BackendRef,
    ) -> Result<EndpointStatus, BackendError> {
        Err(unsupported("describe-endpoint"))
    }

    fn update_endpoint(
        _ctx: CallContext,
        _endpoint: BackendRef,
        _spec: EndpointSpec,
    ) -> Result<BackendRef, BackendError> {
        Err(unsupported("update-endpoint"))
    }

    fn delete_endpoint(_ctx: CallContext, _endpoint: BackendRef) -> Result<(), BackendError> {
        Err(unsupported("delete-endpoint"))
    }

    /// Where the data plane should send predictions.
    fn endpoint_route(_ctx: CallContext, _endpoint: BackendRef) -> Result<Route, BackendError> {
        Err(unsupported("endpoint-route"))
    }
}

/// Exports `$ty`'s [`Backend`] implementation as the component's `plugin`, `training` and
/// `serving` interfaces. Use it once per plugin crate, at module level.
#[macro_export]
macro_rules! export_backend {
    ($ty:ty) => {
        const _: () = {
            #[doc(hidden)]
            struct __MlgwExportedBackend;

            impl $crate::__private::PluginGuest for __MlgwExportedBackend {
                fn describe() -> $crate::BackendInfo {
                    <$ty as $crate::Backend>::describe()
                }
            }

            impl $crate::__private::TrainingGuest for __MlgwExportedBackend {
                fn validate_training(
                    ctx: $crate::CallContext,
                    spec: $crate::TrainingSpec,
                ) -> ::core::result::Result<(), $crate::BackendError> {
                    <$ty as $crate::Backend>::validate_training(ctx, spec)
                }
                fn submit_training(
                    ctx: $crate::CallContext,
                    spec: $crate::TrainingSpec,
                ) -> ::core::result::Result<$crate::BackendRef, $crate::BackendError> {
                    <$ty as $crate::Backend>::submit_training(ctx, spec)
                }
                fn training_status(
                    ctx: $crate::CallContext,
                    job: $crate::BackendRef,
                ) -> ::core::result::Result<$crate::JobStatus, $crate::BackendError> {
                    <$ty as $crate::Backend>::training_status(ctx, job)
                }
                fn cancel_training(
                    ctx: $crate::CallContext,
                    job: $crate::BackendRef,
                ) -> ::core::result::Result<(), $crate::BackendError> {
                    <$ty as $crate::Backend>::cancel_training(ctx, job)
                }
                fn training_logs(
                    ctx: $crate::CallContext,
                    job: $crate::BackendRef,
                    cursor: ::core::option::Option<::std::string::String>,
                    max_lines: u32,
                ) -> ::core::result::Result<$crate::LogPage, $crate::BackendError> {
                    <$ty as $crate::Backend>::training_logs(ctx, job, cursor, max_lines)
                }
            }

            impl $crate::__private::ServingGuest for __MlgwExportedBackend {
                fn validate_endpoint(
                    ctx: $crate::CallContext,
                    spec: $crate::EndpointSpec,
                ) -> ::core::result::Result<(), $crate::BackendError> {
                    <$ty as $crate::Backend>::validate_endpoint(ctx, spec)
                }
                fn deploy_endpoint(
                    ctx: $crate::CallContext,
                    spec: $crate::EndpointSpec,
                ) -> ::core::result::Result<$crate::BackendRef, $crate::BackendError> {
                    <$ty as $crate::Backend>::deploy_endpoint(ctx, spec)
                }
                fn describe_endpoint(
                    ctx: $crate::CallContext,
                    endpoint: $crate::BackendRef,
                ) -> ::core::result::Result<$crate::EndpointStatus, $crate::BackendError> {
                    <$ty as $crate::Backend>::describe_endpoint(ctx, endpoint)
                }
                fn update_endpoint(
                    ctx: $crate::CallContext,
                    endpoint: $crate::BackendRef,
                    spec: $crate::EndpointSpec,
                ) -> ::core::result::Result<$crate::BackendRef, $crate::BackendError> {
                    <$ty as $crate::Backend>::update_endpoint(ctx, endpoint, spec)
                }
                fn delete_endpoint(
                    ctx: $crate::CallContext,
                    endpoint: $crate::BackendRef,
                ) -> ::core::result::Result<(), $crate::BackendError> {
                    <$ty as $crate::Backend>::delete_endpoint(ctx, endpoint)
                }
                fn endpoint_route(
                    ctx: $crate::CallContext,
                    endpoint: $crate::BackendRef,
                ) -> ::core::result::Result<$crate::Route, $crate::BackendError> {
                    <$ty as $crate::Backend>::endpoint_route(ctx, endpoint)
                }
            }

            // Component exports are named like `mlgw:backend/plugin@0.1.0#describe`, which a
            // native linker's version script rejects; exporting only on wasm32 lets plugin
            // crates build (and unit-test) natively too.
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::export_raw!(__MlgwExportedBackend with_types_in $crate::bindings);

            // Natively nothing calls the implementation, so without this every plugin
            // function would be reported as dead code.
            #[cfg(not(target_arch = "wasm32"))]
            fn __mlgw_keep_alive() {
                let _ = <__MlgwExportedBackend as $crate::__private::PluginGuest>::describe;
                let _ =
                    <__MlgwExportedBackend as $crate::__private::TrainingGuest>::validate_training;
                let _ =
                    <__MlgwExportedBackend as $crate::__private::TrainingGuest>::submit_training;
                let _ =
                    <__MlgwExportedBackend as $crate::__private::TrainingGuest>::training_status;
                let _ =
                    <__MlgwExportedBackend as $crate::__private::TrainingGuest>::cancel_training;
                let _ = <__MlgwExportedBackend as $crate::__private::TrainingGuest>::training_logs;
                let _ =
                    <__MlgwExportedBackend as $crate::__private::ServingGuest>::validate_endpoint;
                let _ = <__MlgwExportedBackend as $crate::__private::ServingGuest>::deploy_endpoint;
                let _ =
                    <__MlgwExportedBackend as $crate::__private::ServingGuest>::describe_endpoint;
                let _ = <__MlgwExportedBackend as $crate::__private::ServingGuest>::update_endpoint;
                let _ = <__MlgwExportedBackend as $crate::__private::ServingGuest>::delete_endpoint;
                let _ = <__MlgwExportedBackend as $crate::__private::ServingGuest>::endpoint_route;
            }
            #[cfg(not(target_arch = "wasm32"))]
            #[used]
            static __MLGW_KEEP_ALIVE: fn() = __mlgw_keep_alive;
        };
    };
}

/// `invalid-spec` for one field of the spec (a dotted path such as `resources.gpus`).
pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidSpec(FieldError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// An `internal` error: a bug or an unexpected state on the backend's side.
pub fn internal(message: impl Into<String>) -> BackendError {
    BackendError::Internal(message.into())
}

/// A `throttled` error: the backend system is rate-limiting us. The host retries the work
/// later and pauses this target's calls meanwhile; the capabilities already answer this for
/// AWS's and Kubernetes' throttling, so a plugin needs it only for systems it reaches itself
/// (a 429 through the `http` capability, say).
pub fn throttled(message: impl Into<String>) -> BackendError {
    BackendError::Throttled(message.into())
}

/// An `unsupported` error: the backend cannot do this, whatever the spec.
pub fn unsupported(what: impl Into<String>) -> BackendError {
    BackendError::Unsupported(what.into())
}

/// The target's settings (`ctx.settings`) as a JSON object. An empty string counts as `{}`.
pub fn settings(
    ctx: &CallContext,
) -> Result<serde_json::Map<String, serde_json::Value>, BackendError> {
    parse_settings(&ctx.settings)
}

/// Parses a settings document as a JSON object. An empty (or blank) string counts as `{}`.
pub fn parse_settings(
    settings: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, BackendError> {
    if settings.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str(settings) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(internal("the target's settings are not a JSON object")),
        Err(e) => Err(internal(format!(
            "the target's settings are not valid JSON: {e}"
        ))),
    }
}

/// The target's settings deserialized into `T`. An empty string deserializes as `{}`, so give
/// `T`'s fields `#[serde(default)]` when they are optional.
pub fn settings_as<T: serde::de::DeserializeOwned>(ctx: &CallContext) -> Result<T, BackendError> {
    let map = settings(ctx)?;
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| internal(format!("the target's settings do not fit: {e}")))
}

/// Logs at `trace` level into the gateway's log, tagged with the target.
pub fn trace(message: &str) {
    log::log(log::Level::Trace, message);
}

/// Logs at `debug` level into the gateway's log, tagged with the target.
pub fn debug(message: &str) {
    log::log(log::Level::Debug, message);
}

/// Logs at `info` level into the gateway's log, tagged with the target.
pub fn info(message: &str) {
    log::log(log::Level::Info, message);
}

/// Logs at `warn` level into the gateway's log, tagged with the target.
pub fn warn(message: &str) {
    log::log(log::Level::Warn, message);
}

/// Logs at `error` level into the gateway's log, tagged with the target.
pub fn error(message: &str) {
    log::log(log::Level::Error, message);
}

impl From<ProcessError> for BackendError {
    /// `invalid` has no field to point at, so it becomes `invalid-spec` with an empty field;
    /// `io` is the backend's problem, not the caller's, so it becomes `internal`; `exhausted`
    /// is a limit that frees up, so it becomes `unavailable` (retried by the gateway).
    fn from(e: ProcessError) -> Self {
        match e {
            ProcessError::Denied(d) => BackendError::Denied(d),
            ProcessError::NotFound(m) => BackendError::NotFound(m),
            ProcessError::Invalid(m) => invalid("", m),
            ProcessError::Io(m) => internal(m),
            // A limit of the grant: the work can start once something else has ended.
            ProcessError::Exhausted(m) => BackendError::Unavailable(m),
        }
    }
}

/// [`BackendError`] from a [`ProcessError`]; the same as `BackendError::from`, handy in
/// `map_err`.
pub fn process_error(e: ProcessError) -> BackendError {
    e.into()
}

/// `file:///x` → `/x`; anything else is returned unchanged.
pub fn strip_file_uri(uri: &str) -> &str {
    match uri.strip_prefix("file://") {
        // file://localhost/x names the same file as file:///x.
        Some(rest) => rest
            .strip_prefix("localhost")
            .filter(|r| r.starts_with('/'))
            .unwrap_or(rest),
        None => uri,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_file_uris() {
        assert_eq!(strip_file_uri("file:///data/x"), "/data/x");
        assert_eq!(strip_file_uri("file://localhost/data/x"), "/data/x");
        assert_eq!(strip_file_uri("/data/x"), "/data/x");
        assert_eq!(strip_file_uri("s3://b/k"), "s3://b/k");
    }

    #[test]
    fn parses_settings() {
        assert!(parse_settings("").unwrap().is_empty());
        let map = parse_settings(r#"{"mlserver":"/opt/mlserver"}"#).unwrap();
        assert_eq!(map["mlserver"], "/opt/mlserver");
        assert!(matches!(
            parse_settings("[1]"),
            Err(BackendError::Internal(_))
        ));
        assert!(matches!(
            parse_settings("{"),
            Err(BackendError::Internal(_))
        ));
    }

    #[test]
    fn converts_process_errors() {
        let d = Denial {
            capability: "process".into(),
            reason: "no".into(),
        };
        assert_eq!(
            BackendError::from(ProcessError::Denied(d.clone())),
            BackendError::Denied(d)
        );
        assert_eq!(
            BackendError::from(ProcessError::Invalid("bad".into())),
            invalid("", "bad")
        );
        assert_eq!(
            BackendError::from(ProcessError::Io("eio".into())),
            internal("eio")
        );
        assert_eq!(
            BackendError::from(ProcessError::NotFound("x".into())),
            BackendError::NotFound("x".into())
        );
    }
}
