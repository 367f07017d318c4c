//! The SageMaker target: training jobs, their CloudWatch logs and real-time endpoints, all
//! through the host's typed `sagemaker` capability. The host signs, scopes and tags every
//! request; this plugin maps the gateway's specs onto SageMaker's requests and SageMaker's
//! answers back onto the gateway's states, as pure functions wherever it can.

mod instances;
mod names;
mod serving;
mod settings;
mod training;

use mlgw_plugin_sdk::{
    Backend, BackendError, BackendInfo, BackendRef, CallContext, Capabilities, EndpointSpec,
    EndpointStatus, Features, JobStatus, LogPage, Route, TrainingSpec,
};

pub struct Sagemaker;

impl Backend for Sagemaker {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "sagemaker".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Training jobs and endpoints on Amazon SageMaker".into(),
            features: Features::TRAINING
                | Features::TRAINING_LOGS
                | Features::TRAINING_CANCEL
                | Features::SERVING
                | Features::SERVING_UPDATE
                | Features::CANARY,
            // Every call is a SageMaker (or CloudWatch) request made by the host.
            needs: Capabilities::SAGEMAKER,
        }
    }

    fn validate_training(ctx: CallContext, spec: TrainingSpec) -> Result<(), BackendError> {
        let settings = settings::load(&ctx)?;
        training::request(&ctx, &spec, &settings).map(|_| ())
    }

    fn submit_training(ctx: CallContext, spec: TrainingSpec) -> Result<BackendRef, BackendError> {
        training::submit(&ctx, &spec)
    }

    fn training_status(_ctx: CallContext, job: BackendRef) -> Result<JobStatus, BackendError> {
        training::status_of(&job)
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
        training::logs(&job, cursor, max_lines)
    }

    fn validate_endpoint(ctx: CallContext, spec: EndpointSpec) -> Result<(), BackendError> {
        serving::validate(&ctx, &spec)
    }

    fn deploy_endpoint(ctx: CallContext, spec: EndpointSpec) -> Result<BackendRef, BackendError> {
        serving::deploy(&ctx, &spec)
    }

    fn describe_endpoint(
        _ctx: CallContext,
        endpoint: BackendRef,
    ) -> Result<EndpointStatus, BackendError> {
        serving::describe(&endpoint)
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
        serving::route_of(&endpoint)
    }
}

mlgw_plugin_sdk::export_backend!(Sagemaker);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_itself() {
        let info = Sagemaker::describe();
        assert_eq!(info.name, "sagemaker");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.needs, Capabilities::SAGEMAKER);
        assert!(
            info.features
                .contains(Features::TRAINING | Features::TRAINING_LOGS | Features::TRAINING_CANCEL)
        );
        assert!(!info.features.intersects(Features::TUNING | Features::BATCH));
    }
}
