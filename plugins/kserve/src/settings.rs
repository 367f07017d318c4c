//! The target's settings (`[targets.<name>] settings = { … }`). Every key but `namespace` has a
//! default; an unknown key or a value of the wrong shape is an error naming it, so a typo never
//! silently changes what is deployed.

use std::collections::BTreeMap;

use mlgw_plugin_sdk::{BackendError, CallContext, internal};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::names;

/// How KServe runs the predictor (the `serving.kserve.io/deploymentMode` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum DeploymentMode {
    /// A Deployment, a Service and an HPA: no Knative or Istio needed, but no revisions to
    /// split traffic between, so no canary.
    #[default]
    RawDeployment,
    /// Knative revisions: scale to zero and canary traffic splits.
    Serverless,
}

impl DeploymentMode {
    pub fn annotation(self) -> &'static str {
        match self {
            DeploymentMode::RawDeployment => "RawDeployment",
            DeploymentMode::Serverless => "Serverless",
        }
    }
}

/// What the autoscaler watches (`predictor.scaleMetric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleMetric {
    Cpu,
    Memory,
    Concurrency,
    Rps,
}

impl ScaleMetric {
    pub fn name(self) -> &'static str {
        match self {
            ScaleMetric::Cpu => "cpu",
            ScaleMetric::Memory => "memory",
            ScaleMetric::Concurrency => "concurrency",
            ScaleMetric::Rps => "rps",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Required: KServe derives DNS names from it, so the backend name is sized to fit it.
    pub namespace: String,
    pub deployment_mode: DeploymentMode,
    /// The ServingRuntime (or ClusterServingRuntime) for endpoints whose spec names none;
    /// unset: KServe picks one that supports the model format.
    pub runtime: Option<String>,
    /// The extended resource GPUs are counted in.
    pub gpu_resource: String,
    pub scale_metric: Option<ScaleMetric>,
    pub scale_target: Option<u32>,
    /// For a gateway outside the cluster: predictions go to this base URL (the cluster's
    /// ingress gateway) with the InferenceService's host as the `Host` header. Unset: the
    /// gateway runs in the cluster and calls the cluster-local address.
    pub ingress_url: Option<String>,
    pub service_account: Option<String>,
    /// Added to the InferenceService (the gateway's own labels and annotations win).
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// How long a delete waits for the InferenceService to be gone (its finalizer removed by
    /// KServe) before answering that it is still going.
    pub delete_wait_seconds: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: String::new(),
            deployment_mode: DeploymentMode::default(),
            runtime: None,
            gpu_resource: "nvidia.com/gpu".into(),
            scale_metric: None,
            scale_target: None,
            ingress_url: None,
            service_account: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            delete_wait_seconds: 20,
        }
    }
}

fn bad(message: String) -> BackendError {
    internal(format!("the target's settings do not fit: {message}"))
}

impl Settings {
    pub fn of(ctx: &CallContext) -> Result<Self, BackendError> {
        let map = mlgw_plugin_sdk::settings(ctx)?;
        let s: Settings = match mlgw_plugin_sdk::settings_as(ctx) {
            Ok(s) => s,
            Err(BackendError::Internal(e)) => {
                // serde names the key only for unknown fields; find the one that does not fit.
                let key = map.keys().find(|k| {
                    let one: Map<String, Value> = map
                        .iter()
                        .filter(|(n, _)| n == k)
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect();
                    serde_json::from_value::<Settings>(Value::Object(one)).is_err()
                });
                return Err(match key {
                    Some(k) if !e.contains(&format!("`{k}`")) => {
                        internal(e.replacen("fit: ", &format!("fit: {k}: "), 1))
                    }
                    _ => internal(e),
                });
            }
            Err(e) => return Err(e),
        };
        s.check()?;
        Ok(s)
    }

    /// What serde cannot say about the shapes.
    pub fn check(&self) -> Result<(), BackendError> {
        if self.namespace.is_empty() {
            return Err(bad(
                "namespace is required: KServe derives DNS names from it, so the target sizes its object names to fit it".into(),
            ));
        }
        if !names::is_dns_label(&self.namespace) {
            return Err(bad(format!(
                "namespace {:?} is not a Kubernetes namespace name (a DNS label)",
                self.namespace
            )));
        }
        names::budget(&self.namespace).map_err(bad)?;
        if self.gpu_resource.is_empty() {
            return Err(bad("gpu_resource must not be empty".into()));
        }
        if let Some(r) = &self.runtime
            && !names::is_dns_label(r)
        {
            return Err(bad(format!("runtime {r:?} is not a ServingRuntime name")));
        }
        if let Some(m) = self.scale_metric
            && self.deployment_mode == DeploymentMode::RawDeployment
            && matches!(m, ScaleMetric::Concurrency | ScaleMetric::Rps)
        {
            return Err(bad(format!(
                "scale_metric = {:?} needs Knative (deployment_mode = \"Serverless\"); RawDeployment scales on cpu or memory",
                m.name()
            )));
        }
        if self.scale_target == Some(0) {
            return Err(bad("scale_target must be above 0".into()));
        }
        if let Some(u) = &self.ingress_url
            && names::url_host(u).is_none()
        {
            return Err(bad(format!(
                "ingress_url {u:?} is not an http:// or https:// URL with a host"
            )));
        }
        Ok(())
    }

    pub fn delete_wait_ms(&self) -> u64 {
        u64::from(self.delete_wait_seconds) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn parse(json: &str) -> Result<Settings, BackendError> {
        let ctx = CallContext {
            tenant: "default".into(),
            target: "kserve".into(),
            resource_id: "e-1".into(),
            backend_name: "mlgw-e1".into(),
            settings: json.into(),
            revision: 1,
        };
        Settings::of(&ctx)
    }

    fn message(e: BackendError) -> String {
        match e {
            BackendError::Internal(m) => m,
            other => panic!("expected internal, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let s = parse(r#"{"namespace": "team-a"}"#).unwrap();
        assert_eq!(s.deployment_mode, DeploymentMode::RawDeployment);
        assert_eq!(s.gpu_resource, "nvidia.com/gpu");
        assert_eq!(s.runtime, None);
        assert_eq!(s.ingress_url, None);
        assert_eq!(s.delete_wait_ms(), 20_000);
    }

    #[test]
    fn reads_a_full_table() {
        let s = parse(
            r#"{"namespace": "team-a", "deployment_mode": "Serverless", "runtime": "kserve-mlserver",
                "scale_metric": "concurrency", "scale_target": 5,
                "ingress_url": "http://127.0.0.1:8080", "service_account": "models",
                "labels": {"team": "a"}, "annotations": {"sidecar.istio.io/inject": "true"},
                "delete_wait_seconds": 5}"#,
        )
        .unwrap();
        assert_eq!(s.deployment_mode, DeploymentMode::Serverless);
        assert_eq!(s.scale_metric, Some(ScaleMetric::Concurrency));
        assert_eq!(s.scale_target, Some(5));
        assert_eq!(s.labels["team"], "a");
        assert_eq!(s.delete_wait_ms(), 5_000);
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let long = "n".repeat(40);
        for (json, says) in [
            ("{}".to_string(), "namespace is required"),
            (
                r#"{"namespace": "Team A"}"#.into(),
                "not a Kubernetes namespace",
            ),
            (
                format!(r#"{{"namespace": "{long}"}}"#),
                "leaves no room for a name",
            ),
            (
                r#"{"namespace": "a", "deployment_mode": "serverless"}"#.into(),
                "deployment_mode: unknown variant `serverless`",
            ),
            (
                r#"{"namespace": "a", "namespce": "b"}"#.into(),
                "unknown field `namespce`",
            ),
            (
                r#"{"namespace": "a", "scale_metric": "rps"}"#.into(),
                "needs Knative",
            ),
            (
                r#"{"namespace": "a", "scale_target": -1}"#.into(),
                "scale_target: invalid value",
            ),
            (r#"{"namespace": "a", "scale_target": 0}"#.into(), "above 0"),
            (
                r#"{"namespace": "a", "ingress_url": "istio-ingress:80"}"#.into(),
                "ingress_url",
            ),
            (r#"{"namespace": "a", "runtime": "a b"}"#.into(), "runtime"),
        ] {
            let m = message(parse(&json).unwrap_err());
            assert!(m.contains(says), "{json}: {m}");
            assert!(m.starts_with("the target's settings do not fit"), "{m}");
        }
    }
}
