//! KServe's controller in the test control plane (tests/cluster/up): an InferenceService of
//! the shape the kserve target applies becomes, through KServe's own reconciler and webhooks,
//! a Deployment, a Service and the InferenceService's status. KWOK runs the pods, so they are
//! Running and Ready without any container behind them.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use mlgw_tests::cluster::{client, cluster, unique};
use mlgw_tests::wait_for;
use serde_json::{Value, json};

const NS: &str = "team-a";

fn isvc_resource() -> ApiResource {
    ApiResource {
        group: "serving.kserve.io".into(),
        version: "v1beta1".into(),
        api_version: "serving.kserve.io/v1beta1".into(),
        kind: "InferenceService".into(),
        plural: "inferenceservices".into(),
    }
}

fn runtime_resource() -> ApiResource {
    ApiResource {
        group: "serving.kserve.io".into(),
        version: "v1alpha1".into(),
        api_version: "serving.kserve.io/v1alpha1".into(),
        kind: "ClusterServingRuntime".into(),
        plural: "clusterservingruntimes".into(),
    }
}

fn resources() -> Value {
    json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}})
}

fn inference_service(name: &str, min: u32, max: u32) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"},
        },
        "spec": {"predictor": {
            "minReplicas": min,
            "maxReplicas": max,
            "model": {
                "modelFormat": {"name": "sklearn"},
                "protocolVersion": "v2",
                "storageUri": "s3://bucket/model",
                "resources": resources(),
            },
        }},
    }))
    .unwrap()
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

#[tokio::test]
async fn an_inference_service_becomes_a_deployment_a_service_and_a_status() {
    let c = cluster();
    let admin = client(&c.admin).await;
    let isvcs: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &isvc_resource());
    let name = unique("isvc");
    isvcs
        .create(&PostParams::default(), &inference_service(&name, 2, 3))
        .await
        .expect("creating the InferenceService");

    let runtime = Api::<DynamicObject>::all_with(admin.clone(), &runtime_resource())
        .get("kserve-mlserver")
        .await
        .expect("the MLServer ClusterServingRuntime");
    let image = runtime.data["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image.starts_with("docker.io/seldonio/mlserver:"), "{image}");

    // Replicas come from KServe's HorizontalPodAutoscaler (minReplicas), which the
    // controller-manager's HPA controller applies to the Deployment.
    let predictor = format!("{name}-predictor");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let deployment = wait_for(
        Duration::from_secs(120),
        "the predictor Deployment with 2 replicas",
        || async {
            deployments
                .get_opt(&predictor)
                .await
                .unwrap()
                .filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(2))
        },
    )
    .await;
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("InferenceService", name.as_str(), Some(true))
    );
    let pod_spec = deployment.spec.unwrap().template.spec.unwrap();
    let server = pod_spec
        .containers
        .iter()
        .find(|c| c.name == "kserve-container")
        .expect("the model server container");
    assert_eq!(server.image.as_deref(), Some(image.as_str()));
    assert_eq!(
        serde_json::to_value(&server.resources).unwrap(),
        resources()
    );
    let env = server.env.as_deref().unwrap_or_default();
    assert!(
        env.iter().any(|e| e.name == "MLSERVER_MODEL_IMPLEMENTATION"
            && e.value.as_deref() == Some("mlserver_sklearn.SKLearnModel")),
        "{env:?}"
    );

    let service = Api::<Service>::namespaced(admin.clone(), NS)
        .get(&predictor)
        .await
        .expect("the predictor Service");
    let selector = service.spec.unwrap().selector.unwrap();
    assert_eq!(
        selector.get("app").map(String::as_str),
        Some(format!("isvc.{predictor}").as_str())
    );

    // The pods pass KServe's pod webhook, which adds the storage initializer for storageUri.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let selector = format!("serving.kserve.io/inferenceservice={name}");
    let running = wait_for(Duration::from_secs(60), "2 predictor pods", || async {
        let l = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        (l.items.len() == 2).then_some(l.items)
    })
    .await;
    for pod in &running {
        let init = pod
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .as_deref()
            .unwrap_or_default();
        let storage = init
            .iter()
            .find(|c| c.name == "storage-initializer")
            .unwrap_or_else(|| panic!("no storage initializer in {:?}", pod.metadata.name));
        assert_eq!(
            storage
                .args
                .as_deref()
                .unwrap_or_default()
                .first()
                .map(String::as_str),
            Some("s3://bucket/model")
        );
    }

    // What KServe last said, so a timeout shows which condition held it back.
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let ready = tokio::time::timeout(
        Duration::from_secs(300),
        wait_for(
            Duration::from_secs(3600),
            "the InferenceService to be Ready",
            || async {
                let obj = serde_json::to_value(isvcs.get(&name).await.unwrap()).unwrap();
                *last.lock().unwrap() = obj["status"].clone();
                (condition(&obj, "Ready")?["status"] == "True").then_some(obj)
            },
        ),
    )
    .await
    .ok();
    let Some(ready) = ready else {
        let status = last.lock().unwrap().clone();
        let deployment = deployments.get_opt(&predictor).await.unwrap();
        let pods = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        let phases: Vec<_> = pods
            .items
            .iter()
            .map(|p| {
                let s = p.status.clone().unwrap_or_default();
                (
                    p.metadata.name.clone(),
                    p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    s.phase,
                    s.conditions,
                )
            })
            .collect();
        let log = c.admin.parent().unwrap().join("logs/kserve-controller.log");
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<_> = log.lines().rev().take(40).collect();
        panic!(
            "the InferenceService was not Ready after 300 s; its status: {status:#}\n\
             the predictor Deployment's status: {:#?}\npods: {phases:#?}\n\
             the last lines of KServe's controller log:\n{}",
            deployment.and_then(|d| d.status),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    eprintln!(
        "InferenceService status: {}",
        serde_json::to_string_pretty(&ready["status"]).unwrap()
    );
    for kind in ["PredictorReady", "IngressReady"] {
        assert_eq!(condition(&ready, kind).unwrap()["status"], "True", "{kind}");
    }
    assert_eq!(
        ready["status"]["url"],
        format!("http://{name}-{NS}.example.com")
    );
    assert_eq!(
        ready["status"]["address"]["url"],
        format!("http://{predictor}.{NS}.svc.cluster.local")
    );

    // Deleting the InferenceService takes what KServe made with it (owner references).
    isvcs
        .delete(&name, &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(60),
        "the Deployment and Service to go",
        || async {
            let d = deployments.get_opt(&predictor).await.unwrap();
            let s = Api::<Service>::namespaced(admin.clone(), NS)
                .get_opt(&predictor)
                .await
                .unwrap();
            (d.is_none() && s.is_none()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn kserve_validation_refuses_a_bad_inference_service_before_it_is_stored() {
    let c = cluster();
    let admin = client(&c.admin).await;
    let isvcs: Api<DynamicObject> = Api::namespaced_with(admin, NS, &isvc_resource());
    let name = unique("isvc-bad");
    let err = isvcs
        .create(&PostParams::default(), &inference_service(&name, 3, 2))
        .await
        .expect_err("minReplicas above maxReplicas must be refused");
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    eprintln!("KServe's webhook refused it: {status:?}");
    assert!(
        status.message.contains("admission webhook")
            && status
                .message
                .contains("cannot be greater than MaxReplicas"),
        "{status:?}"
    );
    assert!(isvcs.get_opt(&name).await.unwrap().is_none());
    // However the webhook codes it, the kube capability hands the refusal to plugins as bad
    // input (INVALID_ARGUMENT at the gateway), not as a missing right.
    match mlgw::capabilities::kube::map_error(kube::Error::Api(status)) {
        mlgw::contract::types::BackendError::InvalidSpec(f) => {
            assert!(
                f.reason.contains("cannot be greater than MaxReplicas"),
                "{f:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_gateway_manages_inference_services_and_reads_deployments_the_read_only_user_cannot_write()
 {
    let c = cluster();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let gateway = client(&c.gateway).await;
    Api::<DynamicObject>::namespaced_with(gateway.clone(), NS, &isvc_resource())
        .create(&dry_run, &inference_service(&unique("isvc-gw"), 1, 1))
        .await
        .expect("the gateway creates InferenceServices in team-a");
    Api::<Deployment>::namespaced(gateway.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("the gateway reads Deployments in team-a");
    let elsewhere = Api::<DynamicObject>::namespaced_with(gateway, "team-b", &isvc_resource())
        .list(&ListParams::default())
        .await
        .expect_err("nothing is granted in team-b");
    assert!(
        matches!(elsewhere, kube::Error::Api(ref s) if s.code == 403),
        "{elsewhere:?}"
    );

    let readonly =
        Api::<DynamicObject>::namespaced_with(client(&c.readonly).await, NS, &isvc_resource());
    readonly
        .list(&ListParams::default())
        .await
        .expect("the read-only user lists InferenceServices");
    let err = readonly
        .create(&dry_run, &inference_service(&unique("isvc-ro"), 1, 1))
        .await
        .expect_err("the read-only user cannot create");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err:?}"
    );
}
