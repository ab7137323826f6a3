//! OpenTelemetry export (Cargo feature `otel`): spans over OTLP/HTTP, trace ids for logs and
//! crash records.
//!
//! Owns: the tracer provider (batch span processor on its own thread, blocking HTTP client, so
//! nothing here runs on an arbiter) and the process-wide "export is on" flag.
//!
//! Active only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads the standard
//! `OTEL_EXPORTER_OTLP_*` variables; `OTEL_SERVICE_NAME` overrides the service name `rampart`).
//! Without it the feature costs one relaxed atomic load per tracked message.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported (the endpoint was set and the exporter built).
#[inline]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped (at the very end of `main`).
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("rampart: flushing OpenTelemetry spans failed: {error}");
        }
    }
}

/// The tracing layer that turns spans into OpenTelemetry spans, when the endpoint is configured.
pub fn layer<S>() -> Result<Option<(impl Layer<S>, OtelGuard)>, String>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none_or(|endpoint| endpoint.is_empty()) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|error| format!("OpenTelemetry exporter: {error}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "rampart".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer("rampart");
    ACTIVE.store(true, Ordering::Relaxed);
    Ok(Some((tracing_opentelemetry::layer().with_tracer(tracer), OtelGuard { provider })))
}

/// The trace id of the current span, in hex, if it belongs to an exported trace.
pub fn current_trace_id() -> Option<String> {
    if !active() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}
