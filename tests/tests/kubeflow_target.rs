//! The bundled `kubeflow` target against the real control plane (tests/cluster): the real
//! gateway binary turns `mlgw submit` into PyTorchJobs the Training Operator reconciles, batch
//! Jobs and TrainJobs; KWOK's fake GPU node runs the pods; every check reads Kubernetes back
//! with the admin client.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use mlgw::api::pb;
use mlgw_tests::cluster::{Cluster, client, cluster};
use mlgw_tests::moto::Moto;
use mlgw_tests::*;
use serde_json::{Value, json};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const NS: &str = "team-a";
const BUCKET: &str = "kubeflow-test";

const KINDS: &str = r#"["kubeflow.org/v1/PyTorchJob", "batch/v1/Job", "trainer.kubeflow.org/v1alpha1/TrainJob", "v1/Pod"]"#;

/// A `kubeflow` target whose pods carry `annotations` (the KWOK steering ones); `extra` adds
/// settings.
fn target(name: &str, kubeconfig: &Path, annotations: &str, extra: &str) -> String {
    format!(
        r#"
[targets.{name}]
plugin = "kubeflow"
settings = {{ image = "python:3.12", pod_check_seconds = 1, gpu_types = {{ default = {{ node_selector = {{ "nvidia.com/gpu.present" = "true" }} }} }}, pod_annotations = {{ {annotations} }}{extra} }}
[targets.{name}.grants.kube]
kubeconfig = "{}"
namespaces = ["{NS}"]
kinds = {KINDS}
"#,
        kubeconfig.display()
    )
}

fn runs_for(d: &str) -> String {
    format!(r#""mlgw.dev/fake-duration" = "{d}""#)
}

fn config(c: &Cluster, artifacts: &str) -> String {
    [
        "default_target = \"kubeflow\"\n".to_string(),
        target("kubeflow", &c.gateway, &runs_for("3s"), ""),
        target("kubeflow-long", &c.gateway, &runs_for("10m"), ""),
        target("kubeflow-restart", &c.gateway, &runs_for("25s"), ""),
        target(
            "kubeflow-fail",
            &c.gateway,
            r#""mlgw.dev/fake-outcome" = "fail""#,
            "",
        ),
        target(
            "kubeflow-job",
            &c.gateway,
            &runs_for("2s"),
            r#", kind = "job""#,
        ),
        target(
            "kubeflow-trainjob",
            &c.gateway,
            &runs_for("2s"),
            r#", kind = "trainjob", runtime_ref = { name = "torch-distributed" }"#,
        ),
        target("kubeflow-readonly", &c.readonly, &runs_for("2s"), ""),
        // A value the plugin passes on and the PyTorchJob CRD's schema refuses.
        target(
            "kubeflow-badschema",
            &c.gateway,
            &runs_for("2s"),
            r#", pod_template = { spec = { priorityClassName = 5 } }"#,
        ),
        artifacts.to_string(),
    ]
    .concat()
}

async fn gateway(c: &Cluster) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(&config(c, ""))).await;
    (dir, gw)
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

fn ptj_resource() -> ApiResource {
    ApiResource {
        group: "kubeflow.org".into(),
        version: "v1".into(),
        api_version: "kubeflow.org/v1".into(),
        kind: "PyTorchJob".into(),
        plural: "pytorchjobs".into(),
    }
}

fn trainjob_resource() -> ApiResource {
    ApiResource {
        group: "trainer.kubeflow.org".into(),
        version: "v1alpha1".into(),
        api_version: "trainer.kubeflow.org/v1alpha1".into(),
        kind: "TrainJob".into(),
        plural: "trainjobs".into(),
    }
}

fn batch_resource() -> ApiResource {
    ApiResource {
        group: "batch".into(),
        version: "v1".into(),
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        plural: "jobs".into(),
    }
}

async fn objects(c: &Cluster, ar: &ApiResource, job_id: &str) -> Vec<DynamicObject> {
    let api: Api<DynamicObject> = Api::namespaced_with(client(&c.admin).await, NS, ar);
    api.list(&ListParams::default().labels(&format!("mlgw.dev/job-id={job_id}")))
        .await
        .unwrap()
        .items
}

async fn pods(c: &Cluster, job_id: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client(&c.admin).await, NS);
    api.list(&ListParams::default().labels(&format!("mlgw.dev/job-id={job_id}")))
        .await
        .unwrap()
        .items
}

async fn get(t: &mut TrainingServiceClient<tonic::transport::Channel>, id: &str) -> pb::Job {
    t.get(pb::GetJobRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Waits (bounded) until the job's record satisfies `ok`.
async fn wait_record(
    gw: &Gateway,
    id: &str,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    let t = gw.training().await;
    wait_for(timeout, what, || {
        let mut t = t.clone();
        let ok = &ok;
        async move {
            let j = get(&mut t, id).await;
            ok(&j).then_some(j)
        }
    })
    .await
}

/// Every (source, text) of the job's log, not followed.
async fn log_lines(gw: &Gateway, id: &str) -> Vec<(String, String)> {
    let mut t = gw.training().await;
    let mut s = t
        .logs(pb::JobLogsRequest {
            id: id.into(),
            follow: false,
            cursor: String::new(),
        })
        .await
        .expect("logs")
        .into_inner();
    let mut out = Vec::new();
    while let Some(l) = s.next().await {
        let l = l.expect("log line");
        out.push((l.source, l.text));
    }
    out
}

fn fake_lines() -> Vec<String> {
    (1..=3)
        .map(|i| format!("fake training log line {i}"))
        .collect()
}

fn env_of(c: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[tokio::test]
async fn a_two_node_gpu_job_from_the_cli_runs_its_code_on_the_gpu_node() {
    let c = cluster();
    let tmp = tempfile::tempdir().unwrap();
    let code = tmp.path().join("src");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("train.py"), "print('training')\n").unwrap();
    let moto = Moto::start(BUCKET).await;
    let gw = Gateway::start_with_env(
        BIN,
        &tmp.path().join("data"),
        Some(&config(c, &moto.artifacts_config(BUCKET, "mlgw", ""))),
        moto.gateway_env(),
    )
    .await;
    let mut t = gw.training().await;

    let id = cli(
        &gw,
        &[
            "submit",
            "--target",
            "kubeflow",
            "--name",
            "ddp",
            "--gpus",
            "2",
            "--nodes",
            "2",
            "--cpu",
            "2",
            "--memory",
            "4Gi",
            "--hp",
            "lr=0.1",
            "--code",
            code.to_str().unwrap(),
            "--",
            "python",
            "train.py",
        ],
    )
    .await;

    // The Training Operator made a Master and a Worker pod; the scheduler put both on the GPU
    // node with the GPU limit.
    let both = wait_for(Duration::from_secs(60), "a master and a worker pod", || {
        let id = id.clone();
        async move {
            let p = pods(c, &id).await;
            (p.len() == 2
                && p.iter()
                    .all(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some())))
            .then_some(p)
        }
    })
    .await;
    let mut roles: Vec<String> = both
        .iter()
        .map(|p| p.metadata.labels.as_ref().unwrap()["training.kubeflow.org/replica-type"].clone())
        .collect();
    roles.sort();
    assert_eq!(roles, ["master", "worker"]);
    let job = get(&mut t, &id).await;
    let code_uri = job.spec.as_ref().unwrap().code_uri.clone();
    assert!(code_uri.starts_with("s3://"), "{code_uri}");
    for p in &both {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("kwok-gpu-0"));
        let main = spec
            .containers
            .iter()
            .find(|c| c.name == "pytorch")
            .unwrap();
        let limits = main.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "2");
        assert_eq!(limits["memory"].0, "4Gi");
        let argv: Vec<&String> = main
            .command
            .iter()
            .chain(main.args.iter())
            .flatten()
            .collect();
        assert_eq!(argv, ["python", "train.py"]);
        assert_eq!(main.working_dir.as_deref(), Some("/mlgw/code"));
        assert_eq!(env_of(main, "MLGW_HP_LR").as_deref(), Some("0.1"));
        assert_eq!(
            env_of(main, "MLGW_HYPERPARAMETERS").as_deref(),
            Some("/mlgw/hyperparameters.json")
        );
        // KWOK runs no containers, so the init container's fetch is done from here: its URL,
        // with no credentials, gives exactly the code artifact's bytes.
        let init = &spec.init_containers.as_ref().unwrap()[0];
        let url = env_of(init, "MLGW_CODE_URL").expect("a presigned code URL");
        assert!(
            !url.contains("S3RVER") || url.contains("X-Amz-Signature"),
            "{url}"
        );
        let fetched = reqwest::get(&url).await.unwrap();
        assert!(fetched.status().is_success(), "{}", fetched.status());
        let key = &code_uri[format!("s3://{BUCKET}/").len()..];
        assert_eq!(
            fetched.bytes().await.unwrap().to_vec(),
            moto.get(BUCKET, key).await
        );
        assert_eq!(
            env_of(init, "MLGW_HYPERPARAMETERS_JSON").as_deref(),
            Some(r#"{"lr":"0.1"}"#)
        );
    }

    let done = wait_job(&mut t, &id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    // Both replicas' logs, the master's first, each line once.
    let lines = log_lines(&gw, &id).await;
    assert_eq!(lines.len(), 6, "{lines:?}");
    let master = both
        .iter()
        .find(|p| {
            p.metadata.labels.as_ref().unwrap()["training.kubeflow.org/replica-type"] == "master"
        })
        .and_then(|p| p.metadata.name.clone())
        .unwrap();
    assert!(lines[..3].iter().all(|(s, _)| *s == master), "{lines:?}");
    assert!(lines[3..].iter().all(|(s, _)| *s != master), "{lines:?}");
    let texts: Vec<String> = lines.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(texts[..3], fake_lines()[..]);
    assert_eq!(texts[3..], fake_lines()[..]);
}

#[tokio::test]
async fn logs_followed_from_before_the_pods_start_end_with_the_job() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut t = gw.training().await;
    let job = submit(&mut t, "kubeflow", spec(&["python", "train.py"]))
        .await
        .unwrap();
    // Followed at once: the pod does not exist or has not started yet, which is no error, and
    // the stream ends by itself once the job has ended and its log is drained.
    let lines = tokio::time::timeout(Duration::from_secs(120), logs(&mut t, &job.id, true))
        .await
        .expect("the followed log did not end with the job");
    assert_eq!(lines, fake_lines());
    // The log ends once the object has; the record follows at the next status poll.
    let done = wait_job(&mut t, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded);
}

#[tokio::test]
async fn more_gpus_than_any_node_has_waits_and_says_why() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let id = cli(
        &gw,
        &[
            "submit",
            "--target",
            "kubeflow-long",
            "--gpus",
            "16",
            "--",
            "python",
            "train.py",
        ],
    )
    .await;
    let j = wait_record(
        &gw,
        &id,
        Duration::from_secs(60),
        "the scheduler's reason",
        |j| j.message.contains("Insufficient nvidia.com/gpu"),
    )
    .await;
    assert_eq!(state(&j), pb::JobState::Pending, "{j:?}");
    assert!(j.message.contains("Unschedulable"), "{}", j.message);
    let shown = cli(&gw, &["get", &id]).await;
    assert!(shown.contains("Insufficient nvidia.com/gpu"), "{shown}");
    // Still waiting: a job that cannot be placed is not failed.
    let mut t = gw.training().await;
    assert_eq!(state(&get(&mut t, &id).await), pb::JobState::Pending);
    t.cancel(pb::CancelJobRequest { id: id.clone() })
        .await
        .unwrap();
    let done = wait_job(&mut t, &id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Cancelled, "{done:?}");
    // Its pod never started: the log is empty, and complete rather than waited on forever.
    let lines = tokio::time::timeout(Duration::from_secs(60), logs(&mut t, &id, true))
        .await
        .expect("the log of a job cancelled before it started did not end");
    assert!(lines.is_empty(), "{lines:?}");
}

#[tokio::test]
async fn a_failing_pod_fails_the_job_with_a_reason() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut t = gw.training().await;
    let mut s = spec(&["python", "train.py"]);
    s.name = "fails".into();
    let job = submit(&mut t, "kubeflow-fail", s).await.unwrap();
    let done = wait_job(&mut t, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Failed, "{done:?}");
    // The operator's verdict, and what the failed container said.
    assert!(
        done.message.contains("PyTorchJobFailed"),
        "{}",
        done.message
    );
    assert!(
        done.message.contains("exit code 1")
            && done
                .message
                .contains("fake failure requested by mlgw.dev/fake-outcome"),
        "{}",
        done.message
    );
    let ptj = objects(c, &ptj_resource(), &job.id).await;
    assert_eq!(ptj.len(), 1);
    let annotations = ptj[0].data["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]
        ["annotations"]
        .clone();
    assert_eq!(annotations["mlgw.dev/fake-outcome"], "fail");
}

#[tokio::test]
async fn cancel_removes_the_pods_and_ends_cancelled() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut t = gw.training().await;
    let job = submit(&mut t, "kubeflow-long", spec(&["python", "train.py"]))
        .await
        .unwrap();
    wait_record(
        &gw,
        &job.id,
        Duration::from_secs(60),
        "the job running",
        |j| state(j) == pb::JobState::Running,
    )
    .await;
    assert_eq!(pods(c, &job.id).await.len(), 1);
    t.cancel(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let done = wait_job(&mut t, &job.id, Duration::from_secs(90)).await;
    assert_eq!(state(&done), pb::JobState::Cancelled, "{done:?}");
    // Foreground deletion: the object went only once its pods had.
    assert!(pods(c, &job.id).await.is_empty());
    assert!(objects(c, &ptj_resource(), &job.id).await.is_empty());
}

#[tokio::test]
async fn a_gateway_restarted_mid_job_adopts_it_and_follows_it_to_the_end() {
    let c = cluster();
    let (_d, mut gw) = gateway(c).await;
    let mut t = gw.training().await;
    let job = submit(&mut t, "kubeflow-restart", spec(&["python", "train.py"]))
        .await
        .unwrap();
    wait_record(
        &gw,
        &job.id,
        Duration::from_secs(60),
        "the job running",
        |j| state(j) == pb::JobState::Running,
    )
    .await;
    gw.restart().await;
    let mut t = gw.training().await;
    let done = wait_job(&mut t, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    // The same object throughout, not a second job.
    assert_eq!(objects(c, &ptj_resource(), &job.id).await.len(), 1);
    assert_eq!(pods(c, &job.id).await.len(), 1);
    let texts: Vec<String> = log_lines(&gw, &job.id)
        .await
        .into_iter()
        .map(|l| l.1)
        .collect();
    assert_eq!(texts, fake_lines());
}

/// The crash between "object created" and "record updated", caused for real: the target's
/// API server is unreachable at submit (the job waits, pending, under its id), the object the
/// lost submit would have made is created meanwhile, and the restarted gateway's retry finds
/// it. One carrying the job's id is adopted, not applied again; one of another job is a
/// conflict, never taken over.
#[tokio::test]
async fn a_retried_submit_adopts_its_own_object_and_refuses_anothers() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let unreachable = dir.path().join("unreachable.kubeconfig");
    let kc = std::fs::read_to_string(&c.gateway).unwrap();
    let server = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    // Port 1 on loopback: nothing listens, connections are refused at once.
    std::fs::write(&unreachable, kc.replace(&server, "https://127.0.0.1:1")).unwrap();
    let config = |kubeconfig: &Path| {
        format!(
            "default_target = \"kubeflow\"\n{}",
            target("kubeflow", kubeconfig, &runs_for("2s"), "")
        )
    };
    let data = dir.path().join("data");
    let mut gw = Gateway::start(BIN, &data, Some(&config(&unreachable))).await;
    let mut t = gw.training().await;
    let mine = submit(&mut t, "kubeflow", spec(&["python", "train.py"]))
        .await
        .expect("an unreachable target leaves the job pending");
    let other = submit(&mut t, "kubeflow", spec(&["python", "train.py"]))
        .await
        .unwrap();
    for j in [&mine, &other] {
        assert_eq!(state(j), pb::JobState::Pending, "{j:?}");
        assert!(j.message.contains("waiting for the target"), "{j:?}");
    }

    let api: Api<DynamicObject> = Api::namespaced_with(client(&c.admin).await, NS, &ptj_resource());
    let create = |name: String, owner: &str| {
        let api = api.clone();
        let obj = json!({
            "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": name, "annotations": {"mlgw.dev/job-id": owner},
                         "labels": {"mlgw.dev/job-id": owner}},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "Never",
                "template": {"metadata": {"annotations": {"mlgw.dev/fake-duration": "2s"}},
                    "spec": {"containers": [{"name": "pytorch", "image": "busybox"}]}}}}}
        });
        async move {
            let obj: DynamicObject = serde_json::from_value(obj).unwrap();
            api.create(&Default::default(), &obj).await.unwrap();
        }
    };
    create(mlgw::domain::backend_name(&mine.id), &mine.id).await;
    create(mlgw::domain::backend_name(&other.id), "j-someone-else").await;

    std::fs::write(data.with_extension("toml"), config(&c.gateway)).unwrap();
    gw.restart().await;
    let mut t = gw.training().await;
    let done = wait_job(&mut t, &mine.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    // Adopted as it was: the gateway never applied it (no field manager of its own on it).
    let adopted = api
        .get(&mlgw::domain::backend_name(&mine.id))
        .await
        .unwrap();
    let managers: Vec<String> = adopted
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(!managers.iter().any(|m| m == "mlgw"), "{managers:?}");
    let refused = wait_job(&mut t, &other.id, Duration::from_secs(60)).await;
    assert_eq!(state(&refused), pb::JobState::Failed, "{refused:?}");
    assert!(
        refused.message.contains("belongs to job j-someone-else"),
        "{}",
        refused.message
    );
    let theirs = api
        .get(&mlgw::domain::backend_name(&other.id))
        .await
        .unwrap();
    assert_eq!(
        theirs.metadata.annotations.unwrap()["mlgw.dev/job-id"],
        "j-someone-else"
    );
}

#[tokio::test]
async fn a_job_kind_target_runs_a_batch_job() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let id = cli(
        &gw,
        &[
            "submit",
            "--target",
            "kubeflow-job",
            "--cpu",
            "1",
            "--",
            "python",
            "train.py",
        ],
    )
    .await;
    let mut t = gw.training().await;
    let done = wait_job(&mut t, &id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    let jobs = objects(c, &batch_resource(), &id).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].data["spec"]["template"]["spec"]["containers"][0]["name"],
        "train"
    );
    let lines = log_lines(&gw, &id).await;
    let texts: Vec<String> = lines.iter().map(|l| l.1.clone()).collect();
    assert_eq!(texts, fake_lines());
    // Nodes a batch Job cannot give are refused before anything is created.
    let mut s = spec(&["python", "train.py"]);
    s.resources = Some(pb::Resources {
        nodes: 2,
        ..Default::default()
    });
    let err = submit(&mut t, "kubeflow-job", s).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert_eq!(
        err.metadata().get("mlgw-field").unwrap(),
        "spec.resources.nodes"
    );
}

/// The Trainer v2 controller (and the JobSet controller it needs) is not part of the test
/// cluster, so the API server validates and stores the TrainJob, and the status the
/// controller would write is written by this test (named so) to check the mapping.
#[tokio::test]
async fn a_trainjob_is_stored_and_its_status_written_by_the_test_is_mapped() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut t = gw.training().await;
    let mut s = spec(&["python", "train.py"]);
    s.resources = Some(pb::Resources {
        nodes: 2,
        gpus: 1,
        ..Default::default()
    });
    let job = submit(&mut t, "kubeflow-trainjob", s).await.unwrap();
    let stored = objects(c, &trainjob_resource(), &job.id).await;
    assert_eq!(stored.len(), 1);
    let tj = &stored[0];
    assert_eq!(tj.data["spec"]["runtimeRef"]["name"], "torch-distributed");
    assert_eq!(tj.data["spec"]["trainer"]["numNodes"], 2);
    assert_eq!(
        tj.data["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    let name = tj.metadata.name.clone().unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client(&c.admin).await, NS, &trainjob_resource());
    let write = |conds: Value| {
        let api = api.clone();
        let name = name.clone();
        async move {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conds}})),
            )
            .await
            .unwrap();
        }
    };
    let cond = |t: &str, reason: &str, message: &str| {
        json!({"type": t, "status": "True", "reason": reason, "message": message,
               "lastTransitionTime": "2026-12-01T10:00:00Z"})
    };
    write(json!([cond(
        "Suspended",
        "Suspended",
        "TrainJob is suspended"
    )]))
    .await;
    let j = wait_record(
        &gw,
        &job.id,
        Duration::from_secs(30),
        "waiting for quota",
        |j| j.message == "waiting for quota",
    )
    .await;
    assert_eq!(state(&j), pb::JobState::Pending);
    write(json!([cond(
        "Complete",
        "JobsCompleted",
        "TrainJob is completed"
    )]))
    .await;
    let done = wait_job(&mut t, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
}

#[tokio::test]
async fn rbac_and_the_crd_schema_come_back_as_clear_status_codes() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut t = gw.training().await;
    let err = submit(&mut t, "kubeflow-readonly", spec(&["python", "train.py"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("forbidden"), "{}", err.message());

    let err = submit(&mut t, "kubeflow-badschema", spec(&["python", "train.py"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let field = err.metadata().get("mlgw-field").unwrap().to_str().unwrap();
    assert!(field.ends_with("priorityClassName"), "{field}");
    // Nothing was created for either.
    let all = t
        .list(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    for j in &all {
        assert!(objects(c, &ptj_resource(), &j.id).await.is_empty());
    }
}

#[tokio::test]
async fn the_target_advertises_training_and_serving_is_unimplemented() {
    let c = cluster();
    let (_d, gw) = gateway(c).await;
    let mut targets = TargetServiceClient::new(gw.channel().await);
    let t = targets
        .get(pb::GetTargetRequest {
            name: "kubeflow".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.plugin, "kubeflow");
    assert_eq!(
        t.features,
        [
            pb::Feature::Training as i32,
            pb::Feature::TrainingLogs as i32,
            pb::Feature::TrainingCancel as i32
        ]
    );
    let err = gw
        .serving()
        .await
        .deploy(pb::DeployRequest {
            target: "kubeflow".into(),
            spec: Some(pb::EndpointSpec {
                name: "iris".into(),
                model_uri: "s3://b/model/".into(),
                model_format: "sklearn".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{}", err.message());
}
