//! The gRPC surface: tonic services that translate proto messages to gateway calls and back.
//! Proto types go no further than this module.

mod artifacts;
mod convert;
mod inference;
mod serving;
mod status;
mod targets;
mod training;

use std::sync::Arc;

use crate::gateway::Gateway;

pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mlgw.v1");

    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mlgw_descriptor");
}

/// The Open Inference Protocol's gRPC service, served so stock inference clients can point at
/// the gateway.
pub mod oip {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");
}

pub use status::to_status;

/// Every service the gateway serves, health and reflection included.
pub fn routes(gw: Arc<Gateway>) -> anyhow::Result<tonic::service::Routes> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Serving means the store is open and plugins are loaded: both happened before this.
    let reporter = health_reporter.clone();
    tokio::spawn(async move {
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_serving::<pb::training_service_server::TrainingServiceServer<training::TrainingApi>>()
            .await;
        reporter
            .set_serving::<pb::serving_service_server::ServingServiceServer<serving::ServingApi>>()
            .await;
        reporter
            .set_serving::<pb::target_service_server::TargetServiceServer<targets::TargetApi>>()
            .await;
        reporter
            .set_serving::<pb::artifact_service_server::ArtifactServiceServer<artifacts::ArtifactApi>>()
            .await;
        reporter
            .set_serving::<oip::grpc_inference_service_server::GrpcInferenceServiceServer<inference::InferenceApi>>()
            .await;
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1alpha too: older grpcurl and grpc_cli only speak that.
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::training_service_server::TrainingServiceServer::new(
            training::TrainingApi::new(gw.clone()),
        ))
        .add_service(pb::serving_service_server::ServingServiceServer::new(
            serving::ServingApi::new(gw.clone()),
        ))
        .add_service(pb::target_service_server::TargetServiceServer::new(
            targets::TargetApi::new(gw.clone()),
        ))
        .add_service(pb::artifact_service_server::ArtifactServiceServer::new(
            artifacts::ArtifactApi::new(gw.clone()),
        ))
        .add_service(
            oip::grpc_inference_service_server::GrpcInferenceServiceServer::new(
                inference::InferenceApi::new(gw),
            )
            // Tensors are bigger than the gateway's own messages; as MLServer and Triton do,
            // take what the client's own limit allows rather than tonic's 4 MiB.
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
        );
    Ok(routes.routes())
}
