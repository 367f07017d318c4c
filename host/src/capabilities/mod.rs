//! Host capabilities: one module per imported WIT interface, each shaped like a Spin factor.
//!
//! A capability has two halves: what the operator granted one target (built once when the
//! gateway loads, shared by every call of that target), and the per-call state that a call's
//! Store holds and that implements the interface's WIT `Host` trait. The runtime composes the
//! per-call states into its Store data and hands the linker a projection onto each one
//! (`add_to_linker`), so no capability knows the runtime. Scope always comes from the grant,
//! never from the plugin's arguments; a capability that is not granted answers `denied`
//! naming itself.

pub mod artifacts;
pub mod kube;
pub mod log;
pub mod process;
pub mod sagemaker;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::contract::mlgw::backend::http;
use crate::contract::types::{BackendError, Denial};
use crate::domain::Capability;

/// What one target was granted, shared by all its calls.
#[derive(Clone)]
pub struct Capabilities {
    pub log: Arc<log::LogCapability>,
    pub process: Option<Arc<process::ProcessCapability>>,
    pub kube: Option<Arc<kube::KubeCapability>>,
    pub sagemaker: Option<Arc<sagemaker::SagemakerCapability>>,
    /// The gateway's artifact store; every target reaches it, each call only its own artifacts.
    pub artifacts: Option<Arc<artifacts::ArtifactsCapability>>,
}

impl Capabilities {
    /// Only the log, for calls that run under no target (loading a plugin).
    pub fn none(label: &str) -> Self {
        Self {
            log: Arc::new(log::LogCapability::new(label, &Default::default())),
            process: None,
            kube: None,
            sagemaker: None,
            artifacts: None,
        }
    }

    pub fn granted(&self) -> Vec<Capability> {
        let mut v = Vec::new();
        if self.process.is_some() {
            v.push(Capability::Process);
        }
        if self.kube.is_some() {
            v.push(Capability::Kube);
        }
        if self.sagemaker.is_some() {
            v.push(Capability::Sagemaker);
        }
        v
    }

    /// The per-call states for one call of `target` for `id`; `scope` is the artifacts the
    /// call may name (those of the job or endpoint it concerns).
    pub fn for_call(
        &self,
        target: &Arc<str>,
        id: CallIdentity,
        scope: Arc<[String]>,
        deadline: Option<std::time::Instant>,
    ) -> CallCapabilities {
        CallCapabilities {
            log: log::LogCall::new(self.log.clone()),
            process: process::ProcessCall::new(target.clone(), self.process.clone()),
            kube: kube::KubeCall::new(target.clone(), self.kube.clone(), deadline),
            sagemaker: sagemaker::SagemakerCall::new(target.clone(), self.sagemaker.clone(), id),
            artifacts: artifacts::ArtifactsCall::new(
                target.clone(),
                self.artifacts.clone(),
                self.process.as_ref().map(|p| p.root_handle()),
                scope,
            ),
            ungranted: Ungranted {
                target: target.clone(),
            },
        }
    }
}

/// Whom one call is for, as the host filled in its call context: what a capability stamps on
/// what it creates and the names the call may use.
#[derive(Debug, Clone, Default)]
pub struct CallIdentity {
    pub tenant: String,
    /// The gateway's id of the job or endpoint; empty for calls that concern none.
    pub resource_id: String,
    /// `ctx.backend-name`: the call's backend objects are named this or this plus a suffix.
    pub backend_name: String,
}

/// Every capability's state for one call.
pub struct CallCapabilities {
    pub log: log::LogCall,
    pub process: process::ProcessCall,
    pub kube: kube::KubeCall,
    pub sagemaker: sagemaker::SagemakerCall,
    pub artifacts: artifacts::ArtifactsCall,
    pub ungranted: Ungranted,
}

/// What a Store's data offers so the linker can reach each capability's state.
pub trait HasCapabilities {
    fn capabilities(&mut self) -> &mut CallCapabilities;
}

/// Links every capability interface, each projected onto its own per-call state.
pub fn add_to_linker<T: HasCapabilities + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    use crate::contract::mlgw::backend as b;
    b::log::add_to_linker::<T, HasSelf<log::LogCall>>(linker, |s| &mut s.capabilities().log)?;
    b::process::add_to_linker::<T, HasSelf<process::ProcessCall>>(linker, |s| {
        &mut s.capabilities().process
    })?;
    b::kube::add_to_linker::<T, HasSelf<kube::KubeCall>>(linker, |s| &mut s.capabilities().kube)?;
    b::artifacts::add_to_linker::<T, HasSelf<artifacts::ArtifactsCall>>(linker, |s| {
        &mut s.capabilities().artifacts
    })?;
    b::sagemaker::add_to_linker::<T, HasSelf<sagemaker::SagemakerCall>>(linker, |s| {
        &mut s.capabilities().sagemaker
    })?;
    b::http::add_to_linker::<T, HasSelf<Ungranted>>(linker, |s| &mut s.capabilities().ungranted)?;
    Ok(())
}

/// Capabilities that are part of the contract, so plugins can be written against them, but
/// have no host implementation yet: no grant can enable them, so every call is denied.
pub struct Ungranted {
    target: Arc<str>,
}

impl Ungranted {
    fn deny(&self, capability: &str) -> BackendError {
        BackendError::Denied(Denial {
            capability: capability.into(),
            reason: format!(
                "target {} is not granted the {capability} capability",
                self.target
            ),
        })
    }
}

impl http::Host for Ungranted {
    async fn send(
        &mut self,
        _req: http::Request,
    ) -> wasmtime::Result<Result<http::Response, BackendError>> {
        Ok(Err(self.deny("http")))
    }
}
