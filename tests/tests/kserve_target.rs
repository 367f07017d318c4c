//! The bundled `kserve` target against the real control plane (tests/cluster): the real gateway
//! binary turns `mlgw deploy --target kserve` into InferenceServices, read back with the admin
//! client. KWOK runs no containers, so predictions go to a real MLServer on loopback serving a
//! model a real job trained, behind a small recording proxy that stands in for the cluster's
//! ingress (it records the Host header the gateway sends).
//!
//! KServe's controller (v0.15, RawDeployment) reconciles what the gateway applies, and its
//! status alone drives the gateway's: no test writes an InferenceService's status.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use mlgw::api::pb;
use mlgw_tests::cluster::{Cluster, client, cluster, unique};
use mlgw_tests::iris::{ROWS, TRAIN, expected};
use mlgw_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");
const NS: &str = "team-a";
/// Longer than the 14 characters today's backend names leave room for in KServe's derived
/// names, within the 32 this target allows.
const LONG_NS: &str = "kserve-long-team-namespace-e2e";
const DOMAIN: &str = "example.com";
const KINDS: &str = r#"["serving.kserve.io/v1beta1/InferenceService"]"#;

fn isvc_resource() -> ApiResource {
    ApiResource {
        group: "serving.kserve.io".into(),
        version: "v1beta1".into(),
        api_version: "serving.kserve.io/v1beta1".into(),
        kind: "InferenceService".into(),
        plural: "inferenceservices".into(),
    }
}

/// A TCP proxy standing in for the cluster's ingress: it forwards to whatever `upstream` names
/// (closing connections while it is 0: no model server yet) and keeps every byte clients sent.
struct Ingress {
    port: u16,
    upstream: Arc<AtomicU16>,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Ingress {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(AtomicU16::new(0));
        let sent: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (up, log) = (upstream.clone(), sent.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (up, log) = (up.clone(), log.clone());
                tokio::spawn(async move {
                    let port = up.load(Ordering::SeqCst);
                    if port == 0 {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                        return;
                    };
                    let (mut cr, mut cw) = conn.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let to_server = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let to_client = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(to_server, to_client);
                });
            }
        });
        Self {
            port,
            upstream,
            sent,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Host headers of the requests that passed, lowercased.
    fn hosts(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.sent.lock().unwrap()).to_lowercase();
        text.split("\r\n")
            .filter_map(|l| l.strip_prefix("host:"))
            .map(|h| h.trim().to_string())
            .collect()
    }
}

fn target(name: &str, kubeconfig: &Path, ns: &str, ingress: &str, extra: &str) -> String {
    format!(
        r#"
[targets.{name}]
plugin = "kserve"
settings = {{ namespace = "{ns}", ingress_url = "{ingress}", delete_wait_seconds = 10{extra} }}
[targets.{name}.grants.kube]
kubeconfig = "{}"
namespaces = ["{ns}"]
kinds = {KINDS}
[targets.{name}.routes]
hosts = ["*.{DOMAIN}"]
cidrs = ["127.0.0.1/32"]
allow_host_header = true
"#,
        kubeconfig.display()
    )
}

fn config(c: &Cluster, ingress: &str) -> String {
    [
        "default_target = \"local\"\n[limits]\nreconcile_interval_ms = 200\n".to_string(),
        "[targets.local]\nplugin = \"local\"\n[targets.local.grants.process]\n".to_string(),
        target("kserve", &c.gateway, NS, ingress, ""),
        target("kserve-long", &c.gateway, LONG_NS, ingress, ""),
        target("kserve-readonly", &c.readonly, NS, ingress, ""),
        // A label key the API server refuses: the plugin passes the settings' labels on.
        target(
            "kserve-badschema",
            &c.gateway,
            NS,
            ingress,
            r#", labels = { "not a key!" = "x" }"#,
        ),
    ]
    .concat()
}

async fn cli(gw: &Gateway, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .arg("--server")
        .arg(&gw.addr)
        .args(args)
        .output()
        .await
        .unwrap()
}

async fn cli_ok(gw: &Gateway, args: &[&str]) -> String {
    let out = cli(gw, args).await;
    assert!(
        out.status.success(),
        "mlgw {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn isvcs(c: &Cluster, ns: &str, endpoint_id: &str) -> Vec<DynamicObject> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client(&c.admin).await, ns, &isvc_resource());
    api.list(&ListParams::default().labels(&format!("mlgw.dev/endpoint-id={endpoint_id}")))
        .await
        .unwrap()
        .items
}

/// The endpoint's InferenceService as the admin reads it.
async fn isvc(c: &Cluster, ns: &str, endpoint_id: &str) -> Value {
    let items = isvcs(c, ns, endpoint_id).await;
    assert_eq!(items.len(), 1, "one InferenceService for {endpoint_id}");
    serde_json::to_value(&items[0]).unwrap()
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap().to_string()
}

fn host_of(name: &str, ns: &str) -> String {
    format!("{name}-{ns}.{DOMAIN}")
}

async fn get(gw: &Gateway, id: &str) -> pb::Endpoint {
    gw.serving()
        .await
        .get(pb::GetEndpointRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_state(gw: &Gateway, id: &str, want: pb::EndpointState) -> pb::Endpoint {
    let s = gw.serving().await;
    wait_endpoint(&s, id, &format!("endpoint {id} to be {want:?}"), |e| {
        e.state == want as i32
    })
    .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real MLServer on loopback serving `model_dir`'s model as `name`, as KServe's sklearn
/// runtime would inside the predictor pod.
fn mlserver(dir: &Path, name: &str, model_dir: &Path) -> (tokio::process::Child, u16) {
    let root = dir.join(format!("mlserver-{name}"));
    std::fs::create_dir_all(root.join("model")).unwrap();
    let port = free_port();
    std::fs::write(
        root.join("settings.json"),
        json!({"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
               "metrics_port": free_port(), "parallel_workers": 0})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("model/model-settings.json"),
        json!({"name": name, "implementation": "mlserver_sklearn.SKLearnModel",
               "parameters": {"uri": model_dir.join("model.joblib")}})
        .to_string(),
    )
    .unwrap();
    let child = tokio::process::Command::new(venv().join("bin/mlserver"))
        .arg("start")
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.join("log.txt")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, port)
}

/// A model trained by a real job on the local target.
async fn trained_model(gw: &Gateway) -> PathBuf {
    let mut training = gw.training().await;
    let job = submit(&mut training, "local", spec(&[&python(), "-c", TRAIN]))
        .await
        .unwrap();
    let done = wait_job(&mut training, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{}", done.message);
    file_path(&done.output_uri)
}

fn rows() -> String {
    serde_json::to_string(&ROWS).unwrap()
}

/// What MLServer answers when asked directly, bypassing the gateway.
async fn ask_directly(port: u16, model: &str) -> Value {
    let body = json!({"inputs": [{"name": "input-0", "shape": [ROWS.len(), 4], "datatype": "FP64",
                                  "data": ROWS.iter().flatten().collect::<Vec<_>>()}]});
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v2/models/{model}/infer"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

async fn deploy(gw: &Gateway, target: &str, name: &str, uri: &str) -> Result<String, String> {
    let out = cli(
        gw,
        &[
            "deploy",
            "--target",
            target,
            "--name",
            name,
            "--model-uri",
            uri,
            "--format",
            "sklearn",
            "--max-replicas",
            "2",
            "--gpus",
            "1",
        ],
    )
    .await;
    if out.status.success() {
        let id = String::from_utf8(out.stdout).unwrap();
        Ok(id.split_whitespace().next().unwrap_or_default().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The endpoint's id, from its name.
async fn endpoint_id(gw: &Gateway, name: &str) -> String {
    get(gw, name).await.id
}

#[tokio::test]
async fn deploy_predict_update_canary_delete_through_the_kserve_controller() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let ingress = Ingress::start().await;
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some(&config(c, &ingress.url())),
    )
    .await;
    let model_dir = trained_model(&gw).await;
    let want = expected(&model_dir);

    let ep_name = unique("iris").replace('-', "");
    deploy(&gw, "kserve", &ep_name, "s3://models/iris/v1/")
        .await
        .unwrap();
    let id = endpoint_id(&gw, &ep_name).await;
    let obj = isvc(c, NS, &id).await;
    let name = name_of(&obj);
    let p = &obj["spec"]["predictor"];
    assert_eq!(p["model"]["modelFormat"]["name"], "sklearn");
    assert_eq!(p["model"]["storageUri"], "s3://models/iris/v1/");
    assert_eq!(p["model"]["protocolVersion"], "v2");
    assert_eq!(p["model"]["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(p["minReplicas"], 1);
    assert_eq!(p["maxReplicas"], 2);
    assert_eq!(
        obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"],
        "RawDeployment"
    );
    assert_eq!(obj["metadata"]["labels"]["mlgw.dev/target"], "kserve");
    assert_eq!(obj["metadata"]["labels"]["mlgw.dev/tenant"], "default");

    // KServe's controller makes the predictor's Deployment from it.
    let deployments: Api<Deployment> = Api::namespaced(client(&c.admin).await, NS);
    let predictor = format!("{name}-predictor");
    let d = wait_for(
        Duration::from_secs(60),
        "KServe's predictor Deployment",
        || {
            let (deployments, predictor) = (deployments.clone(), predictor.clone());
            async move { deployments.get_opt(&predictor).await.ok().flatten() }
        },
    )
    .await;
    let d = serde_json::to_value(&d).unwrap();
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["resources"]["limits"]["nvidia.com/gpu"], "1",
        "{container}"
    );

    // KServe says Ready, but no model server answers behind the ingress yet: still creating,
    // with the probe's message.
    let s = gw.serving().await;
    let waiting = wait_endpoint(&s, &id, "the probe's message", |e| {
        e.message.starts_with("waiting for the model server")
    })
    .await;
    assert_eq!(waiting.state, pb::EndpointState::Creating as i32);

    // The model server comes up behind the ingress: ready, and predictions are the model's.
    let (_server, port) = mlserver(dir.path(), &name, &model_dir);
    ingress.upstream.store(port, Ordering::SeqCst);
    wait_state(&gw, &id, pb::EndpointState::Ready).await;
    let out = cli_ok(&gw, &["-o", "json", "predict", &ep_name, "--data", &rows()]).await;
    let through: Value = serde_json::from_str(&out).unwrap();
    let direct = ask_directly(port, &name).await;
    assert_eq!(through["outputs"][0]["data"], json!(want), "{out}");
    assert_eq!(through["outputs"][0]["data"], direct["outputs"][0]["data"]);
    let host = host_of(&name, NS);
    let hosts = ingress.hosts();
    assert!(
        !hosts.is_empty() && hosts.iter().all(|h| *h == host),
        "{hosts:?}"
    );

    // A canary on RawDeployment is UNIMPLEMENTED, and nothing changes.
    let generation = isvc(c, NS, &id).await["metadata"]["generation"].clone();
    let out = cli(
        &gw,
        &[
            "update",
            &ep_name,
            "--model-uri",
            "s3://models/iris/v3/",
            "--canary-percent",
            "10",
        ],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Serverless"), "{err}");
    let mut serving = gw.serving().await;
    let grpc = serving
        .update(pb::UpdateEndpointRequest {
            id: id.clone(),
            spec: Some(pb::EndpointSpec {
                model_uri: "s3://models/iris/v3/".into(),
                canary_percent: Some(10),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(grpc.code(), Code::Unimplemented, "{}", grpc.message());
    assert!(grpc.message().contains("Serverless"), "{}", grpc.message());
    let same = isvc(c, NS, &id).await;
    assert_eq!(same["metadata"]["generation"], generation);
    assert_eq!(
        same["spec"]["predictor"]["model"]["storageUri"],
        "s3://models/iris/v1/"
    );
    assert_eq!(get(&gw, &id).await.state, pb::EndpointState::Ready as i32);

    // A new model URI: a new revision of the same InferenceService, rolled out by KServe.
    let e = serving
        .update(pb::UpdateEndpointRequest {
            id: id.clone(),
            spec: Some(pb::EndpointSpec {
                model_uri: "s3://models/iris/v2/".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.state, pb::EndpointState::Updating as i32);
    let updated = isvc(c, NS, &id).await;
    assert_eq!(name_of(&updated), name);
    assert_eq!(
        updated["spec"]["predictor"]["model"]["storageUri"],
        "s3://models/iris/v2/"
    );
    assert_eq!(updated["metadata"]["annotations"]["mlgw.dev/revision"], "2");
    wait_state(&gw, &id, pb::EndpointState::Ready).await;
    let out = cli_ok(&gw, &["-o", "json", "predict", &ep_name, "--data", &rows()]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["outputs"][0]["data"],
        json!(want)
    );

    // Delete: KServe lets the InferenceService go, then the endpoint is deleted.
    cli_ok(&gw, &["undeploy", &ep_name]).await;
    wait_state(&gw, &id, pb::EndpointState::Deleted).await;
    assert!(isvcs(c, NS, &id).await.is_empty());
}

#[tokio::test]
async fn a_model_that_fails_to_load_fails_with_kserves_reason() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some(&config(c, "http://127.0.0.1:9")),
    )
    .await;
    // No such ServingRuntime: KServe's controller marks the model FailedToLoad with its reason
    // in lastFailureInfo. The endpoint fails with that reason, whatever Ready says.
    let ep_name = unique("broken").replace('-', "");
    cli_ok(
        &gw,
        &[
            "deploy",
            "--target",
            "kserve",
            "--name",
            &ep_name,
            "--model-uri",
            "s3://models/iris/v1/",
            "--runtime",
            "no-such-runtime",
        ],
    )
    .await;
    let id = endpoint_id(&gw, &ep_name).await;
    let e = wait_state(&gw, &id, pb::EndpointState::Failed).await;
    assert!(e.message.contains("RuntimeNotRecognized"), "{}", e.message);
    let obj = isvc(c, NS, &id).await;
    assert_eq!(
        obj["status"]["modelStatus"]["states"]["targetModelState"],
        "FailedToLoad"
    );
    cli_ok(&gw, &["undeploy", &ep_name]).await;
    assert!(isvcs(c, NS, &id).await.is_empty());
}

/// The gateway's Role in a namespace longer than today's backend names leave room for.
async fn long_namespace(c: &Cluster) {
    let admin = client(&c.admin).await;
    let pp = PatchParams::apply("mlgw-tests").force();
    Api::<Namespace>::all(admin.clone())
        .patch(
            LONG_NS,
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LONG_NS}}),
            ),
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), LONG_NS)
        .patch(
            "mlgw-gateway",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "mlgw-gateway", "namespace": LONG_NS},
                "rules": [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                           "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}],
            })),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin, LONG_NS)
        .patch(
            "mlgw-gateway",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "mlgw-gateway", "namespace": LONG_NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mlgw-gateway"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mlgw-gateway"}],
            })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn names_fit_in_a_long_namespace() {
    let c = cluster();
    long_namespace(c).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some(&config(c, "http://127.0.0.1:9")),
    )
    .await;
    let ep_name = unique("long").replace('-', "");
    deploy(&gw, "kserve-long", &ep_name, "s3://models/iris/v1/")
        .await
        .unwrap();
    let id = endpoint_id(&gw, &ep_name).await;
    let obj = isvc(c, LONG_NS, &id).await;
    let name = name_of(&obj);
    // Every name KServe derives stays a DNS label.
    for derived in [
        format!("latest-{name}-predictor-{LONG_NS}"),
        format!("{name}-predictor-{LONG_NS}"),
        format!("{name}-predictor-00001-private"),
    ] {
        assert!(derived.len() <= 63, "{derived} is {} long", derived.len());
    }
    // The backend name the host gave would not have fit.
    let backend = mlgw::domain::backend_name(&id);
    assert!(format!("{backend}-predictor-{LONG_NS}").len() > 63);
    cli_ok(&gw, &["undeploy", &ep_name]).await;
    assert!(isvcs(c, LONG_NS, &id).await.is_empty());
}

#[tokio::test]
async fn rbac_denial_and_schema_errors_are_clear() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some(&config(c, "http://127.0.0.1:9")),
    )
    .await;
    let mut serving = gw.serving().await;
    let spec = |name: &str| pb::EndpointSpec {
        name: name.into(),
        model_uri: "s3://models/iris/v1/".into(),
        model_format: "sklearn".into(),
        min_replicas: 1,
        ..Default::default()
    };
    let err = serving
        .deploy(pb::DeployRequest {
            spec: Some(spec("readonly")),
            target: "kserve-readonly".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("forbidden"), "{}", err.message());

    let err = serving
        .deploy(pb::DeployRequest {
            spec: Some(spec("badschema")),
            target: "kserve-badschema".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let field = err.metadata().get("mlgw-field").unwrap().to_str().unwrap();
    assert!(field.contains("labels"), "{field}");

    // A spec this target cannot serve is refused naming the field, before anything is created.
    let mut local = spec("localfile");
    local.model_uri = "file:///tmp/model".into();
    let err = serving
        .deploy(pb::DeployRequest {
            spec: Some(local),
            target: "kserve".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let field = err.metadata().get("mlgw-field").unwrap().to_str().unwrap();
    assert!(field.ends_with("model_uri"), "{field}");

    // Nothing was created for any of them.
    let api: Api<DynamicObject> =
        Api::namespaced_with(client(&c.admin).await, NS, &isvc_resource());
    let eps = serving
        .list(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    for e in eps {
        let found = api
            .list(&ListParams::default().labels(&format!("mlgw.dev/endpoint-id={}", e.id)))
            .await
            .unwrap();
        assert!(found.items.is_empty(), "{}", e.id);
    }
}
