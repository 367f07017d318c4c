//! Spec → InferenceService. Pure, so every mapping is unit-tested natively; `lib.rs` applies
//! the result.

use mlgw_plugin_sdk::{BackendError, CallContext, EndpointSpec, invalid, unsupported};
use serde_json::{Map, Value, json};

use crate::settings::{DeploymentMode, Settings};

pub const API_VERSION: &str = "serving.kserve.io/v1beta1";
pub const KIND: &str = "InferenceService";
pub const LABEL_ENDPOINT_ID: &str = "mlgw.dev/endpoint-id";
pub const LABEL_TENANT: &str = "mlgw.dev/tenant";
pub const LABEL_TARGET: &str = "mlgw.dev/target";
pub const ANNOTATION_REVISION: &str = "mlgw.dev/revision";
pub const ANNOTATION_MODE: &str = "serving.kserve.io/deploymentMode";

/// Schemes KServe's storage initializer (or a model car) can fetch a model from.
const STORAGE_SCHEMES: &[&str] = &[
    "s3://", "gs://", "pvc://", "hf://", "oci://", "http://", "https://",
];

/// What the spec asks that this target cannot do, before anything is created or changed.
pub fn validate(spec: &EndpointSpec, s: &Settings) -> Result<(), BackendError> {
    if !STORAGE_SCHEMES
        .iter()
        .any(|p| spec.model_uri.starts_with(p))
    {
        return Err(invalid(
            "model_uri",
            format!(
                "{:?} is not a location KServe's storage initializer can fetch from (s3://, gs://, pvc://, hf://, oci://, http(s)://)",
                spec.model_uri
            ),
        ));
    }
    if spec.model_format.is_empty() {
        return Err(invalid(
            "model_format",
            "KServe picks the serving runtime by the model format (e.g. sklearn)",
        ));
    }
    if !is_format_name(&spec.model_format) {
        return Err(invalid(
            "model_format",
            format!("{:?} is not a model format name", spec.model_format),
        ));
    }
    if let Some(r) = spec.runtime.as_deref().filter(|r| !r.is_empty())
        && !crate::names::is_dns_label(r)
    {
        return Err(invalid(
            "runtime",
            format!("{r:?} is not a ServingRuntime name"),
        ));
    }
    if spec.image.as_deref().is_some_and(|i| !i.is_empty()) {
        return Err(invalid(
            "image",
            "KServe runs the image of the serving runtime; name a runtime instead",
        ));
    }
    let r = &spec.resources;
    if r.gpu_type.as_deref().is_some_and(|t| !t.is_empty()) {
        return Err(invalid(
            "resources.gpu_type",
            "this target does not place GPU types; ask for resources.gpus only",
        ));
    }
    if r.instance_type.as_deref().is_some_and(|t| !t.is_empty()) {
        return Err(invalid(
            "resources.instance_type",
            "instance types are SageMaker's; on KServe give cpu, memory and gpus",
        ));
    }
    if r.nodes > 1 {
        return Err(invalid(
            "resources.nodes",
            "a KServe predictor is one pod per replica; use min_replicas and max_replicas",
        ));
    }
    if spec.min_replicas == 0 && s.deployment_mode == DeploymentMode::RawDeployment {
        return Err(invalid(
            "min_replicas",
            "RawDeployment cannot scale to zero (deployment_mode = \"Serverless\" can)",
        ));
    }
    if spec.canary_percent.is_some() && s.deployment_mode == DeploymentMode::RawDeployment {
        return Err(unsupported(
            "canary rollouts need KServe's Serverless mode: a RawDeployment InferenceService has one Deployment and no revisions to split traffic between (this target runs deployment_mode = \"RawDeployment\")",
        ));
    }
    Ok(())
}

fn is_format_name(f: &str) -> bool {
    f.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A label value as Kubernetes accepts it.
pub fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

fn resources(spec: &EndpointSpec, s: &Settings) -> Value {
    // KServe takes no resources at all as "the runtime's defaults": null, not {}.
    match mlgw_plugin_sdk::kube_objects::container_resources(&spec.resources, &s.gpu_resource) {
        Value::Object(m) if m.is_empty() => Value::Null,
        r => r,
    }
}

/// Drops nulls, so the applied object holds only what was said: server-side apply then also
/// removes what an earlier revision said and this one does not (a canary percent).
fn prune(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| !v.is_null())
                .collect(),
        ),
        other => other,
    }
}

/// The InferenceService `name` for this call's revision of the endpoint.
pub fn build(ctx: &CallContext, spec: &EndpointSpec, s: &Settings, name: &str) -> Value {
    let mut labels = Map::new();
    for (k, v) in &s.labels {
        labels.insert(k.clone(), json!(v));
    }
    for (k, v) in [
        (LABEL_ENDPOINT_ID, &ctx.resource_id),
        (LABEL_TENANT, &ctx.tenant),
        (LABEL_TARGET, &ctx.target),
    ] {
        // The gateway's ids always fit; a tenant that does not is still in the annotations.
        if is_label_value(v) {
            labels.insert(k.into(), json!(v));
        }
    }
    let mut annotations = Map::new();
    for (k, v) in &s.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    for (k, v) in [
        (LABEL_ENDPOINT_ID, ctx.resource_id.clone()),
        (LABEL_TENANT, ctx.tenant.clone()),
        (LABEL_TARGET, ctx.target.clone()),
        (ANNOTATION_REVISION, ctx.revision.to_string()),
        (ANNOTATION_MODE, s.deployment_mode.annotation().to_string()),
    ] {
        annotations.insert(k.into(), json!(v));
    }
    let runtime = spec
        .runtime
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| s.runtime.clone());
    let canary = match s.deployment_mode {
        DeploymentMode::Serverless => spec.canary_percent,
        DeploymentMode::RawDeployment => None,
    };
    prune(json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": s.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "predictor": {
                "minReplicas": spec.min_replicas,
                "maxReplicas": (spec.max_replicas > 0).then_some(spec.max_replicas.max(spec.min_replicas)),
                "scaleMetric": s.scale_metric.map(|m| m.name()),
                "scaleTarget": s.scale_target,
                "canaryTrafficPercent": canary,
                "serviceAccountName": s.service_account,
                "model": {
                    "modelFormat": {"name": spec.model_format},
                    "storageUri": spec.model_uri,
                    "runtime": runtime,
                    "protocolVersion": "v2",
                    "resources": resources(spec, s),
                },
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlgw_plugin_sdk::Resources;

    pub fn ctx(revision: u32) -> CallContext {
        CallContext {
            tenant: "team-a".into(),
            target: "kserve".into(),
            resource_id: "e-0193AB".into(),
            backend_name: "mlgw-e0193ab".into(),
            settings: String::new(),
            revision,
        }
    }

    pub fn spec() -> EndpointSpec {
        EndpointSpec {
            name: "iris".into(),
            model_uri: "s3://models/iris/v1/".into(),
            model_format: "sklearn".into(),
            runtime: None,
            image: None,
            resources: Resources {
                cpu: Some("500m".into()),
                memory: Some("1Gi".into()),
                gpus: 1,
                gpu_type: None,
                instance_type: None,
                nodes: 0,
            },
            min_replicas: 1,
            max_replicas: 3,
            canary_percent: None,
        }
    }

    fn settings(json: &str) -> Settings {
        let mut s: Settings = serde_json::from_str(json).unwrap();
        if s.namespace.is_empty() {
            s.namespace = "team-a".into();
        }
        s.check().unwrap();
        s
    }

    #[test]
    fn maps_the_spec() {
        let s = settings(
            r#"{"runtime": "kserve-mlserver", "scale_metric": "cpu", "scale_target": 70,
                "service_account": "models", "labels": {"team": "a"},
                "annotations": {"prometheus.io/scrape": "true"}}"#,
        );
        let o = build(&ctx(2), &spec(), &s, "mlgw-e0193ab");
        assert_eq!(
            o,
            json!({
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {
                    "name": "mlgw-e0193ab",
                    "namespace": "team-a",
                    "labels": {"team": "a", "mlgw.dev/endpoint-id": "e-0193AB",
                               "mlgw.dev/tenant": "team-a", "mlgw.dev/target": "kserve"},
                    "annotations": {"prometheus.io/scrape": "true",
                                    "mlgw.dev/endpoint-id": "e-0193AB", "mlgw.dev/tenant": "team-a",
                                    "mlgw.dev/target": "kserve", "mlgw.dev/revision": "2",
                                    "serving.kserve.io/deploymentMode": "RawDeployment"},
                },
                "spec": {"predictor": {
                    "minReplicas": 1, "maxReplicas": 3, "scaleMetric": "cpu", "scaleTarget": 70,
                    "serviceAccountName": "models",
                    "model": {
                        "modelFormat": {"name": "sklearn"},
                        "storageUri": "s3://models/iris/v1/",
                        "runtime": "kserve-mlserver",
                        "protocolVersion": "v2",
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "1Gi"},
                            "limits": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
                        },
                    },
                }},
            })
        );
    }

    #[test]
    fn the_spec_runtime_wins_and_nothing_unsaid_is_sent() {
        let s = settings(r#"{"runtime": "kserve-mlserver"}"#);
        let mut sp = spec();
        sp.runtime = Some("custom-sklearn".into());
        sp.resources = Resources {
            cpu: None,
            memory: None,
            gpus: 0,
            gpu_type: None,
            instance_type: None,
            nodes: 0,
        };
        sp.max_replicas = 0;
        let o = build(&ctx(1), &sp, &s, "n");
        let p = &o["spec"]["predictor"];
        assert_eq!(p["model"]["runtime"], "custom-sklearn");
        assert!(p["model"].get("resources").is_none(), "{p}");
        assert!(p.get("maxReplicas").is_none());
        assert!(p.get("scaleMetric").is_none());
        assert!(p.get("canaryTrafficPercent").is_none());
    }

    #[test]
    fn serverless_carries_the_mode_and_the_canary() {
        let s = settings(r#"{"deployment_mode": "Serverless"}"#);
        let mut sp = spec();
        sp.canary_percent = Some(10);
        sp.min_replicas = 0;
        validate(&sp, &s).unwrap();
        let o = build(&ctx(2), &sp, &s, "n");
        assert_eq!(o["spec"]["predictor"]["canaryTrafficPercent"], 10);
        assert_eq!(o["spec"]["predictor"]["minReplicas"], 0);
        assert_eq!(
            o["metadata"]["annotations"]["serving.kserve.io/deploymentMode"],
            "Serverless"
        );
    }

    #[test]
    fn raw_deployment_refuses_a_canary_and_says_why() {
        let s = settings("{}");
        let mut sp = spec();
        sp.canary_percent = Some(10);
        match validate(&sp, &s).unwrap_err() {
            BackendError::Unsupported(m) => {
                assert!(m.contains("Serverless"), "{m}");
                assert!(m.contains("RawDeployment"), "{m}");
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn bad_specs_name_the_field() {
        let s = settings("{}");
        type Change = fn(&mut EndpointSpec);
        let cases: Vec<(Change, &str)> = vec![
            (|sp| sp.model_uri = "/tmp/model".into(), "model_uri"),
            (|sp| sp.model_uri = "file:///tmp/model".into(), "model_uri"),
            (|sp| sp.model_format = String::new(), "model_format"),
            (|sp| sp.model_format = "sk learn".into(), "model_format"),
            (|sp| sp.runtime = Some("My Runtime".into()), "runtime"),
            (|sp| sp.image = Some("python:3.12".into()), "image"),
            (
                |sp| sp.resources.gpu_type = Some("a100".into()),
                "resources.gpu_type",
            ),
            (
                |sp| sp.resources.instance_type = Some("ml.m5.large".into()),
                "resources.instance_type",
            ),
            (|sp| sp.resources.nodes = 2, "resources.nodes"),
            (|sp| sp.min_replicas = 0, "min_replicas"),
        ];
        for (change, field) in cases {
            let mut sp = spec();
            change(&mut sp);
            match validate(&sp, &s).unwrap_err() {
                BackendError::InvalidSpec(f) => assert_eq!(f.field, field, "{}", f.reason),
                e => panic!("{field}: {e:?}"),
            }
        }
        validate(&spec(), &s).unwrap();
    }
}
