//! Serving on the local target: a real scikit-learn model trained by a real job, served by a
//! real MLServer, predictions forwarded by the gateway's native data plane.

use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::iris::{ROWS, TRAIN, expected};
use mlgw_tests::*;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

fn request(endpoint: &str) -> pb::PredictRequest {
    pb::PredictRequest {
        endpoint: endpoint.into(),
        inputs: vec![pb::InferTensor {
            name: "input-0".into(),
            datatype: "FP64".into(),
            shape: vec![ROWS.len() as i64, 4],
            fp64_contents: ROWS.iter().flatten().copied().collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn wait_state(
    c: &mut ServingServiceClient<tonic::transport::Channel>,
    id: &str,
    want: pb::EndpointState,
) -> pb::Endpoint {
    wait_for(
        Duration::from_secs(120),
        &format!("endpoint {id} to be {want:?}"),
        || {
            let mut c = c.clone();
            let id = id.to_string();
            async move {
                let e = c
                    .get(pb::GetEndpointRequest { id })
                    .await
                    .ok()?
                    .into_inner();
                assert!(
                    e.state != pb::EndpointState::Failed as i32
                        || want == pb::EndpointState::Failed,
                    "endpoint failed: {}",
                    e.message
                );
                (e.state == want as i32).then_some(e)
            }
        },
    )
    .await
}

fn mlserver_pid(e: &pb::Endpoint) -> u32 {
    e.backend_ref
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in backend ref {:?}", e.backend_ref))
}

#[tokio::test]
async fn train_deploy_predict_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), None).await;
    let mut training = gw.training().await;
    let mut serving = gw.serving().await;

    let job = submit(&mut training, "", spec(&[&python(), "-c", TRAIN]))
        .await
        .unwrap();
    let done = wait_job(&mut training, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    let model_dir = file_path(&done.output_uri);
    let want = expected(&model_dir);

    // Predicting before the endpoint exists is NOT_FOUND, not a hang.
    assert_eq!(
        serving.predict(request("iris")).await.unwrap_err().code(),
        Code::NotFound
    );

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
    assert_eq!(ep.state, pb::EndpointState::Creating as i32);
    let ready = wait_state(&mut serving, &ep.id, pb::EndpointState::Ready).await;
    assert!(ready.url.starts_with("http://127.0.0.1:"), "{}", ready.url);

    let resp = serving.predict(request("iris")).await.unwrap().into_inner();
    assert_eq!(resp.model_name, "iris");
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!(
        resp.outputs[0].int64_contents, want,
        "the model's own predictions"
    );

    // A malformed tensor is refused by the gateway before it reaches the model server.
    let mut bad = request("iris");
    bad.inputs[0].shape = vec![2, 4];
    let err = serving.predict(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("inputs[0].shape:"),
        "{}",
        err.message()
    );

    // A second endpoint with the same name is refused; the first is untouched.
    let dup = serving
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
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    // Roll to a new revision: a new server comes up, the old one goes away.
    let old_pid = mlserver_pid(&ready);
    let updated = serving
        .update(pb::UpdateEndpointRequest {
            id: "iris".into(),
            spec: Some(pb::EndpointSpec {
                model_uri: done.output_uri.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.state, pb::EndpointState::Updating as i32);
    let rolled = wait_state(&mut serving, &ep.id, pb::EndpointState::Ready).await;
    let new_pid = mlserver_pid(&rolled);
    assert_ne!(old_pid, new_pid);
    wait_for(
        Duration::from_secs(30),
        "the old model server to stop",
        || async { process_gone(old_pid).then_some(()) },
    )
    .await;
    let resp = serving.predict(request(&ep.id)).await.unwrap().into_inner();
    assert_eq!(resp.outputs[0].int64_contents, want);

    // Canary needs a target with traffic splitting.
    let err = serving
        .update(pb::UpdateEndpointRequest {
            id: "iris".into(),
            spec: Some(pb::EndpointSpec {
                canary_percent: Some(10),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{}", err.message());

    let deleted = serving
        .delete(pb::DeleteEndpointRequest { id: "iris".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.state, pb::EndpointState::Deleted as i32);
    wait_for(
        Duration::from_secs(30),
        "the model server to stop",
        || async { process_gone(new_pid).then_some(()) },
    )
    .await;
    let listed = serving
        .list(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.endpoints.is_empty(),
        "deleted endpoints are not listed by default"
    );
    let err = serving.predict(request(&ep.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn an_unknown_model_format_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), None).await;
    let mut serving = gw.serving().await;
    let err = serving
        .deploy(pb::DeployRequest {
            spec: Some(pb::EndpointSpec {
                name: "m".into(),
                model_uri: "file:///nowhere".into(),
                model_format: "caffe".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("spec.model_format:"),
        "{}",
        err.message()
    );
    let err = serving
        .deploy(pb::DeployRequest {
            spec: Some(pb::EndpointSpec {
                name: "Bad Name".into(),
                model_uri: "x".into(),
                model_format: "sklearn".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("spec.name:"));
    assert!(
        serving
            .list(pb::ListEndpointsRequest {
                include_deleted: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .endpoints
            .is_empty()
    );
}
