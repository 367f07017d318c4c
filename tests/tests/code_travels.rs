//! Code and artifacts that travel, on the local target: a job's code goes with it (uploaded by
//! `mlgw submit --code`, unpacked by the gateway into the job's directory, the command run in
//! it), its outputs come back where every target can read them (published to the S3 store,
//! read back with the S3 API), `s3://` inputs are fetched for it, and a model is deployed from
//! a job id — on both stores: the directory under the data dir and moto's S3 on loopback.

use std::path::Path;
use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::iris::{ROWS, expected};
use mlgw_tests::moto::Moto;
use mlgw_tests::*;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const BUCKET: &str = "mlgw-artifacts";
const PREFIX: &str = "team-a";
const TARGET: &str = "[targets.local]\nplugin = \"local\"\n[targets.local.grants.process]\n";
/// The hostile fixture, granted processes, for what a plugin may do with artifacts.
fn hostile() -> String {
    format!(
        "[plugins]\nhostile = \"{}\"\n[targets.hostile]\nplugin = \"hostile\"\n\
         [targets.hostile.grants.process]\n",
        mlgw_plugin_artifacts::HOSTILE_PATH
    )
}

/// The code directory: a script that needs a module and a data file beside it, and a file its
/// `.gitignore` keeps out of the upload.
fn code_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("train.py"),
        r#"
import os, sys, joblib
import helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
assert not os.path.exists("secret.txt"), "an ignored file was uploaded"
assert os.path.exists(os.path.join("data", "note.txt")), "the code's data did not travel"
assert os.environ["MLGW_CODE_DIR"] == os.getcwd()
train = os.environ.get("MLGW_INPUT_TRAIN")
if train:
    print("input", open(train).read().strip(), flush=True)
X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=500).fit(X, y)
joblib.dump(model, os.path.join(os.environ["MLGW_OUTPUT_DIR"], "model.joblib"))
print(helper.greeting(), "in", os.getcwd(), flush=True)
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("helper.py"),
        "def greeting():\n    return 'helper ok'\n",
    )
    .unwrap();
    std::fs::write(dir.join("data/note.txt"), "data\n").unwrap();
    std::fs::write(dir.join(".gitignore"), "secret.txt\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "do not upload\n").unwrap();
}

async fn cli(gw: &Gateway, args: &[&str]) -> String {
    let out = tokio::process::Command::new(BIN)
        .arg("--server")
        .arg(&gw.addr)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mlgw {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn predict_request(endpoint: &str) -> pb::PredictRequest {
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

/// Submits the code with `mlgw submit --code`, waits for the job, and returns it with its logs.
async fn train(gw: &Gateway, code: &Path, extra: &[&str]) -> (pb::Job, Vec<String>) {
    let mut args = vec![
        "submit",
        "--name",
        "travel",
        "--code",
        code.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "python", "train.py"]);
    let id = cli(gw, &args).await;
    let mut c = gw.training().await;
    let job = wait_job(&mut c, &id, Duration::from_secs(120)).await;
    let lines = logs(&mut c, &id, false).await;
    assert_eq!(
        state(&job),
        pb::JobState::Succeeded,
        "{}: {lines:?}",
        job.message
    );
    (job, lines)
}

/// Deploys the job's model by the job's id, and checks its predictions against the model's
/// own answers (from the file the job wrote, `model_dir`).
async fn deploy_and_predict(gw: &Gateway, job: &pb::Job, model_dir: &Path) {
    let mut s = gw.serving().await;
    let ep = s
        .deploy(pb::DeployRequest {
            target: "local".into(),
            spec: Some(pb::EndpointSpec {
                name: "travelled".into(),
                model_uri: job.id.clone(),
                model_format: "sklearn".into(),
                ..Default::default()
            }),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ep.spec.as_ref().unwrap().model_uri, job.output_uri);
    wait_endpoint(&s, &ep.id, "the endpoint to be ready", |e| {
        assert_ne!(e.state, pb::EndpointState::Failed as i32, "{}", e.message);
        e.state == pb::EndpointState::Ready as i32
    })
    .await;
    let p = s
        .predict(predict_request("travelled"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.outputs[0].int64_contents, expected(model_dir));
    s.delete(pb::DeleteEndpointRequest { id: ep.id })
        .await
        .unwrap();
}

#[tokio::test]
async fn code_travels_with_a_job_and_its_model_deploys_by_job_id() {
    let tmp = tempfile::tempdir().unwrap();
    let code = tmp.path().join("src");
    code_dir(&code);
    let gw = Gateway::start(BIN, &tmp.path().join("data"), Some(TARGET)).await;

    let (job, lines) = train(&gw, &code, &[]).await;
    let job_spec = job.spec.as_ref().unwrap();
    assert!(
        job_spec.code_uri.starts_with("file://"),
        "{}",
        job_spec.code_uri
    );
    // It ran in the unpacked code, inside the job's directory under the target's root.
    let line = lines
        .iter()
        .find(|l| l.starts_with("helper ok in "))
        .unwrap();
    let cwd = line.trim_start_matches("helper ok in ");
    assert!(
        cwd.starts_with(gw.data_dir.join("targets/local/jobs").to_str().unwrap()),
        "{cwd}"
    );
    assert!(cwd.ends_with("/code"), "{cwd}");
    // With the directory store, outputs stay where the job wrote them.
    assert!(job.output_uri.starts_with("file://"), "{}", job.output_uri);
    deploy_and_predict(&gw, &job, &file_path(&job.output_uri)).await;

    // The same code again: one artifact.
    let (again, _) = train(&gw, &code, &[]).await;
    assert_eq!(again.spec.unwrap().code_uri, job_spec.code_uri);

    // A job id that has not succeeded is no model.
    let mut c = gw.training().await;
    let running = submit(&mut c, "local", spec(&["sleep", "30"]))
        .await
        .unwrap();
    let err = gw
        .serving()
        .await
        .deploy(pb::DeployRequest {
            target: "local".into(),
            spec: Some(pb::EndpointSpec {
                name: "too-early".into(),
                model_uri: running.id.clone(),
                model_format: "sklearn".into(),
                ..Default::default()
            }),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.metadata().get("mlgw-field").unwrap(), "spec.model_uri");
    c.cancel(pb::CancelJobRequest { id: running.id })
        .await
        .unwrap();
}

#[tokio::test]
async fn code_that_is_no_directory_artifact_of_the_gateway_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &tmp.path().join("data"), Some(TARGET)).await;
    let mut c = gw.training().await;
    let file = tmp.path().join("one.txt");
    std::fs::write(&file, "x").unwrap();
    let file_uri = cli(&gw, &["artifacts", "put", file.to_str().unwrap()]).await;
    let unknown = format!("sha256:{}", "0".repeat(64));
    for (code_uri, why) in [
        (unknown.as_str(), "no artifact of this gateway"),
        (file_uri.as_str(), "single file"),
    ] {
        let mut s = spec(&["python", "train.py"]);
        s.code_uri = code_uri.into();
        let err = submit(&mut c, "local", s).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert_eq!(err.metadata().get("mlgw-field").unwrap(), "spec.code_uri");
        assert!(err.message().contains(why), "{}", err.message());
    }
    let all = c
        .list(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.jobs.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn with_an_object_store_outputs_are_published_and_inputs_fetched() {
    let tmp = tempfile::tempdir().unwrap();
    let code = tmp.path().join("src");
    code_dir(&code);
    let moto = Moto::start(BUCKET).await;
    let config = format!(
        "default_target = \"local\"\n{TARGET}{}{}",
        hostile(),
        moto.artifacts_config(BUCKET, PREFIX, "")
    );
    let gw = Gateway::start_with_env(
        BIN,
        &tmp.path().join("data"),
        Some(&config),
        moto.gateway_env(),
    )
    .await;
    // An input that lives only in the bucket.
    moto.client
        .put_object()
        .bucket(BUCKET)
        .key("inputs/rows.txt")
        .body(b"from the bucket\n".to_vec().into())
        .send()
        .await
        .unwrap();
    let input = format!("train=s3://{BUCKET}/inputs/rows.txt");
    let (job, lines) = train(&gw, &code, &["--input", &input]).await;
    assert!(
        lines.iter().any(|l| l == "input from the bucket"),
        "{lines:?}"
    );
    assert!(
        job.spec.as_ref().unwrap().code_uri.starts_with("s3://"),
        "the code went to the bucket"
    );
    // The job's output directory is in the bucket, under its id, and its URI says so.
    let want = format!("s3://{BUCKET}/{PREFIX}/default/outputs/{}/", job.id);
    assert_eq!(job.output_uri, want);
    let keys = moto
        .keys(BUCKET, &format!("{PREFIX}/default/outputs/{}/", job.id))
        .await;
    let model_key = keys
        .iter()
        .find(|k| k.ends_with("/model.joblib"))
        .unwrap_or_else(|| panic!("no model.joblib in {keys:?}"));
    // Read back with the S3 API: the very bytes the job wrote.
    let local = gw
        .data_dir
        .join("targets/local/jobs")
        .join(mlgw::domain::backend_name(&job.id))
        .join("output");
    assert_eq!(
        moto.get(BUCKET, model_key).await,
        std::fs::read(local.join("model.joblib")).unwrap()
    );
    // Deployed from the bucket: the local target fetches the model for its model server.
    deploy_and_predict(&gw, &job, &local).await;

    // A plugin can hand its own job's code to a backend as a presigned URL that fetches it
    // with no credentials, and can name no other artifact.
    let mut c = gw.training().await;
    let mut s = spec(&["irrelevant"]);
    s.name = "presign-code".into();
    s.code_uri = job.spec.as_ref().unwrap().code_uri.clone();
    let presigned = submit(&mut c, "hostile", s).await.unwrap();
    let url = presigned.backend_ref.clone();
    assert!(url.starts_with(&moto.endpoint), "{url}");
    let fetched = reqwest::get(&url).await.unwrap();
    assert!(fetched.status().is_success(), "{}", fetched.status());
    let code_key =
        job.spec.as_ref().unwrap().code_uri[format!("s3://{BUCKET}/").len()..].to_string();
    assert_eq!(
        fetched.bytes().await.unwrap().to_vec(),
        moto.get(BUCKET, &code_key).await
    );
    let mut s = spec(&["irrelevant"]);
    s.name = "artifact-not-mine".into();
    s.args = vec![job.spec.as_ref().unwrap().code_uri.clone()];
    let err = submit(&mut c, "hostile", s).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("not an artifact of the job"),
        "{}",
        err.message()
    );
}
