//! The gateway's tracing subscriber: logs to stderr as text or JSON lines, and, when a
//! collector is configured, every span exported over OTLP — one per RPC (`rpc`), a child per
//! plugin call (`plugin.call`) and per host capability call beneath that.

use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, ObservabilityConfig};

/// Flushes what is still buffered when the gateway stops.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("mlgw: flushing traces: {e}");
        }
    }
}

/// The default filter, unless `MLGW_LOG` says otherwise. The exporter's own transport logs
/// are kept quiet: each of its requests would otherwise make spans of its own to export.
fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("MLGW_LOG").unwrap_or_else(|_| {
        "info,h2=warn,hyper=warn,tonic=warn,tower=warn,opentelemetry=warn".into()
    })
}

/// Installs the subscriber. Must run inside the tokio runtime when traces are exported (the
/// OTLP client is a tonic channel).
pub fn init(cfg: &ObservabilityConfig) -> anyhow::Result<Telemetry> {
    let (text, json) = match cfg.log_format {
        LogFormat::Text => (
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let provider = match &cfg.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(10))
                .build()
                .with_context(|| format!("the OTLP exporter for {endpoint}"))?;
            // A second between batches: traces show up while someone is looking.
            let batch = BatchSpanProcessor::builder(exporter)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(Duration::from_secs(1))
                        .build(),
                )
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_span_processor(batch)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(cfg.service_name.clone())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("mlgw")));
    tracing_subscriber::registry()
        .with(filter())
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}

/// Logs for commands that are not the gateway (the CLI, the supervisor): text to stderr.
pub fn init_plain() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .try_init();
}
