//! The `kube` host capability against a real control plane (tests/cluster/up): real schema
//! validation, real RBAC, the Training Operator reconciling PyTorchJobs into pods and KWOK
//! driving those pods to their end.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use mlgw::capabilities::kube::KubeCapability;
use mlgw::config::KubeGrant;
use mlgw::contract::mlgw::backend::kube::{LogRequest, ObjectRef, Propagation};
use mlgw::contract::types::BackendError;
use mlgw_tests::cluster::{client, cluster, unique};
use mlgw_tests::wait_for;
use serde_json::{Value, json};

const TEAM: &str = "team-a";

fn grant(kubeconfig: &Path) -> KubeGrant {
    KubeGrant {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        context: None,
        namespaces: vec![TEAM.into()],
        kinds: vec![
            "kubeflow.org/v1/PyTorchJob".into(),
            "batch/v1/Job".into(),
            "v1/Pod".into(),
        ],
        cluster_kinds: vec![],
        field_manager: "mlgw-test".into(),
    }
}

async fn capability(kubeconfig: &Path) -> KubeCapability {
    KubeCapability::connect("k8s", &grant(kubeconfig))
        .await
        .expect("connect")
}

fn pod_template(outcome: Option<&str>, gpus: u32) -> Value {
    let mut annotations = json!({"mlgw.dev/fake-duration": "1s"});
    if let Some(o) = outcome {
        annotations["mlgw.dev/fake-outcome"] = json!(o);
    }
    let mut container = json!({
        "name": "pytorch",
        "image": "docker.io/pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        "command": ["python", "-c", "print('training')"],
    });
    if gpus > 0 {
        container["resources"] = json!({"limits": {"nvidia.com/gpu": gpus.to_string()}});
    }
    json!({"metadata": {"annotations": annotations}, "spec": {"containers": [container]}})
}

fn pytorchjob(name: &str, gpus: u32) -> Value {
    let replica = |n: u32| json!({"replicas": n, "restartPolicy": "Never", "template": pod_template(None, gpus)});
    json!({
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(1)}}
    })
}

fn batch_job(name: &str, outcome: Option<&str>) -> Value {
    let mut template = pod_template(outcome, 0);
    template["spec"]["restartPolicy"] = json!("Never");
    template["spec"]["containers"][0]["name"] = json!("main");
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": template}
    })
}

fn object_ref(doc: &Value) -> ObjectRef {
    ObjectRef {
        api_version: doc["apiVersion"].as_str().unwrap().into(),
        kind: doc["kind"].as_str().unwrap().into(),
        namespace: doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .into(),
        name: doc["metadata"]["name"].as_str().unwrap().into(),
    }
}

fn true_condition(obj: &Value, kinds: &[&str]) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["status"] == "True" && kinds.contains(&c["type"].as_str().unwrap_or("")))
        .map(|c| c["type"].as_str().unwrap().to_string())
}

/// Follows the object through the capability's watch until one of `conditions` is True.
async fn watch_until(k: &KubeCapability, r: &ObjectRef, conditions: &[&str]) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut rv = String::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} {} never reached {conditions:?}",
            r.kind,
            r.name
        );
        let events = k.watch(r, &rv, 10).await.expect("watch");
        for ev in events {
            let obj: Value = serde_json::from_str(&ev.object).unwrap();
            if let Some(v) = obj["metadata"]["resourceVersion"].as_str() {
                rv = v.to_string();
            }
            if let Some(c) = true_condition(&obj, conditions) {
                return (c, obj);
            }
        }
    }
}

#[tokio::test]
async fn a_pytorchjob_runs_through_the_operator_to_success() {
    let c = cluster();
    let k = capability(&c.gateway).await;
    let name = unique("ptj");

    let stored: Value = serde_json::from_str(
        &k.apply(&pytorchjob(&name, 1).to_string())
            .await
            .expect("apply"),
    )
    .unwrap();
    // The default namespace comes from the grant, and the field manager is the gateway's.
    assert_eq!(stored["metadata"]["namespace"], TEAM);
    let managers: Vec<&str> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"mlgw-test"), "{managers:?}");

    let r = object_ref(&stored);
    let (condition, _) = watch_until(&k, &r, &["Succeeded", "Failed"]).await;
    assert_eq!(condition, "Succeeded");

    // The operator made one pod per replica; the GPU limit put them on the GPU node.
    let pods: Value = serde_json::from_str(
        &k.list(
            "v1",
            "Pod",
            "",
            &format!("training.kubeflow.org/job-name={name}"),
            0,
            "",
        )
        .await
        .expect("list pods by label"),
    )
    .unwrap();
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 2, "{pods:#?}");
    for p in pods {
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert_eq!(p["spec"]["nodeName"], "kwok-gpu-0");
    }

    // Pod logs come from the node (KWOK plays the kubelet) through the API server.
    let master = format!("{name}-master-0");
    let request = |tail_lines| LogRequest {
        namespace: String::new(),
        pod: master.clone(),
        container: Some("pytorch".into()),
        since_seconds: None,
        tail_lines,
        limit_bytes: None,
        timestamps: false,
        follow_ms: 0,
    };
    let all = k.pod_logs(&request(None)).await.expect("pod logs");
    assert_eq!(
        all.lines().collect::<Vec<_>>(),
        (1..=3)
            .map(|i| format!("fake training log line {i}"))
            .collect::<Vec<_>>()
    );
    let last = k.pod_logs(&request(Some(1))).await.expect("tail");
    assert_eq!(last.trim_end(), "fake training log line 3");

    // Foreground deletion takes the pods with it.
    k.delete(&r, Propagation::Foreground).await.expect("delete");
    let admin_pods: Api<Pod> = Api::namespaced(client(&c.admin).await, TEAM);
    let selector = format!("training.kubeflow.org/job-name={name}");
    wait_for(Duration::from_secs(60), "the job and its pods gone", || {
        let k = &k;
        let r = &r;
        let admin_pods = admin_pods.clone();
        let selector = selector.clone();
        async move {
            let gone = matches!(k.get(r).await, Err(BackendError::NotFound(_)));
            let pods = admin_pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            (gone && pods.items.is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn batch_jobs_succeed_or_fail_as_asked() {
    let c = cluster();
    let k = capability(&c.gateway).await;
    for (outcome, want) in [(None, "Complete"), (Some("fail"), "Failed")] {
        let name = unique("job");
        let stored: Value = serde_json::from_str(
            &k.apply(&batch_job(&name, outcome).to_string())
                .await
                .expect("apply"),
        )
        .unwrap();
        let (condition, obj) = watch_until(&k, &object_ref(&stored), &["Complete", "Failed"]).await;
        assert_eq!(condition, want, "{obj:#}");
    }
}

#[tokio::test]
async fn schema_validation_errors_carry_the_field_path() {
    let c = cluster();
    let k = capability(&c.gateway).await;
    let master = "spec.pytorchReplicaSpecs.Master";
    type Breakage = fn(&mut Value);
    let cases: [(&str, Breakage, String); 4] = [
        // Wrong type: server-side apply rejects it while building the typed object.
        (
            "wrong type",
            |d| d["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = json!("one"),
            format!("{master}.replicas"),
        ),
        // A list keyed by name, with the key missing.
        (
            "missing key",
            |d| {
                d["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("name");
            },
            format!("{master}.template.spec.containers"),
        ),
        // A misspelt field is refused (strict field validation), not silently dropped.
        (
            "unknown field",
            |d| d["spec"]["runPolicyy"] = json!({}),
            "spec.runPolicyy".to_string(),
        ),
        // Object-level validation: a 422 with structured causes.
        (
            "invalid name",
            |d| d["metadata"]["name"] = json!("Not_A_DNS_Name"),
            "metadata.name".to_string(),
        ),
    ];
    for (what, break_it, want) in cases {
        let mut doc = pytorchjob(&unique("bad"), 0);
        break_it(&mut doc);
        match k.apply(&doc.to_string()).await {
            Err(BackendError::InvalidSpec(f)) => assert_eq!(f.field, want, "{what}: {}", f.reason),
            other => panic!("{what}: expected invalid-spec, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn writes_outside_the_grant_are_denied_before_they_are_sent() {
    let c = cluster();
    // Even with the admin's credentials, which the API server would accept, the grant's
    // scope stops the request inside the gateway.
    let k = capability(&c.admin).await;
    let name = unique("elsewhere");
    let mut doc = batch_job(&name, None);
    doc["metadata"]["namespace"] = json!("team-b");
    match k.apply(&doc.to_string()).await {
        Err(BackendError::Denied(d)) => {
            assert_eq!(d.capability, "kube");
            assert!(d.reason.contains("namespace team-b"), "{}", d.reason);
        }
        other => panic!("expected denied, got {other:?}"),
    }
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}});
    assert!(matches!(
        k.apply(&secret.to_string()).await,
        Err(BackendError::Denied(_))
    ));
    let jobs: Api<k8s_openapi::api::batch::v1::Job> =
        Api::namespaced(client(&c.admin).await, "team-b");
    assert!(jobs.get_opt(&name).await.unwrap().is_none());
}

#[tokio::test]
async fn rbac_without_create_is_permission_denied() {
    let c = cluster();
    let k = capability(&c.readonly).await;
    let name = unique("ro");
    match k.apply(&pytorchjob(&name, 0).to_string()).await {
        Err(BackendError::Denied(d)) => {
            assert!(d.reason.contains("forbidden"), "{}", d.reason);
            assert!(d.reason.contains("mlgw-readonly"), "{}", d.reason);
        }
        other => panic!("expected denied, got {other:?}"),
    }
    // Reading is within its Role.
    let missing = ObjectRef {
        api_version: "kubeflow.org/v1".into(),
        kind: "PyTorchJob".into(),
        namespace: TEAM.into(),
        name,
    };
    assert!(matches!(
        k.get(&missing).await,
        Err(BackendError::NotFound(_))
    ));
}
