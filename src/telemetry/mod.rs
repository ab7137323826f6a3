//! Everything rampart reports about itself, as named events in one place.
//!
//! Owns: the metric families (`metrics.rs`) and their label sets (`labels.rs`), their exposition,
//! span export (`otel.rs`), and the named events that are only a metric update. Events that also raise an alert or read the
//! supervision journal live with their subject (`supervision::events`).
//!
//! The ground floor: imports nothing of rampart, so everything can report through it.
//! Must never: block or panic; it is called from actor threads and the watchdog.

pub mod exposition;
mod labels;
mod metrics;
#[cfg(feature = "otel")]
pub mod otel;

pub use labels::{
    ActorLabels, DbLabels, HttpLabels, HttpRouteLabels, KindLabels, LimitLabels, NameLabels, OutcomeLabels,
    PanicSource, PartitionLabels, ReasonLabels, SinkLabels, SourceLabels,
};
pub use metrics::{metrics, Metrics};

/// A supervised actor came into existence: its series start at 0.
pub fn actor_spawned(metric_label: &str) {
    metrics().register_actor(metric_label);
}

/// A supervised actor panicked (contained at its mailbox boundary).
pub fn actor_panicked() {
    metrics().panics.get_or_create(&SourceLabels::of(PanicSource::actor)).inc();
}

/// A supervised actor was restarted with fresh state.
pub fn actor_restarted(metric_label: &str) {
    metrics().actor_restarts.get_or_create(&ActorLabels { actor: metric_label.to_owned() }).inc();
}

/// The current trace id (hex), when OpenTelemetry export is compiled in and active.
pub fn current_trace_id() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        otel::current_trace_id()
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Whether spans are exported (feature `otel` and `OTEL_EXPORTER_OTLP_ENDPOINT` set).
#[inline]
pub fn tracing_exported() -> bool {
    #[cfg(feature = "otel")]
    {
        otel::active()
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// A record went to dead letters (`message`, `delivery` or `quarantine`).
pub fn dead_lettered(kind: &str) {
    metrics().dead_letters.get_or_create(&KindLabels { kind: kind.to_owned() }).inc();
}

/// A request was refused by the per-user limit `limit` (`ws_connections_per_user`, ...).
pub fn limit_refused(limit: &str) {
    metrics().limits_refused.get_or_create(&LimitLabels { limit: limit.to_owned() }).inc();
}

/// A send was refused with error `code` (`invalid`, `rate_limited`, `unavailable`, ...).
pub fn message_rejected(code: &str) {
    metrics().messages_rejected.get_or_create(&ReasonLabels { reason: code.to_owned() }).inc();
}
