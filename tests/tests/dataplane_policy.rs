//! The data plane goes only where the operator allows. The hostile fixture hands the gateway
//! whatever route a test asks for (the endpoint's `model_uri` is the route as JSON); a real
//! HTTP server on loopback, started here, plays the model server and records every request it
//! gets, so "refused before anything was sent" is checked against what really arrived. The
//! bundled local target serves a real model on a real MLServer beside all of it.

use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::iris::{ROWS, TRAIN, expected};
use mlgw_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

/// Targets of the hostile fixture, each with its own policy, and the bundled local target
/// on its defaults (loopback only).
async fn gateway() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
default_target = "local"

[limits]
reconcile_interval_ms = 100

[plugins]
hostile = "{}"

[targets.local]
plugin = "local"
[targets.local.grants.process]

# The name only: the address behind it may be anything but the never-allowed ones.
[targets.hostile]
plugin = "hostile"
[targets.hostile.routes]
hosts = ["localhost"]
headers = ["X-Api-Key"]
max_response_bytes = 65536

# Every range there is, and Host may be set: the never-allowed addresses stay refused.
[targets.open]
plugin = "hostile"
[targets.open.routes]
cidrs = ["0.0.0.0/0", "::/0"]
allow_host_header = true

# Names must resolve into 10.0.0.0/8.
[targets.narrow]
plugin = "hostile"
[targets.narrow.routes]
cidrs = ["10.0.0.0/8"]

# No policy: nothing is allowed.
[targets.closed]
plugin = "hostile"
"#,
        mlgw_plugin_artifacts::HOSTILE_PATH
    );
    let gw = Gateway::start(BIN, &dir.path().join("data"), Some(&config)).await;
    (dir, gw)
}

fn route(url: &str, model: &str, headers: &[(&str, &str)]) -> String {
    json!({"url": url, "model": model, "headers": headers}).to_string()
}

fn endpoint_spec(name: &str, model_uri: &str) -> pb::EndpointSpec {
    pb::EndpointSpec {
        name: name.into(),
        model_uri: model_uri.into(),
        model_format: "sklearn".into(),
        ..Default::default()
    }
}

async fn deploy(
    c: &mut ServingServiceClient<Channel>,
    target: &str,
    name: &str,
    model_uri: &str,
) -> pb::Endpoint {
    c.deploy(pb::DeployRequest {
        target: target.into(),
        spec: Some(endpoint_spec(name, model_uri)),
        idempotency_key: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("deploying {name}: {e}"))
    .into_inner()
}

async fn wait_ready(c: &ServingServiceClient<Channel>, id: &str) -> pb::Endpoint {
    wait_endpoint(c, id, &format!("endpoint {id} to be ready"), |e| {
        assert_ne!(
            e.state,
            pb::EndpointState::Failed as i32,
            "endpoint failed: {}",
            e.message
        );
        e.state == pb::EndpointState::Ready as i32
    })
    .await
}

fn request(endpoint: &str, rows: &[[f64; 4]]) -> pb::PredictRequest {
    pb::PredictRequest {
        endpoint: endpoint.into(),
        inputs: vec![pb::InferTensor {
            name: "input-0".into(),
            datatype: "FP64".into(),
            shape: vec![rows.len() as i64, 4],
            fp64_contents: rows.iter().flatten().copied().collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn predict(
    c: &mut ServingServiceClient<Channel>,
    endpoint: &str,
) -> Result<pb::PredictResponse, tonic::Status> {
    c.predict(request(endpoint, &[[1.0, 2.0, 3.0, 4.0]]))
        .await
        .map(|r| r.into_inner())
}

fn assert_mentions(what: &str, text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{what}: {p:?} missing from {text:?}");
    }
}

/// Deploys `name` on `target` with `good` (the model server answers it), waits until it
/// serves, then rolls it to `bad`: Predict must answer PERMISSION_DENIED naming the target
/// and `expect`, the reconciler's probe must record the same refusal, and the model server
/// must never see the bad route's model (`marker`). Returns Predict's message.
async fn refused_on_predict(
    c: &mut ServingServiceClient<Channel>,
    server: &ModelServer,
    target: &str,
    name: &str,
    (good, bad, marker): (&str, &str, &str),
    expect: &[&str],
) -> String {
    let ep = deploy(c, target, name, good).await;
    wait_ready(c, &ep.id).await;
    predict(c, &ep.id)
        .await
        .unwrap_or_else(|e| panic!("{name} before the update: {e}"));
    c.update(pb::UpdateEndpointRequest {
        id: ep.id.clone(),
        spec: Some(pb::EndpointSpec {
            model_uri: bad.into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("updating {name}: {e}"));
    let err = match predict(c, &ep.id).await {
        Ok(r) => panic!("{name}: the refused route served: {r:?}"),
        Err(e) => e,
    };
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "{name}: {}",
        err.message()
    );
    let refused = format!("target {target}: route refused");
    assert_mentions(name, err.message(), &[refused.as_str()]);
    assert_mentions(name, err.message(), expect);
    // Ready would mean the probe went through.
    let probed = wait_endpoint(c, &ep.id, &format!("{name}'s probe to be refused"), |e| {
        e.message.contains("route refused") || e.state == pb::EndpointState::Ready as i32
    })
    .await;
    assert_eq!(
        probed.state,
        pb::EndpointState::Updating as i32,
        "{name}: {}",
        probed.message
    );
    assert_mentions(name, &probed.message, expect);
    assert!(
        server.requests(marker).is_empty(),
        "{name}: the model server was reached: {:?}",
        server.requests(marker)
    );
    err.message().to_string()
}

/// Deploys `name` straight onto a refused route: the probe records the refusal and Predict
/// names it; nothing reaches the model server.
async fn refused_on_probe(
    c: &mut ServingServiceClient<Channel>,
    server: &ModelServer,
    target: &str,
    name: &str,
    (bad, marker): (&str, &str),
    expect: &[&str],
) {
    let ep = deploy(c, target, name, bad).await;
    // Ready would mean the probe went through.
    let probed = wait_endpoint(c, &ep.id, &format!("{name}'s probe to be refused"), |e| {
        e.message.contains("route refused") || e.state == pb::EndpointState::Ready as i32
    })
    .await;
    assert_eq!(
        probed.state,
        pb::EndpointState::Creating as i32,
        "{name}: {}",
        probed.message
    );
    assert_mentions(name, &probed.message, expect);
    let err = match predict(c, &ep.id).await {
        Ok(r) => panic!("{name}: the refused route served: {r:?}"),
        Err(e) => e,
    };
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "{name}: {}",
        err.message()
    );
    assert_mentions(name, err.message(), expect);
    assert!(
        server.requests(marker).is_empty(),
        "{name}: the model server was reached: {:?}",
        server.requests(marker)
    );
}

#[tokio::test]
async fn hostile_routes_are_refused_while_the_other_targets_keep_serving() {
    let (_d, gw) = gateway().await;
    let server = ModelServer::start().await;
    let p = server.port;
    let mut serving = gw.serving().await;
    let mut training = gw.training().await;

    // A real model on the local target, on its default (loopback) policy. It trains and
    // MLServer starts while the hostile routes are tried.
    let job = submit(&mut training, "local", spec(&[&python(), "-c", TRAIN]))
        .await
        .unwrap();
    let job = wait_job(&mut training, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{}", job.message);
    let iris = deploy(&mut serving, "local", "iris", &job.output_uri).await;

    // A well-behaved route on the hostile target serves throughout.
    let localhost = format!("http://localhost:{p}");
    let good = deploy(
        &mut serving,
        "hostile",
        "good",
        &route(&localhost, "good", &[]),
    )
    .await;
    wait_ready(&serving, &good.id).await;
    assert_eq!(
        predict(&mut serving, "good").await.unwrap().model_name,
        "good"
    );

    // Sensitive headers the policy allows arrive; the rest are refused unsent.
    let keyed = deploy(
        &mut serving,
        "hostile",
        "keyed",
        &route(&localhost, "keyed", &[("X-Api-Key", "k-123")]),
    )
    .await;
    wait_ready(&serving, &keyed.id).await;
    predict(&mut serving, "keyed").await.unwrap();
    let sent = server.requests("/keyed/infer");
    assert!(
        sent[0]
            .headers
            .contains(&("x-api-key".into(), "k-123".into())),
        "{sent:?}"
    );
    let good_route = |m: &str| route(&localhost, m, &[]);
    for (name, header, value, expect) in [
        (
            "hdr-authorization",
            "Authorization",
            "Bearer stolen",
            &[
                "authorization is a credential header",
                "targets.hostile.routes.headers",
            ][..],
        ),
        (
            "hdr-cookie",
            "Cookie",
            "session=1",
            &[
                "cookie is a credential header",
                "targets.hostile.routes.headers",
            ],
        ),
        (
            "hdr-amz",
            "X-Amz-Security-Token",
            "t",
            &["x-amz-security-token is a credential header"],
        ),
        (
            "hdr-forwarded-host",
            "X-Forwarded-Host",
            "evil.example",
            &[
                "Host- or client-overriding",
                "targets.hostile.routes.headers",
            ],
        ),
        (
            "hdr-host",
            "Host",
            "evil.example",
            &["header host", "targets.hostile.routes.allow_host_header"],
        ),
        (
            "hdr-connection",
            "Connection",
            "upgrade",
            &["connection is a hop-by-hop header", "can never set it"],
        ),
        (
            "hdr-transfer-encoding",
            "Transfer-Encoding",
            "chunked",
            &["transfer-encoding is a hop-by-hop header"],
        ),
        (
            "hdr-content-length",
            "Content-Length",
            "0",
            &["content-length is set by the gateway"],
        ),
        (
            "hdr-injected",
            "X-Trace",
            "a\r\nAuthorization: Bearer x",
            &["x-trace", "not a valid header value"],
        ),
    ] {
        let marker = format!("{name}-bad");
        refused_on_predict(
            &mut serving,
            &server,
            "hostile",
            name,
            (
                &good_route(name),
                &route(&localhost, &marker, &[(header, value)]),
                &marker,
            ),
            expect,
        )
        .await;
    }

    // Hosts: the hostile target allows the name localhost, not the address behind it.
    refused_on_predict(
        &mut serving,
        &server,
        "hostile",
        "host-literal",
        (
            &good_route("host-literal"),
            &route(&format!("http://127.0.0.1:{p}"), "host-literal-bad", &[]),
            "host-literal-bad",
        ),
        &["address 127.0.0.1", "targets.hostile.routes.cidrs"],
    )
    .await;
    let message = refused_on_predict(
        &mut serving,
        &server,
        "hostile",
        "host-userinfo",
        (
            &good_route("host-userinfo"),
            &route(
                &format!("http://admin:hunter2@localhost:{p}"),
                "host-userinfo-bad",
                &[],
            ),
            "host-userinfo-bad",
        ),
        &["carries user info"],
    )
    .await;
    assert!(!message.contains("hunter2"), "{message}");
    refused_on_predict(
        &mut serving,
        &server,
        "hostile",
        "host-scheme",
        (
            &good_route("host-scheme"),
            &route(&format!("ftp://localhost:{p}"), "host-scheme-bad", &[]),
            "host-scheme-bad",
        ),
        &["scheme ftp", "targets.hostile.routes.schemes"],
    )
    .await;

    // Never, whatever the config says. The open target allows every range; 0.0.0.0 really
    // reaches the model server on this machine, so the refusal is what keeps it out.
    let mut probe = TcpStream::connect(("0.0.0.0", p)).await.unwrap();
    probe
        .write_all(b"GET /v2/models/reachable/ready HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = probe.read_to_end(&mut sink).await;
    assert_eq!(server.requests("reachable").len(), 1);
    let open_good = |m: &str| route(&format!("http://127.0.0.1:{p}"), m, &[]);
    for (name, url, expect) in [
        (
            "never-unspecified",
            format!("http://0.0.0.0:{p}"),
            "address 0.0.0.0 is the unspecified address, which is never allowed",
        ),
        (
            "never-metadata",
            "http://169.254.169.254/latest/meta-data".to_string(),
            "address 169.254.169.254 is the cloud instance metadata address",
        ),
        (
            "never-metadata-decimal",
            "http://2852039166/".to_string(),
            "address 169.254.169.254 is the cloud instance metadata address",
        ),
        (
            "never-mapped",
            format!("http://[::ffff:169.254.169.254]:{p}"),
            "is the cloud instance metadata address",
        ),
        (
            "never-link-local",
            format!("http://[fe80::1]:{p}"),
            "address fe80::1 is link-local, which is never allowed",
        ),
        (
            "never-aws-v6",
            "http://[fd00:ec2::254]/".to_string(),
            "never allowed",
        ),
    ] {
        let marker = format!("{name}-bad");
        refused_on_predict(
            &mut serving,
            &server,
            "open",
            name,
            (&open_good(name), &route(&url, &marker, &[]), &marker),
            &[expect],
        )
        .await;
    }
    // The open target may set Host, e.g. to pick one service behind an ingress.
    let hosted = deploy(
        &mut serving,
        "open",
        "hosted",
        &route(
            &format!("http://127.0.0.1:{p}"),
            "hosted",
            &[("Host", "hosted.models.internal")],
        ),
    )
    .await;
    wait_ready(&serving, &hosted.id).await;
    predict(&mut serving, "hosted").await.unwrap();
    let sent = server.requests("/hosted/infer");
    assert!(
        sent[0]
            .headers
            .contains(&("host".into(), "hosted.models.internal".into())),
        "{sent:?}"
    );

    // A name is judged by where it resolves: localhost is loopback, outside 10.0.0.0/8.
    refused_on_probe(
        &mut serving,
        &server,
        "narrow",
        "dns-narrow",
        (&route(&localhost, "dns-narrow-bad", &[]), "dns-narrow-bad"),
        &[
            "host localhost resolves to 127.0.0.1",
            "targets.narrow.routes.hosts",
            "targets.narrow.routes.cidrs",
        ],
    )
    .await;
    // A target the operator gave no policy goes nowhere, and says which key to set.
    refused_on_probe(
        &mut serving,
        &server,
        "closed",
        "closed",
        (&route(&localhost, "closed-bad", &[]), "closed-bad"),
        &[
            "host localhost is not allowed",
            "targets.closed.routes.hosts",
        ],
    )
    .await;

    // Everything else kept serving: the hostile target's good route and the local model.
    assert_eq!(
        predict(&mut serving, "good").await.unwrap().model_name,
        "good"
    );
    let ready = wait_ready(&serving, &iris.id).await;
    assert!(ready.url.starts_with("http://127.0.0.1:"), "{}", ready.url);
    let resp = serving
        .predict(request("iris", &ROWS))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.outputs[0].int64_contents,
        expected(&file_path(&job.output_uri))
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (_d, gw) = gateway().await;
    let server = ModelServer::start().await;
    let mut serving = gw.serving().await;
    let localhost = format!("http://localhost:{}", server.port);
    let ep = deploy(
        &mut serving,
        "hostile",
        "redirect",
        &route(&localhost, "redirect", &[]),
    )
    .await;
    wait_ready(&serving, &ep.id).await;
    let err = predict(&mut serving, "redirect").await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{}", err.message());
    assert_mentions(
        "redirect",
        err.message(),
        &[
            "redirect (307)",
            "/v2/models/elsewhere/infer",
            "does not follow",
        ],
    );
    assert_eq!(server.requests("/redirect/infer").len(), 1);
    assert!(
        server.requests("elsewhere").is_empty(),
        "the redirect was followed: {:?}",
        server.all_paths()
    );
}

#[tokio::test]
async fn response_bodies_are_capped() {
    let (_d, gw) = gateway().await;
    let server = ModelServer::start().await;
    let mut serving = gw.serving().await;
    let localhost = format!("http://localhost:{}", server.port);
    for model in ["endless", "big", "fine"] {
        let ep = deploy(
            &mut serving,
            "hostile",
            model,
            &route(&localhost, model, &[]),
        )
        .await;
        wait_ready(&serving, &ep.id).await;
    }
    // A body with no end is cut at the cap rather than read until memory runs out.
    for model in ["endless", "big"] {
        let err = predict(&mut serving, model).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
        assert_mentions(
            model,
            err.message(),
            &[
                "answered more than 65536 bytes",
                "targets.hostile.routes.max_response_bytes",
            ],
        );
    }
    assert_eq!(
        predict(&mut serving, "fine").await.unwrap().model_name,
        "fine"
    );
}

#[tokio::test]
async fn the_model_name_stays_one_path_segment() {
    let (_d, gw) = gateway().await;
    let server = ModelServer::start().await;
    let mut serving = gw.serving().await;
    let localhost = format!("http://localhost:{}", server.port);
    let ep = deploy(
        &mut serving,
        "hostile",
        "escape",
        &route(&localhost, "../../escape?q=1#f", &[]),
    )
    .await;
    // The probe reaches the model's own ready path, so the endpoint comes up.
    wait_ready(&serving, &ep.id).await;
    let resp = predict(&mut serving, "escape").await.unwrap();
    assert_eq!(resp.model_name, "..%2F..%2Fescape%3Fq%3D1%23f");
    assert!(
        server
            .all_paths()
            .iter()
            .any(|p| p == "/v2/models/..%2F..%2Fescape%3Fq%3D1%23f/infer"),
        "{:?}",
        server.all_paths()
    );
    assert!(
        server
            .all_paths()
            .iter()
            .all(|p| p.starts_with("/v2/models/..%2F..%2Fescape%3Fq%3D1%23f/")),
        "a request left the model's path: {:?}",
        server.all_paths()
    );

    // The names every URL parser collapses are refused instead.
    let dots = deploy(
        &mut serving,
        "hostile",
        "dots",
        &route(&localhost, "..", &[]),
    )
    .await;
    let probed = wait_endpoint(&serving, &dots.id, "the dots probe to be refused", |e| {
        e.message.contains("route refused")
    })
    .await;
    assert_mentions(
        "dots",
        &probed.message,
        &["model name \"..\" cannot be a path segment"],
    );
}
