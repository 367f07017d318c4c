//! The `kube` capability: a Kubernetes client bound to the namespaces and kinds in the
//! target's grant. The scope check happens before any request leaves the gateway; the API
//! server then applies the gateway identity's own RBAC on top. Plugins only ever see JSON
//! documents, never the credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams,
    PropagationPolicy, ValidationDirective, WatchEvent, WatchParams,
};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::Value;

use crate::config::KubeGrant;
use crate::contract::mlgw::backend::kube::{
    self as wit, LogRequest, ObjectRef, Propagation, WatchEvent as WitEvent,
};
use crate::contract::types::{BackendError, Denial, FieldError};

/// Documents larger than this are refused rather than copied into the plugin.
const MAX_DOCUMENT: usize = 4 << 20;
const MAX_WATCH_SECONDS: u32 = 60;
const MAX_FOLLOW_MS: u32 = 30_000;

pub struct KubeCapability {
    target: String,
    client: kube::Client,
    namespaces: Vec<String>,
    kinds: Vec<String>,
    cluster_kinds: Vec<String>,
    field_manager: String,
    /// Discovery answers by (apiVersion, kind): stable for the gateway's lifetime.
    resources: Mutex<HashMap<(String, String), (ApiResource, Scope)>>,
}

fn denied(reason: String) -> BackendError {
    BackendError::Denied(Denial {
        capability: "kube".into(),
        reason,
    })
}

fn invalid(field: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidSpec(FieldError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// The API server's answer, in the contract's terms.
pub fn map_error(e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(s) => {
            let msg = s.message.clone();
            match s.code {
                403 | 401 => denied(msg),
                404 => BackendError::NotFound(msg),
                409 => BackendError::Conflict(msg),
                410 => BackendError::Conflict(format!("{msg} (get the object again)")),
                400 | 422 => {
                    let field = s
                        .details
                        .as_ref()
                        .and_then(|d| d.causes.iter().find(|c| !c.field.is_empty()))
                        .map(|c| c.field.clone())
                        .or_else(|| field_in_message(&msg))
                        .unwrap_or_default();
                    invalid(&field, msg)
                }
                // Server-side apply reports a document that does not fit the schema's types
                // as a 500; it is the document's fault, not the server's.
                500 if msg.starts_with("failed to create typed patch object") => {
                    invalid(&field_in_message(&msg).unwrap_or_default(), msg)
                }
                429 | 500..=599 => BackendError::Unavailable(msg),
                _ => BackendError::Internal(format!("{} {}: {msg}", s.code, s.reason)),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => {
            BackendError::Unavailable(format!("Kubernetes API unreachable: {e}"))
        }
        other => BackendError::Internal(format!("Kubernetes client: {other}")),
    }
}

/// The field path in the messages the API server gives without structured causes:
/// `... (ns/name; group/version, Kind=K): .spec.a.b: expected ...` from server-side apply and
/// `strict decoding error: unknown field "spec.x"` from strict field validation.
fn field_in_message(msg: &str) -> Option<String> {
    if let Some((_, rest)) = msg.split_once("): .") {
        let path = rest.split(": ").next()?;
        return Some(path.trim().to_string()).filter(|p| !p.is_empty());
    }
    let (_, rest) = msg.split_once("unknown field \"")?;
    rest.split('"').next().map(str::to_string)
}

fn bounded(doc: String) -> Result<String, BackendError> {
    if doc.len() > MAX_DOCUMENT {
        return Err(BackendError::Internal(format!(
            "response of {} bytes exceeds the {MAX_DOCUMENT}-byte limit",
            doc.len()
        )));
    }
    Ok(doc)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, BackendError> {
    bounded(serde_json::to_string(v).map_err(|e| BackendError::Internal(e.to_string()))?)
}

/// "group/version" or "version" and a kind → the GVK.
fn gvk(api_version: &str, kind: &str) -> Result<GroupVersionKind, BackendError> {
    if kind.is_empty() {
        return Err(invalid("kind", "must not be empty"));
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if version.is_empty() {
        return Err(invalid("apiVersion", "must not be empty"));
    }
    Ok(GroupVersionKind::gvk(group, version, kind))
}

impl KubeCapability {
    pub async fn connect(target: &str, grant: &KubeGrant) -> anyhow::Result<Self> {
        let options = kube::config::KubeConfigOptions {
            context: grant.context.clone(),
            ..Default::default()
        };
        let config = match &grant.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    anyhow::anyhow!("target {target}: kubeconfig {}: {e}", path.display())
                })?;
                kube::Config::from_custom_kubeconfig(kc, &options).await?
            }
            None if grant.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer().await?,
        };
        Ok(Self {
            target: target.into(),
            client: kube::Client::try_from(config)?,
            namespaces: grant.namespaces.clone(),
            kinds: grant.kinds.clone(),
            cluster_kinds: grant.cluster_kinds.clone(),
            field_manager: grant.field_manager.clone(),
            resources: Mutex::new(HashMap::new()),
        })
    }

    /// Namespace and kind against the grant. Returns the namespace to use (the default one
    /// when the plugin named none) or `None` for a granted cluster-scoped kind.
    fn authorize(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Option<String>, BackendError> {
        let key = format!("{api_version}/{kind}");
        if self.cluster_kinds.contains(&key) {
            return Ok(None);
        }
        if !self.kinds.contains(&key) {
            return Err(denied(format!(
                "kind {key} is not granted to target {}",
                self.target
            )));
        }
        let ns = if namespace.is_empty() {
            self.namespaces[0].clone()
        } else {
            namespace.to_string()
        };
        if !self.namespaces.contains(&ns) {
            return Err(denied(format!(
                "namespace {ns} is not granted to target {}",
                self.target
            )));
        }
        Ok(Some(ns))
    }

    async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, Scope), BackendError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self
            .resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(r.clone());
        }
        let (ar, caps) = discovery::pinned_kind(&self.client, &gvk(api_version, kind)?)
            .await
            .map_err(|e| match map_error(e) {
                BackendError::NotFound(_) => invalid(
                    "kind",
                    format!(
                        "the cluster does not serve {api_version} {kind} (is its CRD installed?)"
                    ),
                ),
                other => other,
            })?;
        let r = (ar, caps.scope);
        self.resources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r.clone());
        Ok(r)
    }

    /// The Api for a kind in a namespace, with the scope the grant and the server agree on.
    async fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Api<DynamicObject>, BackendError> {
        let ns = self.authorize(api_version, kind, namespace)?;
        let (ar, scope) = self.resource(api_version, kind).await?;
        match (scope, ns) {
            (Scope::Namespaced, Some(ns)) => {
                Ok(Api::namespaced_with(self.client.clone(), &ns, &ar))
            }
            (Scope::Cluster, None) => Ok(Api::all_with(self.client.clone(), &ar)),
            (Scope::Cluster, Some(_)) => Err(denied(format!(
                "{api_version}/{kind} is cluster-scoped and target {} is granted it only as namespaced",
                self.target
            ))),
            (Scope::Namespaced, None) => Err(invalid(
                "kind",
                format!(
                    "{api_version}/{kind} is namespaced; grant it under kinds, not cluster_kinds"
                ),
            )),
        }
    }

    pub async fn apply(&self, object: &str) -> Result<String, BackendError> {
        let mut doc: Value = serde_json::from_str(object)
            .map_err(|e| invalid("", format!("not a JSON object: {e}")))?;
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(invalid("metadata.name", "must not be empty"));
        }
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api = self.api(&api_version, &kind, &namespace).await?;
        if let Some(ns) = self.authorize(&api_version, &kind, &namespace)? {
            doc["metadata"]["namespace"] = Value::String(ns);
        }
        // Strict: a misspelt field is an error rather than silently dropped.
        let pp = PatchParams {
            field_validation: Some(ValidationDirective::Strict),
            ..PatchParams::apply(&self.field_manager).force()
        };
        let stored = api
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map_err(map_error)?;
        to_json(&stored)
    }

    pub async fn get(&self, r: &ObjectRef) -> Result<String, BackendError> {
        let api = self.api(&r.api_version, &r.kind, &r.namespace).await?;
        to_json(&api.get(&r.name).await.map_err(map_error)?)
    }

    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        selector: &str,
    ) -> Result<String, BackendError> {
        let api = self.api(api_version, kind, namespace).await?;
        let mut lp = ListParams::default();
        if !selector.is_empty() {
            lp = lp.labels(selector);
        }
        to_json(&api.list(&lp).await.map_err(map_error)?)
    }

    pub async fn delete(
        &self,
        r: &ObjectRef,
        propagation: Propagation,
    ) -> Result<(), BackendError> {
        let api = self.api(&r.api_version, &r.kind, &r.namespace).await?;
        let dp = DeleteParams {
            propagation_policy: Some(match propagation {
                Propagation::Foreground => PropagationPolicy::Foreground,
                Propagation::Background => PropagationPolicy::Background,
                Propagation::Orphan => PropagationPolicy::Orphan,
            }),
            ..Default::default()
        };
        api.delete(&r.name, &dp).await.map_err(map_error)?;
        Ok(())
    }

    pub async fn watch(
        &self,
        r: &ObjectRef,
        resource_version: &str,
        timeout_seconds: u32,
    ) -> Result<Vec<WitEvent>, BackendError> {
        let api = self.api(&r.api_version, &r.kind, &r.namespace).await?;
        let timeout = timeout_seconds.clamp(1, MAX_WATCH_SECONDS);
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={}", r.name))
            .timeout(timeout);
        let rv = if resource_version.is_empty() {
            "0"
        } else {
            resource_version
        };
        let stream = api.watch(&wp, rv).await.map_err(map_error)?;
        futures::pin_mut!(stream);
        let mut events = Vec::new();
        // Wait for the first event (the server ends the stream at its timeout), then take
        // whatever else is already there.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout as u64 + 5);
        loop {
            let wait = if events.is_empty() {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                Duration::from_millis(50)
            };
            let next = match tokio::time::timeout(wait, stream.next()).await {
                Ok(Some(ev)) => ev.map_err(map_error)?,
                Ok(None) | Err(_) => break,
            };
            let (event_type, object) = match next {
                WatchEvent::Added(o) => ("ADDED", to_json(&o)?),
                WatchEvent::Modified(o) => ("MODIFIED", to_json(&o)?),
                WatchEvent::Deleted(o) => ("DELETED", to_json(&o)?),
                WatchEvent::Bookmark(b) => ("BOOKMARK", to_json(&b)?),
                WatchEvent::Error(s) => return Err(map_error(kube::Error::Api(s))),
            };
            events.push(WitEvent {
                event_type: event_type.into(),
                object,
            });
        }
        Ok(events)
    }

    pub async fn pod_logs(&self, req: &LogRequest) -> Result<String, BackendError> {
        let Some(ns) = self.authorize("v1", "Pod", &req.namespace)? else {
            return Err(invalid("kind", "pods are namespaced"));
        };
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut lp = LogParams {
            container: req.container.clone(),
            since_seconds: req.since_seconds.map(|s| s as i64),
            tail_lines: req.tail_lines.map(i64::from),
            limit_bytes: Some(
                req.limit_bytes
                    .map_or(MAX_DOCUMENT as i64, |b| (b as i64).min(MAX_DOCUMENT as i64)),
            ),
            timestamps: req.timestamps,
            ..Default::default()
        };
        if req.follow_ms == 0 {
            return bounded(api.logs(&req.pod, &lp).await.map_err(map_error)?);
        }
        lp.follow = true;
        let reader = api.log_stream(&req.pod, &lp).await.map_err(map_error)?;
        let mut lines = reader.lines();
        let mut out = String::new();
        let follow = Duration::from_millis(req.follow_ms.min(MAX_FOLLOW_MS) as u64);
        let _ = tokio::time::timeout(follow, async {
            while let Ok(Some(line)) = lines.try_next().await {
                out.push_str(&line);
                out.push('\n');
                if out.len() >= MAX_DOCUMENT {
                    break;
                }
            }
        })
        .await;
        Ok(out)
    }
}

/// The capability as one call's Store sees it: granted or not.
pub struct KubeCall {
    target: Arc<str>,
    cap: Option<Arc<KubeCapability>>,
}

impl KubeCall {
    pub fn new(target: Arc<str>, cap: Option<Arc<KubeCapability>>) -> Self {
        Self { target, cap }
    }

    fn granted(&self) -> Result<Arc<KubeCapability>, BackendError> {
        self.cap.clone().ok_or_else(|| {
            denied(format!(
                "target {} is not granted the kube capability",
                self.target
            ))
        })
    }
}

impl wit::Host for KubeCall {
    async fn apply(&mut self, object: String) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.apply(&object).await,
            Err(e) => Err(e),
        })
    }

    async fn get(&mut self, r: ObjectRef) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.get(&r).await,
            Err(e) => Err(e),
        })
    }

    async fn list_objects(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        label_selector: String,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => {
                k.list(&api_version, &kind, &namespace, &label_selector)
                    .await
            }
            Err(e) => Err(e),
        })
    }

    async fn delete(
        &mut self,
        r: ObjectRef,
        propagation: Propagation,
    ) -> wasmtime::Result<Result<(), BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.delete(&r, propagation).await,
            Err(e) => Err(e),
        })
    }

    async fn watch(
        &mut self,
        r: ObjectRef,
        resource_version: String,
        timeout_seconds: u32,
    ) -> wasmtime::Result<Result<Vec<WitEvent>, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.watch(&r, &resource_version, timeout_seconds).await,
            Err(e) => Err(e),
        })
    }

    async fn pod_logs(
        &mut self,
        req: LogRequest,
    ) -> wasmtime::Result<Result<String, BackendError>> {
        Ok(match self.granted() {
            Ok(k) => k.pod_logs(&req).await,
            Err(e) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> KubeGrant {
        KubeGrant {
            kubeconfig: None,
            context: None,
            namespaces: vec!["team-a".into()],
            kinds: vec!["kubeflow.org/v1/PyTorchJob".into(), "v1/Pod".into()],
            cluster_kinds: vec![],
            field_manager: "mlgw".into(),
        }
    }

    /// A capability whose client points at a closed port: any request that did leave would
    /// fail as `unavailable`, so `denied` proves the check ran first.
    fn offline() -> KubeCapability {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let g = grant();
        KubeCapability {
            target: "t".into(),
            client: kube::Client::try_from(config).unwrap(),
            namespaces: g.namespaces,
            kinds: g.kinds,
            cluster_kinds: g.cluster_kinds,
            field_manager: g.field_manager,
            resources: Mutex::new(HashMap::new()),
        }
    }

    #[tokio::test]
    async fn out_of_scope_requests_are_denied_before_they_are_sent() {
        let k = offline();
        let other_ns = r#"{"apiVersion":"kubeflow.org/v1","kind":"PyTorchJob","metadata":{"name":"x","namespace":"team-b"}}"#;
        match k.apply(other_ns).await {
            Err(BackendError::Denied(d)) => {
                assert!(d.reason.contains("namespace team-b"), "{}", d.reason)
            }
            other => panic!("expected denied, got {other:?}"),
        }
        let cluster_kind = ObjectRef {
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: "ClusterRole".into(),
            namespace: String::new(),
            name: "admin".into(),
        };
        match k.get(&cluster_kind).await {
            Err(BackendError::Denied(d)) => {
                assert!(d.reason.contains("ClusterRole"), "{}", d.reason)
            }
            other => panic!("expected denied, got {other:?}"),
        }
        // In scope: the request is sent, and fails only because nothing listens.
        let in_scope = ObjectRef {
            api_version: "kubeflow.org/v1".into(),
            kind: "PyTorchJob".into(),
            namespace: String::new(),
            name: "x".into(),
        };
        assert!(matches!(
            k.get(&in_scope).await,
            Err(BackendError::Unavailable(_))
        ));
    }

    #[test]
    fn api_errors_map_to_the_contract() {
        // As the API server sends them.
        let status = |code: u16, causes: Value| {
            let s: kube::core::Status = serde_json::from_value(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "m",
                "reason": "r", "code": code, "details": {"causes": causes}
            }))
            .unwrap();
            kube::Error::Api(Box::new(s))
        };
        let none = || serde_json::json!([]);
        assert!(matches!(
            map_error(status(403, none())),
            BackendError::Denied(_)
        ));
        assert!(matches!(
            map_error(status(404, none())),
            BackendError::NotFound(_)
        ));
        assert!(matches!(
            map_error(status(409, none())),
            BackendError::Conflict(_)
        ));
        let causes = serde_json::json!([{"reason": "FieldValueInvalid", "message": "bad",
            "field": "spec.pytorchReplicaSpecs.Master.replicas"}]);
        match map_error(status(422, causes)) {
            BackendError::InvalidSpec(f) => {
                assert_eq!(f.field, "spec.pytorchReplicaSpecs.Master.replicas")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            map_error(status(503, none())),
            BackendError::Unavailable(_)
        ));
    }

    #[test]
    fn field_paths_are_found_in_unstructured_messages() {
        assert_eq!(
            field_in_message(
                "failed to create typed patch object (team-a/x; kubeflow.org/v1, Kind=PyTorchJob): \
                 .spec.pytorchReplicaSpecs.Master.replicas: expected numeric (int or float), got string"
            )
            .as_deref(),
            Some("spec.pytorchReplicaSpecs.Master.replicas")
        );
        assert_eq!(
            field_in_message(r#"PyTorchJob in version "v1" cannot be handled as a PyTorchJob: strict decoding error: unknown field "spec.replicaz""#)
                .as_deref(),
            Some("spec.replicaz")
        );
        assert_eq!(field_in_message("something else"), None);
    }
}
