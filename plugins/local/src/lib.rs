//! The local target: training jobs run as local processes and endpoints are served by MLServer,
//! both started through the host's `process` capability inside the operator's granted root.
//!
//! Meant for laptops, CI and single machines: the same client requests that run on Kubernetes
//! or SageMaker run here, with the job's script seeing both MLGW_* and SageMaker's SM_*
//! environment variables.

mod env;
mod files;
mod logs;
mod refs;
mod serving;
mod status;
mod training;
mod validate;

use mlgw_plugin_sdk::{
    Backend, BackendError, BackendInfo, BackendRef, CallContext, Capabilities, EndpointSpec,
    EndpointStatus, Features, JobStatus, LogPage, Route, TrainingSpec,
};

pub struct Local;

impl Backend for Local {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "local".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Training jobs as local processes, serving through MLServer".into(),
            features: Features::TRAINING
                | Features::TRAINING_LOGS
                | Features::TRAINING_CANCEL
                | Features::SERVING
                | Features::SERVING_UPDATE,
            // Everything it does is a local process.
            needs: Capabilities::PROCESS,
        }
    }

    fn validate_training(_ctx: CallContext, spec: TrainingSpec) -> Result<(), BackendError> {
        validate::training(&spec)
    }

    fn submit_training(ctx: CallContext, spec: TrainingSpec) -> Result<BackendRef, BackendError> {
        training::submit(&ctx, &spec)
    }

    fn training_status(_ctx: CallContext, job: BackendRef) -> Result<JobStatus, BackendError> {
        training::status(&job)
    }

    fn cancel_training(_ctx: CallContext, job: BackendRef) -> Result<(), BackendError> {
        training::cancel(&job)
    }

    fn training_logs(
        _ctx: CallContext,
        job: BackendRef,
        cursor: Option<String>,
        max_lines: u32,
    ) -> Result<LogPage, BackendError> {
        training::logs(&job, cursor.as_deref(), max_lines)
    }

    fn validate_endpoint(_ctx: CallContext, spec: EndpointSpec) -> Result<(), BackendError> {
        validate::endpoint(&spec).map(|_| ())
    }

    fn deploy_endpoint(ctx: CallContext, spec: EndpointSpec) -> Result<BackendRef, BackendError> {
        serving::deploy(&ctx, &spec)
    }

    fn describe_endpoint(
        _ctx: CallContext,
        endpoint: BackendRef,
    ) -> Result<EndpointStatus, BackendError> {
        serving::status(&endpoint)
    }

    fn update_endpoint(
        ctx: CallContext,
        endpoint: BackendRef,
        spec: EndpointSpec,
    ) -> Result<BackendRef, BackendError> {
        serving::update(&ctx, &endpoint, &spec)
    }

    fn delete_endpoint(_ctx: CallContext, endpoint: BackendRef) -> Result<(), BackendError> {
        serving::delete(&endpoint)
    }

    fn endpoint_route(_ctx: CallContext, endpoint: BackendRef) -> Result<Route, BackendError> {
        serving::route(&endpoint)
    }
}

mlgw_plugin_sdk::export_backend!(Local);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_itself() {
        let info = Local::describe();
        assert_eq!(info.name, "local");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(
            info.features
                .contains(Features::TRAINING | Features::SERVING_UPDATE)
        );
        assert!(
            !info
                .features
                .intersects(Features::CANARY | Features::TUNING | Features::BATCH)
        );
    }
}
