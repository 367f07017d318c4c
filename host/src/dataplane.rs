//! The native data plane: predictions go from the gateway straight to the model server the
//! plugin's route names, as Open Inference Protocol V2 JSON. Tensor bytes never pass through
//! WebAssembly; the plugin is asked for the route once and the answer is cached until the
//! endpoint's backend ref changes. A route is used only once the target's policy
//! (`policy`) has checked it; redirects are not followed and response bodies are capped.
//!
//! A `sagemaker-runtime` route's `url` is the name of a SageMaker endpoint (no scheme, no
//! host: the target's grant decides the account, region and API endpoint). Its predictions
//! go to InvokeEndpoint through the target's own SageMaker runtime client, signed with the
//! gateway's credentials, as OIP V2 JSON both ways; the endpoint must be the gateway
//! endpoint's own (its backend name, or that plus a `-suffix`). Its readiness is SageMaker's
//! InService, as the plugin's describe reports it: there is no HTTP probe.

pub mod policy;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::capabilities::sagemaker::{self, SagemakerCapability};
use crate::config::Config;
use crate::domain::{BackendRef, Protocol, Route};
use policy::{Denial, PolicyResolver, RoutePolicy};

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    RouteDenied(#[from] Denial),
    #[error("model server at {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("model server rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("model server failed ({status}): {message}")]
    ServerError { status: u16, message: String },
    #[error(
        "model server at {url} answered with a redirect ({status}) to {location:?}; the gateway \
         does not follow redirects"
    )]
    Redirected {
        url: String,
        status: u16,
        location: String,
    },
    #[error(
        "model server at {url} answered more than {limit} bytes (target {target}: raise \
         targets.{target}.routes.max_response_bytes to allow more)"
    )]
    ResponseTooLarge {
        target: String,
        url: String,
        limit: u64,
    },
    #[error("model server answered something that is not an inference response: {0}")]
    BadResponse(String),
    #[error("{0}")]
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Int(Vec<i64>),
    UInt(Vec<u64>),
    Float(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    fn len(&self) -> usize {
        match self {
            Self::Bool(v) => v.len(),
            Self::Int(v) => v.len(),
            Self::UInt(v) => v.len(),
            Self::Float(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub parameters: BTreeMap<String, String>,
    pub data: TensorData,
}

#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub id: String,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

/// The contents field a datatype uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    UInt,
    Float,
    Bytes,
}

pub fn kind_of(datatype: &str) -> Option<Kind> {
    Some(match datatype {
        "BOOL" => Kind::Bool,
        "INT8" | "INT16" | "INT32" | "INT64" => Kind::Int,
        "UINT8" | "UINT16" | "UINT32" | "UINT64" => Kind::UInt,
        "FP16" | "FP32" | "FP64" | "BF16" => Kind::Float,
        "BYTES" => Kind::Bytes,
        _ => return None,
    })
}

/// One input tensor. Also called where a Predict enters the API, so a malformed tensor is
/// refused whatever state its endpoint is in.
pub fn check_tensor(i: usize, t: &Tensor) -> Result<(), DataPlaneError> {
    use crate::domain::validate::{tensor_elements, validate_parameters, validate_tensor_name};
    let field = |f: &str| format!("inputs[{i}].{f}");
    let invalid = |e: crate::domain::FieldError| DataPlaneError::Invalid {
        field: e.field,
        reason: e.reason,
    };
    validate_tensor_name(&field("name"), &t.name).map_err(invalid)?;
    let Some(kind) = kind_of(&t.datatype) else {
        return Err(DataPlaneError::Invalid {
            field: field("datatype"),
            reason: format!(
                "{:?} is not an Open Inference Protocol datatype",
                t.datatype.chars().take(32).collect::<String>()
            ),
        });
    };
    let expected = match (&t.data, kind) {
        (TensorData::Bool(_), Kind::Bool)
        | (TensorData::Int(_), Kind::Int)
        | (TensorData::UInt(_), Kind::UInt)
        | (TensorData::Float(_), Kind::Float)
        | (TensorData::Bytes(_), Kind::Bytes) => true,
        // An empty tensor has no contents field set; that is fine for any type.
        (d, _) => d.len() == 0,
    };
    if !expected {
        return Err(DataPlaneError::Invalid {
            field: field("contents"),
            reason: format!("contents do not match datatype {}", t.datatype),
        });
    }
    validate_parameters(&field("parameters"), &t.parameters).map_err(invalid)?;
    // Checked arithmetic: a product that wraps around could match the contents and pass.
    let elements = tensor_elements(&field("shape"), &t.shape).map_err(invalid)?;
    if elements != t.data.len() as u64 {
        return Err(DataPlaneError::Invalid {
            field: field("shape"),
            reason: format!(
                "shape {:?} holds {elements} elements but {} were given",
                t.shape,
                t.data.len()
            ),
        });
    }
    Ok(())
}

fn tensor_json(t: &Tensor) -> Value {
    let data = match &t.data {
        TensorData::Bool(v) => json!(v),
        TensorData::Int(v) => json!(v),
        TensorData::UInt(v) => json!(v),
        TensorData::Float(v) => json!(v),
        TensorData::Bytes(v) => json!(
            v.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>()
        ),
    };
    let mut o = json!({"name": t.name, "shape": t.shape, "datatype": t.datatype, "data": data});
    if !t.parameters.is_empty() {
        o["parameters"] = json!(t.parameters);
    }
    o
}

pub fn request_json(req: &InferRequest) -> Result<Value, DataPlaneError> {
    if req.inputs.is_empty() {
        return Err(DataPlaneError::Invalid {
            field: "inputs".into(),
            reason: "at least one input tensor is needed".into(),
        });
    }
    for (i, t) in req.inputs.iter().enumerate() {
        check_tensor(i, t)?;
    }
    let mut body = json!({"inputs": req.inputs.iter().map(tensor_json).collect::<Vec<_>>()});
    if !req.id.is_empty() {
        body["id"] = json!(req.id);
    }
    if !req.outputs.is_empty() {
        body["outputs"] = json!(
            req.outputs
                .iter()
                .map(|n| json!({"name": n}))
                .collect::<Vec<_>>()
        );
    }
    if !req.parameters.is_empty() {
        body["parameters"] = json!(req.parameters);
    }
    Ok(body)
}

/// OIP allows nested arrays in JSON; flatten row-major.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn parse_tensor(v: &Value) -> Result<Tensor, DataPlaneError> {
    let bad = |m: &str| DataPlaneError::BadResponse(m.to_string());
    let name = v["name"]
        .as_str()
        .ok_or_else(|| bad("output without a name"))?;
    let datatype = v["datatype"]
        .as_str()
        .ok_or_else(|| bad("output without a datatype"))?;
    let shape = v["shape"]
        .as_array()
        .ok_or_else(|| bad("output without a shape"))?
        .iter()
        .map(|d| d.as_i64().ok_or_else(|| bad("non-integer shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut flat = Vec::new();
    flatten(&v["data"], &mut flat);
    let kind = kind_of(datatype).ok_or_else(|| bad(&format!("unknown datatype {datatype}")))?;
    let wrong = || bad(&format!("output {name}: data does not match {datatype}"));
    let data = match kind {
        Kind::Bool => TensorData::Bool(
            flat.iter()
                .map(|x| x.as_bool().ok_or_else(wrong))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Int => TensorData::Int(
            flat.iter()
                .map(|x| x.as_i64().ok_or_else(wrong))
                .collect::<Result<_, _>>()?,
        ),
        Kind::UInt => TensorData::UInt(
            flat.iter()
                .map(|x| x.as_u64().ok_or_else(wrong))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Float => TensorData::Float(
            flat.iter()
                .map(|x| x.as_f64().ok_or_else(wrong))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Bytes => TensorData::Bytes(
            flat.iter()
                .map(|x| x.as_str().map(|s| s.as_bytes().to_vec()).ok_or_else(wrong))
                .collect::<Result<_, _>>()?,
        ),
    };
    let parameters = v["parameters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Tensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        parameters,
        data,
    })
}

pub fn parse_response(v: &Value) -> Result<InferResponse, DataPlaneError> {
    let outputs = v["outputs"]
        .as_array()
        .ok_or_else(|| DataPlaneError::BadResponse("no outputs".into()))?
        .iter()
        .map(parse_tensor)
        .collect::<Result<_, _>>()?;
    Ok(InferResponse {
        model_name: v["model_name"].as_str().unwrap_or_default().into(),
        model_version: v["model_version"].as_str().unwrap_or_default().into(),
        id: v["id"].as_str().unwrap_or_default().into(),
        outputs,
    })
}

/// A tensor as a model's metadata describes it; -1 is a dimension of any size.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMetadata {
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// OIP V2's model metadata object. Servers leave inputs and outputs out when the model does
/// not declare them (MLServer's sklearn runtime does), so absence is an empty list.
pub fn parse_metadata(v: &Value) -> Result<ModelMetadata, DataPlaneError> {
    let bad = |m: String| DataPlaneError::BadResponse(format!("model metadata: {m}"));
    let tensors = |key: &str| -> Result<Vec<TensorMeta>, DataPlaneError> {
        let Some(items) = v[key].as_array() else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .map(|t| {
                Ok(TensorMeta {
                    name: t["name"]
                        .as_str()
                        .ok_or_else(|| bad(format!("{key} entry without a name")))?
                        .into(),
                    datatype: t["datatype"].as_str().unwrap_or_default().into(),
                    shape: t["shape"]
                        .as_array()
                        .map(|s| s.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    };
    Ok(ModelMetadata {
        versions: v["versions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        platform: v["platform"].as_str().unwrap_or_default().into(),
        inputs: tensors("inputs")?,
        outputs: tensors("outputs")?,
    })
}

/// A route the target's policy allowed, with what the data plane sends it.
#[derive(Debug)]
pub struct CheckedRoute {
    pub target: String,
    /// As the plugin gave it: what the endpoint record shows.
    pub url: String,
    pub protocol: Protocol,
    via: Via,
}

// Routes are built once per endpoint and shared in an `Arc`: the size gap costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Via {
    /// OIP V2 over HTTP, at the URLs the policy allowed.
    Http {
        ready_url: reqwest::Url,
        infer_url: reqwest::Url,
        /// The model's own metadata (`GET /v2/models/<model>`).
        model_url: reqwest::Url,
        headers: reqwest::header::HeaderMap,
    },
    /// InvokeEndpoint on this SageMaker endpoint.
    Sagemaker { endpoint: String },
}

/// One target's client: its policy's resolver, timeouts and no redirects; pooled connections.
/// A target granted SageMaker also has that capability's runtime client.
struct TargetPlane {
    policy: Arc<RoutePolicy>,
    http: reqwest::Client,
    sagemaker: Option<Arc<SagemakerCapability>>,
}

/// The policy's verdict on one route.
pub type Verdict = Result<Arc<CheckedRoute>, Denial>;

pub struct DataPlane {
    targets: HashMap<String, TargetPlane>,
    /// Per endpoint, the backend ref the route was asked for and the policy's verdict on it.
    /// A refusal is kept too: asking the plugin again would give the same route.
    routes: Mutex<HashMap<String, (BackendRef, Verdict)>>,
}

/// An error and its causes on one line; reqwest's own message leaves the cause out.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The policy's refusal inside a failed request: the resolver refuses a host name's
/// addresses while connecting.
fn denial_in(e: &reqwest::Error) -> Option<Denial> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(d) = s.downcast_ref::<Denial>() {
            return Some(d.clone());
        }
        source = s.source();
    }
    None
}

/// A request that failed on its way, not by timing out, not while connecting, not refused by
/// the policy: what a pooled connection the server closed or reset under the request gives
/// (model servers close idle connections — uvicorn, under MLServer and KServe's Python
/// servers, after 5 s — and a request can meet the close).
fn met_a_closing_connection(e: &reqwest::Error) -> bool {
    e.is_request() && !e.is_timeout() && !e.is_connect() && denial_in(e).is_none()
}

/// Sends, and once more on a fresh connection if the first attempt met a closing one. An
/// inference request only reads the model: sending it twice changes nothing, and failing it
/// for the pool's bad luck would hand the caller a spurious UNAVAILABLE.
async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
    let again = req.try_clone();
    match req.send().await {
        Err(e) if met_a_closing_connection(&e) => match again {
            Some(r) => r.send().await,
            None => Err(e),
        },
        other => other,
    }
}

impl DataPlane {
    /// One client per target, bound to the target's route policy.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut targets = HashMap::new();
        for (name, t) in &config.targets {
            let policy = Arc::new(
                RoutePolicy::new(name, &t.routes, config.runs_bundled_local(t))
                    .map_err(anyhow::Error::msg)?,
            );
            let http = reqwest::Client::builder()
                .connect_timeout(policy.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(30))
                // A redirect would take the request where the policy never looked.
                .redirect(reqwest::redirect::Policy::none())
                // So would a proxy from the environment, and the proxy would resolve the name.
                .no_proxy()
                .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
                .build()?;
            targets.insert(
                name.clone(),
                TargetPlane {
                    policy,
                    http,
                    sagemaker: None,
                },
            );
        }
        Ok(Self {
            targets,
            routes: Mutex::new(HashMap::new()),
        })
    }

    /// Gives each target granted SageMaker its capability's runtime client, so its
    /// `sagemaker-runtime` routes are served with the target's own credentials and endpoint.
    pub fn with_runtime(mut self, runtime: &crate::runtime::Runtime) -> Self {
        for t in runtime.targets() {
            if let Some(plane) = self.targets.get_mut(&t.name) {
                plane.sagemaker = t.caps.sagemaker.clone();
            }
        }
        self
    }

    /// Sets one target's SageMaker capability (tests that build no runtime).
    pub fn set_sagemaker(&mut self, target: &str, cap: Arc<SagemakerCapability>) {
        if let Some(plane) = self.targets.get_mut(target) {
            plane.sagemaker = Some(cap);
        }
    }

    fn plane(&self, target: &str) -> Result<&TargetPlane, Denial> {
        self.targets.get(target).ok_or_else(|| Denial {
            target: target.into(),
            reason: "the target has no route policy".into(),
        })
    }

    /// Checks a plugin's route against its target's policy.
    pub fn check(&self, target: &str, route: &Route) -> Verdict {
        let plane = self.plane(target)?;
        if route.protocol == Protocol::SagemakerRuntime {
            return Self::check_sagemaker(plane, target, route).map(Arc::new);
        }
        let policy = &plane.policy;
        let c = policy.check(&route.url, &route.model_name, &route.headers)?;
        let base = c.url.path().trim_end_matches('/');
        let at = |suffix: &str| {
            let mut u = c.url.clone();
            u.set_path(&format!("{base}/v2/models/{}/{suffix}", c.model_segment));
            u
        };
        Ok(Arc::new(CheckedRoute {
            target: target.into(),
            url: route.url.clone(),
            protocol: route.protocol,
            via: Via::Http {
                ready_url: at("ready"),
                infer_url: at("infer"),
                model_url: {
                    let mut u = c.url.clone();
                    u.set_path(&format!("{base}/v2/models/{}", c.model_segment));
                    u
                },
                headers: c.headers,
            },
        }))
    }

    fn check_sagemaker(
        plane: &TargetPlane,
        target: &str,
        route: &Route,
    ) -> Result<CheckedRoute, Denial> {
        let deny = |reason: String| Denial {
            target: target.into(),
            reason,
        };
        if plane.sagemaker.is_none() {
            return Err(deny(format!(
                "a sagemaker-runtime route needs the sagemaker capability (grant it with \
                 [targets.{target}.grants.sagemaker])"
            )));
        }
        if !sagemaker::valid_name(&route.url) {
            return Err(deny(format!(
                "url {:?} is not a SageMaker endpoint name (a sagemaker-runtime route's url is \
                 the endpoint's name)",
                route.url.chars().take(100).collect::<String>()
            )));
        }
        // The request is signed by the gateway; a header from the plugin has nothing to add
        // and could only try to change what is signed.
        if let Some((name, _)) = route.headers.first() {
            return Err(deny(format!(
                "header {name}: a sagemaker-runtime route takes no headers"
            )));
        }
        Ok(CheckedRoute {
            target: target.into(),
            url: route.url.clone(),
            protocol: route.protocol,
            via: Via::Sagemaker {
                endpoint: route.url.clone(),
            },
        })
    }

    pub fn cached(&self, endpoint: &str, r: &BackendRef) -> Option<Verdict> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .get(endpoint)
            .filter(|(cached_ref, _)| cached_ref == r)
            .map(|(_, route)| route.clone())
    }

    pub fn remember(&self, endpoint: &str, r: &BackendRef, route: Verdict) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.insert(endpoint.into(), (r.clone(), route));
    }

    pub fn forget(&self, endpoint: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.remove(endpoint);
    }

    /// Reads a response body, stopping at the target's cap.
    async fn read_capped(
        plane: &TargetPlane,
        route: &CheckedRoute,
        mut resp: reqwest::Response,
    ) -> Result<Vec<u8>, DataPlaneError> {
        let limit = plane.policy.max_response_bytes;
        let too_large = || DataPlaneError::ResponseTooLarge {
            target: route.target.clone(),
            url: route.url.clone(),
            limit,
        };
        let announced = resp.content_length().unwrap_or(0);
        if announced > limit {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(announced as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            DataPlaneError::BadResponse(format!("reading the response: {}", chain(&e)))
        })? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The model server's own word on whether the model can serve.
    pub async fn model_ready(&self, route: &CheckedRoute) -> Result<(), String> {
        let Via::Http {
            ready_url, headers, ..
        } = &route.via
        else {
            // SageMaker's InService, which the plugin's describe reports, is its readiness.
            return Ok(());
        };
        let plane = self.plane(&route.target).map_err(|d| d.to_string())?;
        let sent = send(
            plane
                .http
                .get(ready_url.clone())
                .headers(headers.clone())
                .timeout(plane.policy.probe_timeout),
        )
        .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Err(match denial_in(&e) {
                    Some(d) => d.to_string(),
                    None => chain(&e.without_url()),
                });
            }
        };
        let status = resp.status();
        if status.is_redirection() {
            return Err(format!(
                "the model server answered with a redirect ({status}), which the gateway does \
                 not follow"
            ));
        }
        // Reading the body, however short, lets the connection go back to the pool.
        Self::read_capped(plane, route, resp)
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("model not ready ({status})"))
        }
    }

    /// The model server's description of the model's tensors, where the route is OIP V2 over
    /// HTTP; None where the protocol has no such call (SageMaker).
    pub async fn model_metadata(
        &self,
        route: &CheckedRoute,
    ) -> Result<Option<ModelMetadata>, DataPlaneError> {
        let Via::Http {
            model_url, headers, ..
        } = &route.via
        else {
            return Ok(None);
        };
        let plane = self.plane(&route.target)?;
        let resp = send(
            plane
                .http
                .get(model_url.clone())
                .headers(headers.clone())
                .timeout(plane.policy.request_timeout),
        )
        .await
        .map_err(|e| match denial_in(&e) {
            Some(d) => d.into(),
            None => DataPlaneError::Unreachable {
                url: route.url.clone(),
                message: chain(&e.without_url()),
            },
        })?;
        let status = resp.status().as_u16();
        let bytes = Self::read_capped(plane, route, resp).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            DataPlaneError::BadResponse(format!("model metadata is not JSON ({status}): {e}"))
        })?;
        if !(200..300).contains(&status) {
            let message = value["error"].as_str().unwrap_or_default().to_string();
            return Err(if status < 500 {
                DataPlaneError::Rejected { status, message }
            } else {
                DataPlaneError::ServerError { status, message }
            });
        }
        Ok(Some(parse_metadata(&value)?))
    }

    pub async fn infer(
        &self,
        endpoint: &str,
        route: &CheckedRoute,
        req: InferRequest,
    ) -> Result<InferResponse, DataPlaneError> {
        let (infer_url, headers) = match &route.via {
            Via::Http {
                infer_url, headers, ..
            } => (infer_url, headers),
            Via::Sagemaker { endpoint: name } => {
                return self.invoke_sagemaker(endpoint, route, name, req).await;
            }
        };
        let body = request_json(&req)?;
        let plane = self.plane(&route.target)?;
        let sent = send(
            plane
                .http
                .post(infer_url.clone())
                .headers(headers.clone())
                .timeout(plane.policy.request_timeout)
                .json(&body),
        )
        .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // The server may have moved (restart, rollout): ask the plugin again next time.
                self.forget(endpoint);
                if let Some(d) = denial_in(&e) {
                    return Err(d.into());
                }
                return Err(DataPlaneError::Unreachable {
                    url: route.url.clone(),
                    message: chain(&e.without_url()),
                });
            }
        };
        let status = resp.status();
        if status.is_redirection() {
            return Err(DataPlaneError::Redirected {
                url: route.url.clone(),
                status: status.as_u16(),
                location: resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                    .unwrap_or_default(),
            });
        }
        let status = status.as_u16();
        let bytes = Self::read_capped(plane, route, resp).await?;
        let text = String::from_utf8_lossy(&bytes);
        let value: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(text.to_string()));
        if !(200..300).contains(&status) {
            let message = value["error"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| text.chars().take(500).collect());
            return Err(if status < 500 {
                DataPlaneError::Rejected { status, message }
            } else {
                DataPlaneError::ServerError { status, message }
            });
        }
        parse_response(&value)
    }

    /// One prediction through InvokeEndpoint: the gateway endpoint `endpoint`'s SageMaker
    /// endpoint `name`, OIP V2 JSON both ways.
    async fn invoke_sagemaker(
        &self,
        endpoint: &str,
        route: &CheckedRoute,
        name: &str,
        req: InferRequest,
    ) -> Result<InferResponse, DataPlaneError> {
        let plane = self.plane(&route.target)?;
        let backend = crate::domain::backend_name(endpoint);
        // The route comes from the plugin: it may only reach the endpoint's own objects.
        if !sagemaker::name_in_scope(&backend, name) {
            return Err(Denial {
                target: route.target.clone(),
                reason: format!(
                    "SageMaker endpoint {name} is not this endpoint's own (its names are \
                     {backend} or {backend}-<suffix>)"
                ),
            }
            .into());
        }
        let Some(cap) = &plane.sagemaker else {
            return Err(Denial {
                target: route.target.clone(),
                reason: "a sagemaker-runtime route needs the sagemaker capability".into(),
            }
            .into());
        };
        let body =
            serde_json::to_vec(&request_json(&req)?).map_err(|e| DataPlaneError::Invalid {
                field: "inputs".into(),
                reason: e.to_string(),
            })?;
        let at = format!("SageMaker endpoint {name}");
        let sent = tokio::time::timeout(
            plane.policy.request_timeout,
            cap.runtime_client()
                .invoke_endpoint()
                .endpoint_name(name)
                .content_type(JSON)
                .accept(JSON)
                .body(aws_sdk_sagemakerruntime::primitives::Blob::new(body))
                .send(),
        )
        .await;
        let out = match sent {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(self.invoke_error(endpoint, &at, e)),
            Err(_) => {
                return Err(DataPlaneError::Unreachable {
                    url: at,
                    message: format!(
                        "no answer within {} ms ({})",
                        plane.policy.request_timeout.as_millis(),
                        plane.policy.key("request_timeout_ms")
                    ),
                });
            }
        };
        let content_type = out.content_type().unwrap_or_default().to_string();
        let bytes = out.body().map(|b| b.as_ref()).unwrap_or_default();
        if bytes.len() as u64 > plane.policy.max_response_bytes {
            return Err(DataPlaneError::ResponseTooLarge {
                target: route.target.clone(),
                url: at,
                limit: plane.policy.max_response_bytes,
            });
        }
        let not_oip = |why: String| {
            DataPlaneError::BadResponse(format!(
                "{at} answered content type {content_type:?}, which is not an Open Inference \
                 Protocol V2 response: {why}"
            ))
        };
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case(JSON) {
            return Err(not_oip(format!(
                "expected {JSON}: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )));
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| not_oip(format!("not JSON: {e}")))?;
        parse_response(&value).map_err(|e| match e {
            DataPlaneError::BadResponse(m) => not_oip(m),
            other => other,
        })
    }

    /// InvokeEndpoint's errors: the model's own answer is the model's, the rest is SageMaker
    /// not serving (for now).
    fn invoke_error(
        &self,
        endpoint: &str,
        at: &str,
        e: aws_sdk_sagemakerruntime::error::SdkError<
            aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError,
            aws_sdk_sagemakerruntime::config::http::HttpResponse,
        >,
    ) -> DataPlaneError {
        use aws_sdk_sagemakerruntime::error::SdkError;
        use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError as E;
        if let SdkError::ServiceError(se) = &e {
            match se.err() {
                E::ModelError(m) => {
                    let status = m
                        .original_status_code()
                        .and_then(|s| u16::try_from(s).ok())
                        .unwrap_or(500);
                    let message = m
                        .original_message()
                        .or(m.message())
                        .unwrap_or_default()
                        .to_string();
                    return if status < 500 {
                        DataPlaneError::Rejected { status, message }
                    } else {
                        DataPlaneError::ServerError { status, message }
                    };
                }
                E::ValidationError(v) if !v.message().unwrap_or_default().contains("not found") => {
                    return DataPlaneError::Rejected {
                        status: 400,
                        message: v.message().unwrap_or_default().to_string(),
                    };
                }
                _ => {}
            }
        }
        // The endpoint may be gone or moving (an update): ask the plugin again next time.
        self.forget(endpoint);
        let message = match sagemaker::map_error("InvokeEndpoint", e) {
            crate::contract::types::BackendError::Denied(d) => d.reason,
            crate::contract::types::BackendError::InvalidSpec(f) => f.reason,
            crate::contract::types::BackendError::NotFound(m)
            | crate::contract::types::BackendError::Unavailable(m)
            | crate::contract::types::BackendError::Throttled(m)
            | crate::contract::types::BackendError::Conflict(m)
            | crate::contract::types::BackendError::Unsupported(m)
            | crate::contract::types::BackendError::Internal(m) => m,
        };
        DataPlaneError::Unreachable {
            url: at.to_string(),
            message,
        }
    }
}

const JSON: &str = "application/json";

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<i64>, data: TensorData, dt: &str) -> Tensor {
        Tensor {
            name: "x".into(),
            datatype: dt.into(),
            shape,
            parameters: BTreeMap::new(),
            data,
        }
    }

    #[test]
    fn shape_must_match_contents() {
        let req = InferRequest {
            inputs: vec![t(
                vec![2, 2],
                TensorData::Float(vec![1.0, 2.0, 3.0]),
                "FP32",
            )],
            ..Default::default()
        };
        let e = request_json(&req).unwrap_err();
        assert!(
            matches!(e, DataPlaneError::Invalid { ref field, .. } if field == "inputs[0].shape"),
            "{e}"
        );
    }

    #[test]
    fn contents_must_match_datatype() {
        let req = InferRequest {
            inputs: vec![t(vec![1], TensorData::Int(vec![1]), "FP32")],
            ..Default::default()
        };
        assert!(
            matches!(request_json(&req), Err(DataPlaneError::Invalid { field, .. }) if field == "inputs[0].contents")
        );
    }

    #[test]
    fn parses_nested_outputs() {
        let v = json!({"model_name": "iris", "outputs": [
            {"name": "predict", "shape": [2, 1], "datatype": "INT64", "data": [[0], [2]]},
            {"name": "p", "shape": [1], "datatype": "FP64", "data": [0.5]},
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["setosa"]}
        ]});
        let r = parse_response(&v).unwrap();
        assert_eq!(r.model_name, "iris");
        assert_eq!(r.outputs[0].data, TensorData::Int(vec![0, 2]));
        assert_eq!(r.outputs[1].data, TensorData::Float(vec![0.5]));
        assert_eq!(
            r.outputs[2].data,
            TensorData::Bytes(vec![b"setosa".to_vec()])
        );
    }

    #[test]
    fn wrong_output_type_is_a_bad_response() {
        let v =
            json!({"outputs": [{"name": "p", "shape": [1], "datatype": "INT64", "data": ["a"]}]});
        assert!(matches!(
            parse_response(&v),
            Err(DataPlaneError::BadResponse(_))
        ));
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    fn plane(routes: &str) -> DataPlane {
        let cfg: Config = toml::from_str(&format!(
            "[targets.t]\nplugin = \"x\"\n[targets.t.routes]\n{routes}"
        ))
        .unwrap();
        DataPlane::new(&cfg).unwrap()
    }

    /// A request of one FP64 number.
    fn one_number() -> InferRequest {
        InferRequest {
            inputs: vec![Tensor {
                name: "x".into(),
                datatype: "FP64".into(),
                shape: vec![1],
                parameters: BTreeMap::new(),
                data: TensorData::Float(vec![1.0]),
            }],
            ..Default::default()
        }
    }

    fn route(url: &str, model: &str) -> Route {
        Route {
            url: url.into(),
            protocol: Protocol::OipV2,
            model_name: model.into(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn the_model_name_cannot_leave_its_segment() {
        let dp = plane(r#"cidrs = ["10.0.0.0/8"]"#);
        let c = dp
            .check(
                "t",
                &route("http://10.0.0.1:9000/prefix/", "../../admin?x=1#f"),
            )
            .unwrap();
        let Via::Http {
            infer_url,
            ready_url,
            ..
        } = &c.via
        else {
            panic!("an OIP V2 route goes over HTTP")
        };
        assert_eq!(
            infer_url.as_str(),
            "http://10.0.0.1:9000/prefix/v2/models/..%2F..%2Fadmin%3Fx%3D1%23f/infer"
        );
        assert_eq!(infer_url.query(), None);
        assert_eq!(
            ready_url.path_segments().unwrap().collect::<Vec<_>>(),
            [
                "prefix",
                "v2",
                "models",
                "..%2F..%2Fadmin%3Fx%3D1%23f",
                "ready"
            ]
        );
        let e = dp.check("t", &route("http://10.0.0.1/", "..")).unwrap_err();
        assert!(e.reason.contains("path segment"), "{e}");
    }

    #[test]
    fn an_unknown_target_has_no_routes() {
        let dp = plane(r#"cidrs = ["10.0.0.0/8"]"#);
        let e = dp
            .check("other", &route("http://10.0.0.1/", "m"))
            .unwrap_err();
        assert_eq!(e.target, "other");
    }

    /// A test double for a fault no real server here causes on demand: a server that answers
    /// the first request on each connection, keeps it open, and resets it when a second
    /// request arrives — a pooled connection closed under the request, as happens when a
    /// request meets a model server's keep-alive timeout.
    fn resetting_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let resets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = resets.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let (mut c, resets) = (conn.unwrap(), counted.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    let mut answered = false;
                    loop {
                        let n = match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // Headers and the small JSON body arrive together here: one read
                        // is one request.
                        let _ = n;
                        if answered {
                            // SO_LINGER 0: close() sends RST.
                            let s = socket2::SockRef::from(&c);
                            let _ = s.set_linger(Some(Duration::ZERO));
                            resets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        let body = r#"{"model_name":"m","outputs":[{"name":"y","datatype":"INT64","shape":[1],"data":[7]}]}"#;
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        answered = true;
                    }
                });
            }
        });
        (addr, resets)
    }

    #[tokio::test]
    async fn a_pooled_connection_reset_under_a_prediction_is_retried_once_on_a_fresh_one() {
        let (addr, resets) = resetting_server();
        let dp = plane(r#"cidrs = ["127.0.0.0/8"]"#);
        let c = dp
            .check("t", &route(&format!("http://{addr}/"), "m"))
            .unwrap();
        let req = one_number();
        for i in 0..3 {
            let out = dp
                .infer("e", &c, req.clone())
                .await
                .unwrap_or_else(|e| panic!("prediction {i}: {e}"));
            assert_eq!(out.outputs[0].data, TensorData::Int(vec![7]));
        }
        // The second and third each met a reset connection, and went again on a new one.
        assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A name is checked again after DNS: "localhost" resolves to loopback, which this
    /// policy does not allow, so the connection is never attempted and the refusal (from
    /// inside reqwest's connector) comes back as the policy's own error.
    #[tokio::test]
    async fn a_name_resolving_outside_the_policy_is_refused_while_connecting() {
        let dp = plane(r#"cidrs = ["10.0.0.0/8"]"#);
        let c = dp.check("t", &route("http://localhost:9/", "m")).unwrap();
        let why = dp.model_ready(&c).await.unwrap_err();
        assert!(
            why.contains("route refused") && why.contains("resolves to 127.0.0.1"),
            "{why}"
        );
        let req = one_number();
        let e = dp.infer("e", &c, req).await.unwrap_err();
        assert!(matches!(e, DataPlaneError::RouteDenied(_)), "{e}");
    }
}
