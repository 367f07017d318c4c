//! What operators see, through the real gateway binary: `/metrics` scraped while a real job
//! runs and after, its numbers checked against what happened; a Submit's trace arriving at an
//! OTLP receiver this test runs on loopback, the plugin call a child of the RPC; JSON logs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlgw::api::pb;
use mlgw_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

const BIN: &str = env!("CARGO_BIN_EXE_mlgw-under-test");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(observability: &str) -> String {
    format!(
        "[observability]\n{observability}\n[targets.local]\nplugin = \"local\"\n[targets.local.grants.process]\n"
    )
}

async fn scrape(port: u16) -> String {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    resp.text().await.unwrap()
}

/// The sample `name{labels}` in Prometheus' text format, if exported.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let got: HashMap<&str, &str> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        let wanted = labels.iter().all(|(k, v)| got.get(k) == Some(v));
        (wanted && got.len() == labels.len()).then(|| value.parse().unwrap())
    })
}

#[tokio::test]
async fn metrics_follow_a_real_job() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gw = Gateway::start(
        BIN,
        &dir.path().join("data"),
        Some(&config(&format!("metrics_listen = \"127.0.0.1:{port}\""))),
    )
    .await;
    let mut c = gw.training().await;
    let before = scrape(port).await;
    let calls = |text: &str, op: &str| {
        sample(
            text,
            "mlgw_plugin_call_duration_seconds_count",
            &[("target", "local"), ("operation", op)],
        )
        .unwrap_or(0.0)
    };
    let jobs = |text: &str, state: &str| {
        sample(text, "mlgw_jobs", &[("target", "local"), ("state", state)]).unwrap()
    };
    assert_eq!(jobs(&before, "running"), 0.0);

    // A job that runs until the test lets it end.
    let gate = dir.path().join("gate");
    let cmd = format!("while [ ! -e {} ]; do sleep 0.1; done", gate.display());
    let job = submit(&mut c, "local", spec(&["sh", "-c", &cmd]))
        .await
        .unwrap();
    let running = wait_for(Duration::from_secs(60), "the job to be running", || async {
        let text = scrape(port).await;
        (jobs(&text, "running") == 1.0).then_some(text)
    })
    .await;
    assert_eq!(calls(&running, "submit_training"), 1.0, "{running}");
    assert_eq!(calls(&running, "validate_training"), 1.0);
    assert!(calls(&running, "training_status") >= 1.0);
    assert!(sample(&running, "mlgw_store_size_bytes", &[]).unwrap() > 0.0);
    // The submit's insert and its backend handle are writes of the store's writer, and the
    // insert answered after a flush of it.
    assert!(sample(&running, "mlgw_store_writes_total", &[]).unwrap() >= 2.0);
    assert!(sample(&running, "mlgw_store_write_batches_total", &[]).unwrap() >= 1.0);
    assert!(sample(&running, "mlgw_store_flushes_total", &[]).unwrap() >= 1.0);
    assert!(sample(&running, "mlgw_store_flush_seconds_total", &[]).unwrap() > 0.0);
    assert!(
        sample(
            &running,
            "mlgw_reconcile_sweep_duration_seconds_count",
            &[("target", "local")]
        )
        .unwrap()
            >= 1.0
    );

    // The plugin refuses a spec: counted as its kind of failure.
    let mut gpu = spec(&["true"]);
    gpu.resources = Some(pb::Resources {
        gpus: 1,
        ..Default::default()
    });
    let refused = submit(&mut c, "local", gpu).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let text = scrape(port).await;
    assert_eq!(
        sample(
            &text,
            "mlgw_plugin_errors_total",
            &[("target", "local"), ("kind", "invalid_spec")]
        ),
        Some(1.0),
        "{text}"
    );

    std::fs::write(&gate, b"").unwrap();
    let done = wait_job(&mut c, &job.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded);
    let after = scrape(port).await;
    assert_eq!(jobs(&after, "running"), 0.0);
    assert_eq!(jobs(&after, "succeeded"), 1.0);
}

/// An OTLP trace receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(v) => Some(v.clone()),
            _ => None,
        }
    })
}

#[tokio::test]
async fn a_submit_is_traced_with_its_plugin_calls_as_children() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = Receiver::default();
    let serve = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serve))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with_env(
        BIN,
        &dir.path().join("data"),
        Some(&config(&format!(
            "otlp_endpoint = \"http://127.0.0.1:{port}\"\nservice_name = \"mlgw-under-test\"\nlog_format = \"json\""
        ))),
        vec![("MLGW_LOG".into(), "info,h2=warn,hyper=warn,tonic=warn,tower=warn".into())],
    )
    .await;
    let mut c = gw.training().await;
    let job = submit(&mut c, "local", spec(&["true"])).await.unwrap();

    let (rpc, calls) = wait_for(
        Duration::from_secs(60),
        "the Submit's spans at the receiver",
        || async {
            let spans = receiver.0.lock().unwrap().clone();
            let rpc = spans.iter().find(|s| {
                s.name == "rpc"
                    && attr(s, "rpc.method").as_deref() == Some("/mlgw.v1.TrainingService/Submit")
            })?;
            let calls: Vec<Span> = spans
                .iter()
                .filter(|s| s.name == "plugin.call" && s.parent_span_id == rpc.span_id)
                .cloned()
                .collect();
            (calls.len() >= 2).then(|| (rpc.clone(), calls))
        },
    )
    .await;
    let ops: Vec<String> = calls.iter().filter_map(|s| attr(s, "operation")).collect();
    assert!(ops.contains(&"validate_training".to_string()), "{ops:?}");
    assert!(ops.contains(&"submit_training".to_string()), "{ops:?}");
    for s in &calls {
        assert_eq!(s.trace_id, rpc.trace_id);
        assert_eq!(
            attr(s, "mlgw.target").as_deref(),
            Some("local"),
            "{:?}",
            s.attributes
        );
        assert_eq!(attr(s, "resource").as_deref(), Some(job.id.as_str()));
        assert!(s.start_time_unix_nano >= rpc.start_time_unix_nano);
        assert!(s.end_time_unix_nano <= rpc.end_time_unix_nano);
    }
    // The local plugin starts its process through the process capability: a span beneath
    // the submit call.
    let submit_call = calls
        .iter()
        .find(|s| attr(s, "operation").as_deref() == Some("submit_training"))
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the process capability's span",
        || async {
            let spans = receiver.0.lock().unwrap().clone();
            spans
                .iter()
                .any(|s| s.name == "capability.process" && s.parent_span_id == submit_call.span_id)
                .then_some(())
        },
    )
    .await;

    // Logs are JSON lines, the service's own among them.
    let log = gw.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("mlgw serving")));
}
