//! Pieces of Kubernetes objects that every kube-backed target builds the same way.

use serde_json::{Map, Value, json};

use crate::Resources;

/// A container's `resources`: cpu and memory as both requests and limits (the scheduler
/// reserves what the job may use), GPUs as the limit of `gpu_resource` (extended resources are
/// limits only; Kubernetes sets the request to match). Empty parts are left out.
pub fn container_resources(r: &Resources, gpu_resource: &str) -> Value {
    let mut requests = Map::new();
    let mut limits = Map::new();
    for (k, v) in [("cpu", &r.cpu), ("memory", &r.memory)] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            requests.insert(k.into(), json!(v));
            limits.insert(k.into(), json!(v));
        }
    }
    if r.gpus > 0 {
        limits.insert(gpu_resource.into(), json!(r.gpus.to_string()));
    }
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(out)
}
