//! Host capabilities: one module per imported WIT interface. Scope always comes from the
//! operator's grant bound on the host side, never from the plugin's arguments; a capability
//! that is not granted answers `denied` naming itself.

pub mod kube;
pub mod process;

use std::sync::Arc;

use crate::runtime::HostState;
use crate::runtime::bindings::mlgw::backend::{http, log, sagemaker, types};
use types::{BackendError, Denial};

/// The capabilities a target was granted, shared by every call's Store.
#[derive(Clone, Default)]
pub struct Capabilities {
    pub process: Option<Arc<process::ProcessCapability>>,
    pub kube: Option<Arc<kube::KubeCapability>>,
}

/// Log messages from plugins are bounded so a plugin cannot flood the gateway's log.
const MAX_LOG_MESSAGE: usize = 4096;

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let target = &*self.target;
        match level {
            log::Level::Trace => tracing::trace!(target: "mlgw::plugin", %target, "{message}"),
            log::Level::Debug => tracing::debug!(target: "mlgw::plugin", %target, "{message}"),
            log::Level::Info => tracing::info!(target: "mlgw::plugin", %target, "{message}"),
            log::Level::Warn => tracing::warn!(target: "mlgw::plugin", %target, "{message}"),
            log::Level::Error => tracing::error!(target: "mlgw::plugin", %target, "{message}"),
        }
        Ok(())
    }
}

fn not_granted(state: &HostState, capability: &str) -> BackendError {
    BackendError::Denied(Denial {
        capability: capability.into(),
        reason: format!(
            "target {} is not granted the {capability} capability",
            state.target
        ),
    })
}

// sagemaker and http are part of the contract so plugins can be written against them; until
// their host implementations land no grant can enable them, so every call is denied.

impl sagemaker::Host for HostState {
    async fn call(
        &mut self,
        _operation: String,
        _request: String,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(Err(not_granted(self, "sagemaker")))
    }
}

impl http::Host for HostState {
    async fn send(
        &mut self,
        _req: http::Request,
    ) -> wasmtime::Result<Result<http::Response, BackendError>> {
        Ok(Err(not_granted(self, "http")))
    }
}
