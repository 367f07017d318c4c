//! What operators see of a running gateway: Prometheus metrics on their own port, OpenTelemetry
//! traces over OTLP, and logs as text or JSON lines.

pub mod metrics;
pub mod telemetry;

pub use metrics::metrics;
