//! The native data plane: predictions go from the gateway straight to the model server the
//! plugin's route names, as Open Inference Protocol V2 JSON. Tensor bytes never pass through
//! WebAssembly; the plugin is asked for the route once and the answer is cached until the
//! endpoint's backend ref changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::domain::{BackendRef, Protocol, Route};

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("model server at {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("model server rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("model server failed ({status}): {message}")]
    ServerError { status: u16, message: String },
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

pub struct DataPlane {
    http: reqwest::Client,
    routes: Mutex<HashMap<String, (BackendRef, Route)>>,
}

impl Default for DataPlane {
    fn default() -> Self {
        Self::new()
    }
}

impl DataPlane {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .expect("building the HTTP client"),
            routes: Mutex::new(HashMap::new()),
        }
    }

    pub fn cached(&self, endpoint: &str, r: &BackendRef) -> Option<Route> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .get(endpoint)
            .filter(|(cached_ref, _)| cached_ref == r)
            .map(|(_, route)| route.clone())
    }

    pub fn remember(&self, endpoint: &str, r: &BackendRef, route: Route) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.insert(endpoint.into(), (r.clone(), route));
    }

    pub fn forget(&self, endpoint: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.remove(endpoint);
    }

    fn model_url(route: &Route, suffix: &str) -> String {
        format!(
            "{}/v2/models/{}{suffix}",
            route.url.trim_end_matches('/'),
            route.model_name
        )
    }

    fn with_headers(
        &self,
        mut b: reqwest::RequestBuilder,
        route: &Route,
    ) -> reqwest::RequestBuilder {
        for (k, v) in &route.headers {
            b = b.header(k, v);
        }
        b
    }

    /// The model server's own word on whether the model can serve.
    pub async fn model_ready(&self, route: &Route) -> Result<(), String> {
        if route.protocol != Protocol::OipV2 {
            return Ok(());
        }
        let req = self
            .http
            .get(Self::model_url(route, "/ready"))
            .timeout(Duration::from_secs(2));
        match self.with_headers(req, route).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("model not ready ({})", r.status())),
            Err(e) => Err(format!("{}", e.without_url())),
        }
    }

    pub async fn infer(
        &self,
        endpoint: &str,
        route: &Route,
        req: InferRequest,
    ) -> Result<InferResponse, DataPlaneError> {
        if route.protocol != Protocol::OipV2 {
            return Err(DataPlaneError::Unsupported(
                "this endpoint's protocol (SageMaker runtime) is not served by this gateway version".into(),
            ));
        }
        let body = request_json(&req)?;
        let http = self
            .http
            .post(Self::model_url(route, "/infer"))
            .timeout(Duration::from_secs(60))
            .json(&body);
        let resp = match self.with_headers(http, route).send().await {
            Ok(r) => r,
            Err(e) => {
                // The server may have moved (restart, rollout): ask the plugin again next time.
                self.forget(endpoint);
                return Err(DataPlaneError::Unreachable {
                    url: route.url.clone(),
                    message: e.without_url().to_string(),
                });
            }
        };
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| DataPlaneError::BadResponse(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
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
}

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
