//! The Open Inference Protocol's own gRPC service on the gateway: a real scikit-learn model
//! trained by a real job, served by a real MLServer on the `local` target, and reached through
//! `inference.GRPCInferenceService` with the endpoint's name as the model name.

use std::time::Duration;

use futures::StreamExt;
use mlgw::api::oip::{
    self, grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::InferInputTensor,
};
use mlgw::api::pb;
use mlgw_tests::iris::{ROWS, TRAIN, expected};
use mlgw_tests::*;
use tonic::Code;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

fn flat() -> Vec<f64> {
    ROWS.iter().flatten().copied().collect()
}

fn typed(
    model: &str,
    datatype: &str,
    contents: oip::InferTensorContents,
) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_name: model.into(),
        id: "req-1".into(),
        inputs: vec![InferInputTensor {
            name: "input-0".into(),
            datatype: datatype.into(),
            shape: vec![ROWS.len() as i64, 4],
            contents: Some(contents),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn fp64(model: &str) -> oip::ModelInferRequest {
    typed(
        model,
        "FP64",
        oip::InferTensorContents {
            fp64_contents: flat(),
            ..Default::default()
        },
    )
}

/// As tritonclient sends it: the tensor's bytes in raw_input_contents, little-endian.
fn raw_fp32(model: &str) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "input-0".into(),
            datatype: "FP32".into(),
            shape: vec![ROWS.len() as i64, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![
            flat()
                .iter()
                .flat_map(|x| (*x as f32).to_le_bytes())
                .collect(),
        ],
        ..Default::default()
    }
}

async fn ready(c: &mut GrpcInferenceServiceClient<Channel>, name: &str) -> Result<bool, Code> {
    c.model_ready(oip::ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    })
    .await
    .map(|r| r.into_inner().ready)
    .map_err(|s| s.code())
}

#[tokio::test]
async fn a_stock_oip_client_reaches_an_endpoint_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), None).await;
    let mut training = gw.training().await;
    let mut serving = gw.serving().await;
    let mut oip = GrpcInferenceServiceClient::new(gw.channel().await);

    // Served and discoverable next to the gateway's own services.
    let mut refl = ServerReflectionClient::new(gw.channel().await);
    let mut s = refl
        .server_reflection_info(futures::stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        s.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "inference.GRPCInferenceService"),
        "{:?}",
        list.service
    );
    assert!(
        oip.server_live(oip::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        oip.server_ready(oip::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    // No such model yet: NOT_FOUND for each call, not a hang or an empty answer.
    assert_eq!(ready(&mut oip, "iris").await, Err(Code::NotFound));
    assert_eq!(
        oip.model_infer(fp64("iris")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        oip.model_metadata(oip::ModelMetadataRequest {
            name: "iris".into(),
            version: String::new()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );

    let job = submit(&mut training, "", spec(&[&python(), "-c", TRAIN]))
        .await
        .unwrap();
    let done = wait_job(&mut training, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    let want = expected(&file_path(&done.output_uri));

    let ep = serving
        .deploy(pb::DeployRequest {
            spec: Some(pb::EndpointSpec {
                name: "iris".into(),
                model_uri: done.output_uri.clone(),
                model_format: "sklearn".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // MLServer takes seconds to start: the endpoint is known but cannot serve yet.
    assert_eq!(ep.state, pb::EndpointState::Creating as i32);
    assert_eq!(ready(&mut oip, "iris").await, Ok(false));
    let err = oip.model_infer(fp64("iris")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("not ready"), "{}", err.message());

    wait_for(Duration::from_secs(120), "model iris to be ready", || {
        let mut oip = oip.clone();
        async move { ready(&mut oip, "iris").await.ok().filter(|r| *r) }
    })
    .await;

    // Typed contents, FP64: the model's own predictions, as typed contents.
    let resp = oip.model_infer(fp64("iris")).await.unwrap().into_inner();
    assert_eq!(resp.model_name, "iris");
    assert_eq!(resp.id, "req-1");
    assert_eq!(resp.outputs.len(), 1);
    assert!(resp.raw_output_contents.is_empty());
    let out = &resp.outputs[0];
    assert_eq!(out.datatype, "INT64");
    assert_eq!(out.shape, [ROWS.len() as i64, 1]);
    assert_eq!(out.contents.as_ref().unwrap().int64_contents, want);

    // The same as the gateway's own Predict.
    let predicted = serving
        .predict(pb::PredictRequest {
            endpoint: "iris".into(),
            inputs: vec![pb::InferTensor {
                name: "input-0".into(),
                datatype: "FP64".into(),
                shape: vec![ROWS.len() as i64, 4],
                fp64_contents: flat(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(predicted.outputs[0].int64_contents, want);

    // Typed FP32 (its own narrow field) works too.
    let resp = oip
        .model_infer(typed(
            "iris",
            "FP32",
            oip::InferTensorContents {
                fp32_contents: flat().iter().map(|x| *x as f32).collect(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.outputs[0].contents.as_ref().unwrap().int64_contents,
        want
    );

    // Raw in, raw out.
    let resp = oip
        .model_infer(raw_fp32("iris"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.raw_output_contents.len(), 1);
    assert!(resp.outputs[0].contents.is_none());
    let got: Vec<i64> = resp.raw_output_contents[0]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, want);

    // Metadata: the endpoint's name, revision and target.
    let meta = oip
        .model_metadata(oip::ModelMetadataRequest {
            name: "iris".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "iris");
    assert_eq!(meta.platform, "local");
    assert_eq!(meta.versions, ["1"]);

    // Bad tensors are INVALID_ARGUMENT naming the field, before any model server sees them.
    let mut short = raw_fp32("iris");
    short.raw_input_contents[0].pop();
    let err = oip.model_infer(short).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("raw_input_contents[0]:"),
        "{}",
        err.message()
    );
    let wrong_field = typed(
        "iris",
        "FP64",
        oip::InferTensorContents {
            int64_contents: vec![1; 12],
            ..Default::default()
        },
    );
    let err = oip.model_infer(wrong_field).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("inputs[0].contents:"),
        "{}",
        err.message()
    );
    let mut bad_shape = fp64("iris");
    bad_shape.inputs[0].shape = vec![2, 4];
    let err = oip.model_infer(bad_shape).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("inputs[0].shape:"),
        "{}",
        err.message()
    );
    let mut both = raw_fp32("iris");
    both.inputs[0].contents = Some(oip::InferTensorContents {
        fp32_contents: vec![1.0; 12],
        ..Default::default()
    });
    let err = oip.model_infer(both).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("inputs[0].contents:"),
        "{}",
        err.message()
    );

    // Deleted: unknown again.
    serving
        .delete(pb::DeleteEndpointRequest { id: ep.id.clone() })
        .await
        .unwrap();
    assert_eq!(ready(&mut oip, "iris").await, Err(Code::NotFound));
    assert_eq!(
        oip.model_infer(fp64("iris")).await.unwrap_err().code(),
        Code::NotFound
    );
}
