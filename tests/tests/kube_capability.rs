//! The `kube` host capability against a real control plane (tests/cluster/up): real schema
//! validation, real RBAC, the Training Operator reconciling PyTorchJobs into pods and KWOK
//! driving those pods to their end.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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
        let events = k.watch(r, &rv, 10, None).await.expect("watch");
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

    // The operator made one pod per replica; the GPU limit put them on the GPU node. The job
    // succeeds with its master, so a worker's own end may be recorded a moment after.
    let selector = format!("training.kubeflow.org/job-name={name}");
    let pods = wait_for(Duration::from_secs(60), "both pods succeeded", || {
        let (k, selector) = (&k, &selector);
        async move {
            let pods: Value =
                serde_json::from_str(&k.list("v1", "Pod", "", selector, 0, "").await.ok()?)
                    .unwrap();
            let pods = pods["items"].as_array()?.clone();
            pods.iter()
                .all(|p| p["status"]["phase"] == "Succeeded")
                .then_some(pods)
        }
    })
    .await;
    assert_eq!(pods.len(), 2, "{pods:#?}");
    for p in &pods {
        assert_eq!(p["spec"]["nodeName"], "kwok-gpu-0");
    }

    // Pod logs come from the node (KWOK plays the kubelet) through the API server.
    let master = format!("{name}-master-0");
    let request = |tail_lines| LogRequest {
        namespace: String::new(),
        pod: master.clone(),
        container: Some("pytorch".into()),
        since_seconds: None,
        since_time: None,
        tail_lines,
        limit_bytes: None,
        timestamps: false,
        follow_ms: 0,
    };
    let all = k.pod_logs(&request(None), None).await.expect("pod logs");
    assert_eq!(
        all.lines().collect::<Vec<_>>(),
        (1..=3)
            .map(|i| format!("fake training log line {i}"))
            .collect::<Vec<_>>()
    );
    let last = k.pod_logs(&request(Some(1)), None).await.expect("tail");
    assert_eq!(last.trim_end(), "fake training log line 3");

    // Foreground deletion takes the pods with it.
    k.delete(&r, Propagation::Foreground).await.expect("delete");
    let admin_pods: Api<Pod> = Api::namespaced(client(&c.admin).await, TEAM);
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

/// A limit small enough that a handful of ConfigMaps pass it.
const SMALL_LIMIT: usize = 16 << 10;

/// ConfigMaps granted, through the admin's credentials: the gateway's Role has no ConfigMaps,
/// and these tests are about how much of a response is read, not about RBAC.
async fn configmap_capability(admin: &Path) -> KubeCapability {
    let mut g = grant(admin);
    g.kinds.push("v1/ConfigMap".into());
    KubeCapability::connect("k8s", &g)
        .await
        .expect("connect")
        .with_max_document(SMALL_LIMIT)
}

/// Test ConfigMaps in team-a, labelled with one run so a reused cluster's others never count.
struct ConfigMaps {
    api: Api<ConfigMap>,
    run: String,
}

impl ConfigMaps {
    async fn new(admin: &Path, prefix: &str) -> Self {
        Self {
            api: Api::namespaced(client(admin).await, TEAM),
            run: unique(prefix),
        }
    }

    fn selector(&self) -> String {
        format!("mlgw.dev/run={}", self.run)
    }

    async fn create(&self, name: &str, bytes: usize) -> ConfigMap {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"mlgw.dev/run": self.run}},
            "data": {"payload": "x".repeat(bytes)},
        }))
        .unwrap();
        self.api
            .create(&PostParams::default(), &cm)
            .await
            .expect("create ConfigMap")
    }

    async fn remove(self) {
        let lp = ListParams::default().labels(&self.selector());
        self.api
            .delete_collection(&DeleteParams::default(), &lp)
            .await
            .expect("delete test ConfigMaps");
    }
}

fn configmap_ref(name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: String::new(),
        name: name.into(),
    }
}

#[tokio::test]
async fn a_list_past_the_limit_is_refused_and_pages_return_every_object_once() {
    let c = cluster();
    let cms = ConfigMaps::new(&c.admin, "page").await;
    let mut want = Vec::new();
    for i in 0..12 {
        let name = format!("{}-{i:02}", cms.run);
        cms.create(&name, 2 << 10).await;
        want.push(name);
    }
    let k = configmap_capability(&c.admin).await;
    let selector = cms.selector();

    // All twelve (about 28 KiB) in one page pass the limit: refused, not truncated.
    match k.list("v1", "ConfigMap", "", &selector, 0, "").await {
        Err(BackendError::InvalidSpec(f)) => {
            assert_eq!(f.field, "limit");
            assert!(
                f.reason.contains(&format!("{SMALL_LIMIT}-byte limit")),
                "{}",
                f.reason
            );
        }
        other => panic!("expected invalid-spec, got {other:?}"),
    }

    // Pages of five fit; following metadata.continue reaches each object exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page: Value = serde_json::from_str(
            &k.list("v1", "ConfigMap", "", &selector, 5, &token)
                .await
                .expect("a page of five"),
        )
        .unwrap();
        pages += 1;
        assert_eq!(page["kind"], "ConfigMapList");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|cm| cm["metadata"]["name"].as_str().unwrap().to_string()),
        );
        token = page["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if token.is_empty() {
            break;
        }
        assert!(pages < 5, "the continue tokens never ran out: {seen:?}");
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, want);

    // Arguments the server cannot read come back naming the argument.
    for (selector, token, field) in [
        (selector.as_str(), "not-a-token", "continue-token"),
        ("a===b", "", "label-selector"),
    ] {
        match k.list("v1", "ConfigMap", "", selector, 5, token).await {
            Err(BackendError::InvalidSpec(f)) => assert_eq!(f.field, field, "{}", f.reason),
            other => panic!("expected invalid-spec on {field}, got {other:?}"),
        }
    }

    cms.remove().await;
}

#[tokio::test]
async fn an_object_past_the_limit_is_refused_and_one_within_it_comes_as_the_server_sent_it() {
    let c = cluster();
    let cms = ConfigMaps::new(&c.admin, "big").await;
    let big = format!("{}-big", cms.run);
    let small = format!("{}-small", cms.run);
    cms.create(&big, 20 << 10).await;
    cms.create(&small, 1 << 10).await;
    let k = configmap_capability(&c.admin).await;
    let over_limit = |r: Result<_, BackendError>, what: &str| match r {
        Err(BackendError::Internal(m)) => {
            assert!(
                m.contains(&format!("{SMALL_LIMIT}-byte limit")),
                "{what}: {m}"
            )
        }
        other => panic!("{what}: expected internal, got {other:?}"),
    };

    over_limit(k.get(&configmap_ref(&big)).await.map(drop), "get");
    // Its one ADDED event can never fit in a watch answer either.
    over_limit(
        k.watch(&configmap_ref(&big), "", 5, None).await.map(drop),
        "watch",
    );

    // Byte for byte what the API server answers, not a re-serialisation of it.
    let got = k.get(&configmap_ref(&small)).await.expect("get");
    let raw = client(&c.admin)
        .await
        .request_text(
            kube::core::Request::new(format!("/api/v1/namespaces/{TEAM}/configmaps"))
                .get(&small, &Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(got, raw);

    cms.remove().await;
}

#[tokio::test]
async fn a_watch_returns_the_events_that_fit_and_resumes_after_them() {
    let c = cluster();
    let cms = ConfigMaps::new(&c.admin, "watched").await;
    let name = format!("{}-cm", cms.run);
    let created = cms.create(&name, 5 << 10).await;
    // Six changes, each event about 5 KiB: more than fit in one answer of 16 KiB.
    let mut want = Vec::new();
    for i in 0..6 {
        let patch = json!({"data": {"n": i.to_string()}});
        let changed = cms
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        want.push(changed.metadata.resource_version.unwrap());
    }
    let k = configmap_capability(&c.admin).await;
    let r = configmap_ref(&name);

    let mut rv = created.metadata.resource_version.unwrap();
    let mut seen = Vec::new();
    let mut answers = 0;
    while seen.len() < want.len() {
        answers += 1;
        assert!(answers <= want.len(), "watch never caught up: {seen:?}");
        let events = k.watch(&r, &rv, 5, None).await.expect("watch");
        assert!(!events.is_empty(), "the changes were already there");
        let bytes: usize = events.iter().map(|e| e.object.len()).sum();
        assert!(
            bytes <= SMALL_LIMIT,
            "{} events of {bytes} bytes",
            events.len()
        );
        for ev in events {
            assert_eq!(ev.event_type, "MODIFIED");
            let obj: Value = serde_json::from_str(&ev.object).unwrap();
            rv = obj["metadata"]["resourceVersion"].as_str().unwrap().into();
            seen.push(rv.clone());
        }
    }
    assert!(answers > 1, "all six changes fit in one answer");
    assert_eq!(seen, want);

    cms.remove().await;
}

#[tokio::test]
async fn a_watch_gives_back_what_it_has_before_its_calls_deadline() {
    let c = cluster();
    let cms = ConfigMaps::new(&c.admin, "deadline").await;
    let name = format!("{}-cm", cms.run);
    let created = cms.create(&name, 16).await;
    let k = configmap_capability(&c.admin).await;
    let r = configmap_ref(&name);
    // Asked to wait 30 s inside a call that ends in 2 s: it answers (with nothing new) before
    // the call's end instead of running into it and losing everything.
    let started = tokio::time::Instant::now();
    let until = started + Duration::from_secs(2);
    let events = k
        .watch(
            &r,
            created.metadata.resource_version.as_deref().unwrap(),
            30,
            Some(until),
        )
        .await
        .expect("the watch answers");
    assert!(events.is_empty(), "{events:?}");
    assert!(
        tokio::time::Instant::now() <= until + Duration::from_millis(500),
        "it waited past the call's deadline"
    );
    cms.remove().await;
}
