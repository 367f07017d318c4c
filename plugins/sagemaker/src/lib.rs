//! The SageMaker target: training jobs, their CloudWatch logs and real-time endpoints, all
//! through the host's typed `sagemaker` capability. The host signs, scopes and tags every
//! request; this plugin maps the gateway's specs onto SageMaker's requests and SageMaker's
//! answers back onto the gateway's states, as pure functions wherever it can.

// The training and serving mappings that use these land in the next commits.
#[allow(dead_code)]
mod instances;
#[allow(dead_code)]
mod names;
#[allow(dead_code)]
mod settings;

use mlgw_plugin_sdk::{Backend, BackendInfo, Capabilities, Features};

pub struct Sagemaker;

impl Backend for Sagemaker {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "sagemaker".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Training jobs and endpoints on Amazon SageMaker".into(),
            features: Features::empty(),
            needs: Capabilities::SAGEMAKER,
        }
    }
}

mlgw_plugin_sdk::export_backend!(Sagemaker);
