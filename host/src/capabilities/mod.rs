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

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::contract::mlgw::backend::{http, sagemaker};
use crate::contract::types::{BackendError, Denial};
use crate::domain::Capability;

/// What one target was granted, shared by all its calls.
#[derive(Clone)]
pub struct Capabilities {
    pub log: Arc<log::LogCapability>,
    pub process: Option<Arc<process::ProcessCapability>>,
    pub kube: Option<Arc<kube::KubeCapability>>,
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
        v
    }

    /// The per-call states for one call of `target`; `scope` is the artifacts the call may
    /// name (those of the job or endpoint it concerns).
    pub fn for_call(
        &self,
        target: &Arc<str>,
        scope: Arc<[String]>,
        deadline: Option<std::time::Instant>,
    ) -> CallCapabilities {
        CallCapabilities {
            log: log::LogCall::new(self.log.clone()),
            process: process::ProcessCall::new(target.clone(), self.process.clone()),
            kube: kube::KubeCall::new(target.clone(), self.kube.clone(), deadline),
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

/// Every capability's state for one call.
pub struct CallCapabilities {
    pub log: log::LogCall,
    pub process: process::ProcessCall,
    pub kube: kube::KubeCall,
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
    b::sagemaker::add_to_linker::<T, HasSelf<Ungranted>>(linker, |s| {
        &mut s.capabilities().ungranted
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

/// Until the sagemaker capability's host side lands, every SageMaker call is denied.
impl sagemaker::Host for Ungranted {
    async fn create_training_job(
        &mut self,
        _req: sagemaker::TrainingJobRequest,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn describe_training_job(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<sagemaker::TrainingJob, BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn stop_training_job(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn training_job_logs(
        &mut self,
        _name: String,
        _cursor: Option<String>,
        _limit: u32,
    ) -> wasmtime::Result<Result<sagemaker::LogEvents, BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn create_model(
        &mut self,
        _req: sagemaker::ModelRequest,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn delete_model(&mut self, _name: String) -> wasmtime::Result<Result<(), BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn create_endpoint_config(
        &mut self,
        _req: sagemaker::EndpointConfigRequest,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn describe_endpoint_config(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<Vec<sagemaker::ProductionVariant>, BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn delete_endpoint_config(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn create_endpoint(
        &mut self,
        _name: String,
        _config_name: String,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn describe_endpoint(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<sagemaker::Endpoint, BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn update_endpoint(
        &mut self,
        _name: String,
        _config_name: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        Ok(Err(self.deny("sagemaker")))
    }
    async fn delete_endpoint(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        Ok(Err(self.deny("sagemaker")))
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
