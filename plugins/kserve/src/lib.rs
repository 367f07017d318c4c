//! The in-cluster serving target: an endpoint becomes a KServe `serving.kserve.io/v1beta1`
//! InferenceService, applied through the host's `kube` capability under a name sized so every
//! name KServe derives from it fits (`names`). Status comes from its conditions and model
//! status, the route from its published URL: the cluster-local address for a gateway inside
//! the cluster, or the operator's ingress with the InferenceService's host as `Host`.

pub mod names;
pub mod objects;
pub mod settings;
pub mod status;

use mlgw_plugin_sdk::kube::{self, ObjectRef, Propagation};
use mlgw_plugin_sdk::{
    Backend, BackendError, BackendInfo, BackendRef, CallContext, Capabilities, EndpointSpec,
    EndpointStatus, Features, KeyValue, Protocol, Route, internal,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::settings::Settings;

pub struct Kserve;

/// What the gateway stores for the endpoint (`backend-ref.data`). The revision makes each
/// update's ref new, so the data plane looks the route up again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRef {
    pub namespace: String,
    pub name: String,
    pub revision: u32,
}

impl EndpointRef {
    fn of(r: &BackendRef) -> Result<Self, BackendError> {
        serde_json::from_str(&r.data)
            .map_err(|e| internal(format!("not a reference this target returned: {e}")))
    }

    fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            api_version: objects::API_VERSION.into(),
            kind: objects::KIND.into(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    fn backend_ref(&self) -> BackendRef {
        BackendRef {
            name: format!("{}/{}", self.namespace, self.name),
            data: serde_json::to_string(self).unwrap_or_default(),
        }
    }
}

fn parse(doc: &str) -> Result<Value, BackendError> {
    serde_json::from_str(doc).map_err(|e| internal(format!("the API server's answer: {e}")))
}

fn endpoint_ref(ctx: &CallContext, s: &Settings) -> Result<EndpointRef, BackendError> {
    let name = names::isvc_name(&ctx.backend_name, &s.namespace)
        .map_err(|e| internal(format!("the target's settings do not fit: {e}")))?;
    Ok(EndpointRef {
        namespace: s.namespace.clone(),
        name,
        revision: ctx.revision,
    })
}

/// Applies this revision of the endpoint. An object under the name that belongs to another
/// endpoint (a hash collision of shortened names) is a conflict, never taken over.
fn apply(ctx: &CallContext, spec: &EndpointSpec, s: &Settings) -> Result<BackendRef, BackendError> {
    objects::validate(spec, s)?;
    let r = endpoint_ref(ctx, s)?;
    match kube::get(&r.object_ref()) {
        Ok(doc) => {
            let obj = parse(&doc)?;
            let owner = obj["metadata"]["annotations"][objects::LABEL_ENDPOINT_ID].as_str();
            if owner != Some(ctx.resource_id.as_str()) {
                return Err(BackendError::Conflict(format!(
                    "InferenceService {}/{} exists and belongs to endpoint {}",
                    r.namespace,
                    r.name,
                    owner.unwrap_or("(none)")
                )));
            }
        }
        Err(BackendError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let obj = objects::build(ctx, spec, s, &r.name);
    kube::apply(&obj.to_string())?;
    Ok(r.backend_ref())
}

/// Where predictions go, from the InferenceService's published URL.
pub fn route_of(obj: &Value, s: &Settings, model: &str) -> Result<Route, BackendError> {
    let Some(published) = status::url(obj) else {
        return Err(BackendError::Unavailable(
            "the InferenceService has no URL yet".into(),
        ));
    };
    let (url, headers) = match &s.ingress_url {
        // Outside the cluster: through its ingress, which routes by Host, as KServe documents
        // (`curl -H "Host: ${SERVICE_HOSTNAME}" http://${INGRESS_HOST}:${INGRESS_PORT}/v2/…`).
        Some(ingress) => {
            let host = obj["status"]["url"]
                .as_str()
                .and_then(names::url_host)
                .or_else(|| names::url_host(published))
                .ok_or_else(|| internal(format!("KServe's URL {published:?} has no host")))?;
            (
                ingress.trim_end_matches('/').to_string(),
                vec![KeyValue {
                    key: "Host".into(),
                    value: host.to_string(),
                }],
            )
        }
        // Inside it: the cluster-local address, no ingress in between.
        None => (
            obj["status"]["address"]["url"]
                .as_str()
                .filter(|u| !u.is_empty())
                .unwrap_or(published)
                .trim_end_matches('/')
                .to_string(),
            Vec::new(),
        ),
    };
    Ok(Route {
        url,
        protocol: Protocol::OipV2,
        // KServe names the model after the InferenceService on the model server.
        model_name: model.to_string(),
        headers,
    })
}

fn is_gone(e: &BackendError) -> bool {
    matches!(e, BackendError::NotFound(_))
}

impl Backend for Kserve {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "kserve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Serving on Kubernetes: KServe InferenceServices (Open Inference Protocol V2)"
                    .into(),
            // Canary is only for Serverless targets; validate refuses it on RawDeployment.
            features: Features::SERVING | Features::SERVING_UPDATE | Features::CANARY,
            needs: Capabilities::KUBE,
        }
    }

    fn validate_endpoint(ctx: CallContext, spec: EndpointSpec) -> Result<(), BackendError> {
        objects::validate(&spec, &Settings::of(&ctx)?)
    }

    fn deploy_endpoint(ctx: CallContext, spec: EndpointSpec) -> Result<BackendRef, BackendError> {
        apply(&ctx, &spec, &Settings::of(&ctx)?)
    }

    fn describe_endpoint(
        _ctx: CallContext,
        endpoint: BackendRef,
    ) -> Result<EndpointStatus, BackendError> {
        let r = EndpointRef::of(&endpoint)?;
        let obj = parse(&kube::get(&r.object_ref())?)?;
        let o = status::state_of(&obj, r.revision > 1);
        Ok(EndpointStatus {
            state: o.state,
            raw_state: o.raw,
            message: o.message,
            updated_ref: None,
        })
    }

    fn update_endpoint(
        ctx: CallContext,
        endpoint: BackendRef,
        spec: EndpointSpec,
    ) -> Result<BackendRef, BackendError> {
        let s = Settings::of(&ctx)?;
        let old = EndpointRef::of(&endpoint)?;
        // The same object, a new revision of its spec; KServe rolls it out.
        kube::get(&old.object_ref())?;
        apply(&ctx, &spec, &s)
    }

    fn delete_endpoint(ctx: CallContext, endpoint: BackendRef) -> Result<(), BackendError> {
        let s = Settings::of(&ctx)?;
        let r = EndpointRef::of(&endpoint)?;
        match kube::delete(&r.object_ref(), Propagation::Background) {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        // KServe's finalizer holds the object until its parts are gone: only then is the
        // endpoint deleted.
        let deadline = s.delete_wait_ms();
        let mut waited: u64 = 0;
        loop {
            let doc = match kube::get(&r.object_ref()) {
                Ok(d) => d,
                Err(e) if is_gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            if waited >= deadline {
                return Err(BackendError::Unavailable(format!(
                    "InferenceService {}/{} is still being deleted after {} s; delete again to wait for it",
                    r.namespace,
                    r.name,
                    waited / 1000
                )));
            }
            let version = parse(&doc)?["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let secs = (deadline - waited).div_ceil(1000).clamp(1, 5) as u32;
            let events = kube::watch(&r.object_ref(), &version, secs)?;
            if events.iter().any(|e| e.event_type == "DELETED") {
                return Ok(());
            }
            waited += u64::from(secs) * 1000;
        }
    }

    fn endpoint_route(ctx: CallContext, endpoint: BackendRef) -> Result<Route, BackendError> {
        let s = Settings::of(&ctx)?;
        let r = EndpointRef::of(&endpoint)?;
        let obj = parse(&kube::get(&r.object_ref())?)?;
        route_of(&obj, &s, &r.name)
    }
}

mlgw_plugin_sdk::export_backend!(Kserve);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(json: &str) -> Settings {
        let s: Settings = serde_json::from_str(json).unwrap();
        s.check().unwrap();
        s
    }

    fn published() -> Value {
        json!({"status": {
            "url": "http://iris-team-a.example.com",
            "address": {"url": "http://iris-predictor.team-a.svc.cluster.local/"},
        }})
    }

    #[test]
    fn inside_the_cluster_the_route_is_the_cluster_local_address() {
        let r = route_of(
            &published(),
            &settings(r#"{"namespace": "team-a"}"#),
            "iris",
        )
        .unwrap();
        assert_eq!(r.url, "http://iris-predictor.team-a.svc.cluster.local");
        assert_eq!(r.model_name, "iris");
        assert_eq!(r.protocol, Protocol::OipV2);
        assert!(r.headers.is_empty());
    }

    #[test]
    fn outside_it_the_ingress_with_kserves_host() {
        let s = settings(r#"{"namespace": "team-a", "ingress_url": "http://127.0.0.1:8080/"}"#);
        let r = route_of(&published(), &s, "iris").unwrap();
        assert_eq!(r.url, "http://127.0.0.1:8080");
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers[0].key, "Host");
        assert_eq!(r.headers[0].value, "iris-team-a.example.com");
    }

    #[test]
    fn no_url_yet_is_unavailable() {
        let e = route_of(
            &json!({"status": {}}),
            &settings(r#"{"namespace": "a"}"#),
            "m",
        );
        assert!(matches!(e, Err(BackendError::Unavailable(_))));
    }

    #[test]
    fn refs_round_trip() {
        let r = EndpointRef {
            namespace: "team-a".into(),
            name: "mlgw-e1".into(),
            revision: 2,
        };
        let b = r.backend_ref();
        assert_eq!(b.name, "team-a/mlgw-e1");
        assert_eq!(EndpointRef::of(&b).unwrap(), r);
        assert!(
            EndpointRef::of(&BackendRef {
                name: "x".into(),
                data: "{".into()
            })
            .is_err()
        );
    }

    #[test]
    fn describes_itself() {
        let i = Kserve::describe();
        assert_eq!(i.name, "kserve");
        assert!(i.features.contains(Features::SERVING | Features::CANARY));
        assert!(!i.features.intersects(Features::TRAINING));
        assert_eq!(i.needs, Capabilities::KUBE);
    }
}
