//! The gateway with a plugin that drives Kubernetes through the `kube` capability
//! (tests/fixtures/plugins/kube-manifest), against the real control plane: what the API
//! server, RBAC, the Training Operator and KWOK decide reaches the client as job states and
//! gRPC status codes.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job as BatchJob;
use kube::api::Api;
use mlgw::api::pb;
use mlgw_tests::cluster::{Cluster, client, cluster, unique};
use mlgw_tests::*;
use serde_json::{Value, json};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

fn target(name: &str, kubeconfig: &Path) -> String {
    format!(
        r#"
[targets.{name}]
plugin = "kube-manifest"
[targets.{name}.grants.kube]
kubeconfig = "{}"
namespaces = ["team-a"]
kinds = ["kubeflow.org/v1/PyTorchJob", "batch/v1/Job", "v1/Pod"]
"#,
        kubeconfig.display()
    )
}

async fn gateway(c: &Cluster) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
default_target = "k8s"

[plugins]
kube-manifest = "{}"
{}
{}
"#,
        mlgw_plugin_artifacts::KUBE_MANIFEST_PATH,
        target("k8s", &c.gateway),
        target("k8s-readonly", &c.readonly),
    );
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(&config)).await;
    (dir, gw)
}

fn manifest_spec(manifest: &Value) -> pb::TrainingJobSpec {
    let mut s = spec(&["train"]);
    s.env.insert("MANIFEST".into(), manifest.to_string());
    s
}

fn pod_template(annotations: Value, container: &str) -> Value {
    json!({
        "metadata": {"annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": container, "image": "busybox", "command": ["true"]}]
        }
    })
}

fn pytorchjob(name: &str) -> Value {
    let replica = json!({
        "replicas": 1,
        "restartPolicy": "Never",
        "template": pod_template(json!({"mlgw.dev/fake-duration": "1s"}), "pytorch"),
    });
    json!({
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": replica}}
    })
}

fn batch_job(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": pod_template(annotations, "main")}
    })
}

#[tokio::test]
async fn kubernetes_jobs_run_to_their_end_through_the_gateway() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut t = gw.training().await;

    let ptj = submit(&mut t, "k8s", manifest_spec(&pytorchjob(&unique("ptj"))))
        .await
        .expect("submit pytorchjob");
    let failing = submit(
        &mut t,
        "k8s",
        manifest_spec(&batch_job(
            &unique("job"),
            json!({"mlgw.dev/fake-outcome": "fail"}),
        )),
    )
    .await
    .expect("submit failing job");

    let done = wait_job(&mut t, &ptj.id, Duration::from_secs(180)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    // The pods' logs, read from the node through the API server.
    assert_eq!(
        logs(&mut t, &ptj.id, false).await,
        (1..=3)
            .map(|i| format!("fake training log line {i}"))
            .collect::<Vec<_>>()
    );
    let done = wait_job(&mut t, &failing.id, Duration::from_secs(180)).await;
    assert_eq!(state(&done), pb::JobState::Failed, "{done:?}");
    assert!(!done.message.is_empty(), "a failed job says why: {done:?}");
}

#[tokio::test]
async fn cancel_deletes_the_kubernetes_object() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut t = gw.training().await;
    let name = unique("long");
    let job = submit(
        &mut t,
        "k8s",
        manifest_spec(&batch_job(&name, json!({"mlgw.dev/fake-duration": "10m"}))),
    )
    .await
    .expect("submit");
    t.cancel(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .expect("cancel");
    let done = wait_job(&mut t, &job.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Cancelled);

    let jobs: Api<BatchJob> = Api::namespaced(client(&c.admin).await, "team-a");
    wait_for(Duration::from_secs(60), "the Job deleted", || {
        let jobs = jobs.clone();
        let name = name.clone();
        async move { jobs.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn what_kubernetes_refuses_comes_back_as_clear_status_codes() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut t = gw.training().await;

    // The CRD's schema, enforced by the API server, names the field.
    let mut bad = pytorchjob(&unique("bad"));
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = json!("one");
    let err = submit(&mut t, "k8s", manifest_spec(&bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let field = err.metadata().get("mlgw-field").unwrap().to_str().unwrap();
    assert!(
        field.ends_with("pytorchReplicaSpecs.Master.replicas"),
        "{field}"
    );

    // A namespace outside the target's grant.
    let mut elsewhere = batch_job(&unique("job"), json!({}));
    elsewhere["metadata"]["namespace"] = json!("team-b");
    let err = submit(&mut t, "k8s", manifest_spec(&elsewhere))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("team-b"), "{}", err.message());

    // A Role without create on pytorchjobs.
    let err = submit(
        &mut t,
        "k8s-readonly",
        manifest_spec(&pytorchjob(&unique("ro"))),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("forbidden"), "{}", err.message());

    // Each refusal is on record as a failed job with the API server's reason, and the
    // gateway keeps serving.
    let jobs = t
        .list(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    for j in &jobs {
        assert_eq!(state(j), pb::JobState::Failed, "{j:?}");
        assert!(j.message.starts_with("submit failed"), "{j:?}");
    }
}

#[tokio::test]
async fn a_remote_target_refuses_paths_on_the_gateways_machine() {
    let c = cluster();
    let (dir, gw) = gateway(c).await;
    let mut t = gw.training().await;
    let mut s = manifest_spec(&pytorchjob(&unique("remote")));
    s.inputs.push(pb::InputChannel {
        name: "train".into(),
        uri: "file:///data/train".into(),
    });
    let err = submit(&mut t, "k8s", s).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert_eq!(
        err.metadata().get("mlgw-field").unwrap(),
        "spec.inputs[0].uri"
    );
    assert!(err.message().contains("cannot read"), "{}", err.message());

    // Code in the directory store is on the gateway's machine too.
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("train.py"), "print('hi')\n").unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["--server", &gw.addr, "artifacts", "put"])
        .arg(&code)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = manifest_spec(&pytorchjob(&unique("remote")));
    s.code_uri = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let err = submit(&mut t, "k8s", s).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert_eq!(err.metadata().get("mlgw-field").unwrap(), "spec.code_uri");
    assert!(
        err.message().contains("store = \"s3\""),
        "{}",
        err.message()
    );
    let all = t
        .list(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.jobs.is_empty(), "nothing was stored");
}
