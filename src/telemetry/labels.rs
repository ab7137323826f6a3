//! The label sets of rampart's metric families: bounded values only (paths of dynamic actors
//! collapse to their group; reasons, kinds and outcomes are closed sets).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};

/// Where a panic happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase in the exposition")]
pub enum PanicSource {
    actor,
    http,
    task,
    thread,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: PanicSource,
    /// Route template for HTTP panics; empty for other sources (in PromQL an empty label value
    /// is the same as no label, so `rampart_panics_total{source="actor"}` matches).
    pub route: String,
}

impl SourceLabels {
    pub fn of(source: PanicSource) -> Self {
        Self { source, route: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartitionLabels {
    /// `writer`: the consumer group that stores messages.
    pub group: String,
    pub partition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SinkLabels {
    /// `stdout` or `file` for the log writer; `log`, `slack`, `webhook` for alerts.
    pub sink: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    /// `ws_connections_per_user`, `rtc_sockets_per_user`, `rooms_per_user`,
    /// `conversations_per_minute`.
    pub limit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route template (`/admin/actors`), never the raw path; `unmatched` for 404s.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpRouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActorLabels {
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct BuildLabels {
    pub(super) version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DbLabels {
    /// `storage` (rampart.db) or `search` (search.db).
    pub db: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: String,
}

impl OutcomeLabels {
    pub fn of(outcome: &str) -> Self {
        Self { outcome: outcome.to_owned() }
    }
}
