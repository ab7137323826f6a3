//! The Prometheus metrics rampart exports on `GET /metrics`, all in one place.
//!
//! Conventions: names start with `rampart_`, use base units (`_seconds`, `_bytes`), and counters
//! end in `_total` (added by the encoder). Every series that dashboards and alerts rely on exists
//! from start with value 0, so queries resolve before the first incident. Actor labels use the
//! actor's path, except members of dynamic groups (sessions, peers), which are labeled with the
//! group (`/root/sessions/*`) to keep cardinality bounded.
//!
//! Must never: block or allocate per increment beyond the first use of a label set.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{
    ActorLabels, BuildLabels, DbLabels, HttpLabels, HttpRouteLabels, KindLabels, LimitLabels, NameLabels,
    OutcomeLabels, PanicSource, PartitionLabels, ReasonLabels, SinkLabels, SourceLabels,
};

/// Latency buckets for HTTP requests: 1 ms to 10 s.
const HTTP_DURATION_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Batch sizes: 1 to 1000 messages.
const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
/// Commit and ack latency: 0.5 ms to 5 s.
const PIPELINE_DURATION_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Every metric family rampart exports.
pub struct Metrics {
    registry: Registry,
    /// Panics caught anywhere, by where they happened.
    pub panics: Family<SourceLabels, Counter>,
    /// Restarts of each actor (or dynamic group).
    pub actor_restarts: Family<ActorLabels, Counter>,
    /// Keyed messages quarantined after crashing their actor repeatedly.
    pub actor_quarantined: Counter,
    /// Stalls reported by the watchdog, by actor.
    pub actor_stalls: Family<ActorLabels, Counter>,
    /// Log events dropped because the log writer could not keep up.
    pub log_dropped: Counter,
    /// Write failures of a log destination (the other one keeps working).
    pub log_sink_errors: Family<SinkLabels, Counter>,
    /// Crash records written (every panic, whatever its source).
    pub crash_records: Counter,
    /// Alerts delivered to / dropped before a sink.
    pub alerts_sent: Family<SinkLabels, Counter>,
    pub alerts_dropped: Family<ReasonLabels, Counter>,
    /// Circuit breaker state by name: 0 closed, 1 half-open, 2 open.
    pub circuit_state: Family<NameLabels, Gauge>,
    /// HTTP requests answered, by method, route template and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Time to answer, by method and route template.
    pub http_duration: Family<HttpRouteLabels, Histogram>,
    /// Requests being handled right now.
    pub http_in_flight: Gauge,
    /// Outcome of the latest `/ready` evaluation: 2 pass, 1 warn, 0 fail (-1 before the first).
    pub readiness: Gauge,
    /// Latest system monitor sample.
    pub resident_memory: Gauge,
    pub heap_allocated: Gauge,
    pub threads: Gauge,
    pub live_actors: Gauge,
    pub mailbox_backlog: Gauge,
    /// Messages acked to clients (durably committed), new ones only.
    pub messages_stored: Counter,
    /// Sends refused, by error code (`invalid`, `forbidden`, `unavailable`, ...).
    pub messages_rejected: Family<ReasonLabels, Counter>,
    /// Messages per committed batch.
    pub batch_size: Histogram,
    /// Time of one successful batch commit (the transaction, fsync included).
    pub commit_duration: Histogram,
    /// Failed commit attempts (each retried with backoff).
    pub commit_failures: Counter,
    /// How long the oldest message of the latest committed batch waited (seconds), the
    /// adaptive in-flight limit, the messages in flight, and the sends refused over the limit.
    pub pipeline_queue_delay: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub pipeline_admission_limit: Gauge,
    pub pipeline_in_flight: Gauge,
    pub messages_shed: Counter,
    /// Storage jobs skipped because their caller had timed out before they started.
    pub storage_jobs_abandoned: Counter,
    /// Records moved to dead letters, by kind (`message`, `delivery`, `quarantine`).
    pub dead_letters: Family<KindLabels, Counter>,
    /// Messages pushed to connected clients (including redeliveries).
    pub deliveries_pushed: Counter,
    /// Deliveries the cleanup job moved back to pending.
    pub deliveries_requeued: Counter,
    /// Pending deliveries pushed to a live connection by a catch-up (the cleanup job's backstop
    /// or requeue, a restarted delivery hub) rather than by their commit's announcement.
    pub deliveries_caught_up: Counter,
    /// Commit announcements the delivery hub could not take (full mailbox): their deliveries
    /// stay pending until the backstop pushes them.
    pub deliveries_unannounced: Counter,
    /// Messages added to the search index, and indexing failures.
    pub search_indexed: Counter,
    pub search_index_failures: Counter,
    /// Open WebSocket connections, and connections closed for falling behind.
    pub ws_connections: Gauge,
    pub ws_slow_clients: Counter,
    /// Bytes queued for every WebSocket client (`/ws` and `/rtc`), the process's budget for them
    /// (`ws.outbound_total_bytes`), and connections cut because the process was over it.
    pub ws_outbound_bytes: Gauge,
    pub ws_outbound_budget_bytes: Gauge,
    pub ws_outbox_reclaimed: Counter,
    /// Requests refused by a per-user limit, by limit.
    pub limits_refused: Family<LimitLabels, Counter>,
    /// JWKS fetches by outcome, and the keys the cache holds.
    pub jwks_refreshes: Family<OutcomeLabels, Counter>,
    pub jwks_keys: Gauge,
    /// Size of each SQLite write-ahead log, and how long blocking checkpoints held writers.
    pub wal_bytes: Family<DbLabels, Gauge>,
    pub checkpoint_duration: Family<DbLabels, Histogram>,
    /// Kafka transport: records not yet stored per partition (stored-offset lag), producer
    /// records awaiting their delivery report, delivery-report latency, dead-letter-topic records.
    pub kafka_consumer_lag: Family<PartitionLabels, Gauge>,
    /// Their sum for the writer group on this process: exists from start (0 when embedded).
    pub kafka_writer_lag: Gauge,
    pub kafka_producer_in_flight: Gauge,
    pub kafka_delivery_duration: Histogram,
    pub kafka_dead_letters: Counter,
    /// SFU: open rooms, participants and published tracks; RTP packets written to subscribers;
    /// keyframe requests relayed to publishers (`sent`) or absorbed by the 500 ms throttle
    /// (`throttled`); RTP packets a subscriber's connection refused (not yet negotiated, closed);
    /// RTP packets dropped because a subscriber's connection fell more than 256 packets behind.
    pub sfu_rooms: Gauge,
    pub sfu_participants: Gauge,
    pub sfu_tracks: Gauge,
    pub sfu_forwarded_packets: Counter,
    pub sfu_keyframe_requests: Family<OutcomeLabels, Counter>,
    pub sfu_write_errors: Counter,
    pub sfu_dropped_packets: Counter,
    /// The embedded TURN relay: allocations open now; requests answered 400 (bad, expired or
    /// wrongly signed credentials, malformed requests); permissions, channels or packets refused because the peer is not one of the
    /// deployment's media addresses (an open relay would forward anywhere); bytes relayed by
    /// allocations that closed; TCP/TLS connections refused at the `max_connections` limit;
    /// allocations refused at a credential's quota.
    pub turn_allocations: Gauge,
    pub turn_auth_refused: Counter,
    pub turn_peers_refused: Counter,
    pub turn_relayed_bytes: Counter,
    pub turn_connections_refused: Counter,
    pub turn_quota_refused: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("rampart");
        let metrics = Self {
            panics: Family::default(),
            actor_restarts: Family::default(),
            actor_quarantined: Counter::default(),
            actor_stalls: Family::default(),
            log_dropped: Counter::default(),
            log_sink_errors: Family::default(),
            crash_records: Counter::default(),
            alerts_sent: Family::default(),
            alerts_dropped: Family::default(),
            circuit_state: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| Histogram::new(HTTP_DURATION_BUCKETS.iter().copied())),
            http_in_flight: Gauge::default(),
            readiness: Gauge::default(),
            resident_memory: Gauge::default(),
            heap_allocated: Gauge::default(),
            threads: Gauge::default(),
            live_actors: Gauge::default(),
            mailbox_backlog: Gauge::default(),
            messages_stored: Counter::default(),
            messages_rejected: Family::default(),
            batch_size: Histogram::new(BATCH_SIZE_BUCKETS.iter().copied()),
            commit_duration: Histogram::new(PIPELINE_DURATION_BUCKETS.iter().copied()),
            commit_failures: Counter::default(),
            pipeline_queue_delay: Gauge::default(),
            pipeline_admission_limit: Gauge::default(),
            pipeline_in_flight: Gauge::default(),
            messages_shed: Counter::default(),
            storage_jobs_abandoned: Counter::default(),
            dead_letters: Family::default(),
            deliveries_pushed: Counter::default(),
            deliveries_requeued: Counter::default(),
            deliveries_caught_up: Counter::default(),
            deliveries_unannounced: Counter::default(),
            search_indexed: Counter::default(),
            search_index_failures: Counter::default(),
            ws_connections: Gauge::default(),
            ws_slow_clients: Counter::default(),
            ws_outbound_bytes: Gauge::default(),
            ws_outbound_budget_bytes: Gauge::default(),
            ws_outbox_reclaimed: Counter::default(),
            limits_refused: Family::default(),
            jwks_refreshes: Family::default(),
            jwks_keys: Gauge::default(),
            wal_bytes: Family::default(),
            checkpoint_duration: Family::new_with_constructor(|| {
                Histogram::new(PIPELINE_DURATION_BUCKETS.iter().copied())
            }),
            kafka_consumer_lag: Family::default(),
            kafka_writer_lag: Gauge::default(),
            kafka_producer_in_flight: Gauge::default(),
            kafka_delivery_duration: Histogram::new(PIPELINE_DURATION_BUCKETS.iter().copied()),
            kafka_dead_letters: Counter::default(),
            sfu_rooms: Gauge::default(),
            sfu_participants: Gauge::default(),
            sfu_tracks: Gauge::default(),
            sfu_forwarded_packets: Counter::default(),
            sfu_keyframe_requests: Family::default(),
            sfu_write_errors: Counter::default(),
            sfu_dropped_packets: Counter::default(),
            turn_allocations: Gauge::default(),
            turn_auth_refused: Counter::default(),
            turn_peers_refused: Counter::default(),
            turn_relayed_bytes: Counter::default(),
            turn_connections_refused: Counter::default(),
            turn_quota_refused: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("panics", "Panics caught, by where they happened", metrics.panics.clone());
        registry.register("actor_restarts", "Restarts of each actor", metrics.actor_restarts.clone());
        registry.register(
            "actor_quarantined",
            "Keyed messages quarantined after crashing their actor repeatedly",
            metrics.actor_quarantined.clone(),
        );
        registry.register("actor_stalls", "Actor stalls reported by the watchdog", metrics.actor_stalls.clone());
        registry.register(
            "log_dropped",
            "Log events dropped because the writer could not keep up",
            metrics.log_dropped.clone(),
        );
        registry.register(
            "log_sink_errors",
            "Write failures of a log destination, by sink",
            metrics.log_sink_errors.clone(),
        );
        registry.register("crash_records", "Crash records captured", metrics.crash_records.clone());
        registry.register("alerts_sent", "Alert notifications delivered, by sink", metrics.alerts_sent.clone());
        registry.register(
            "alerts_dropped",
            "Alerts dropped before delivery, by reason",
            metrics.alerts_dropped.clone(),
        );
        registry.register(
            "circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            metrics.circuit_state.clone(),
        );
        registry.register("http_requests", "HTTP requests answered", metrics.http_requests.clone());
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request",
            Unit::Seconds,
            metrics.http_duration.clone(),
        );
        metrics.readiness.set(-1);
        registry.register(
            "readiness_status",
            "Latest /ready outcome (updated on each probe): 2 pass, 1 warn, 0 fail, -1 not yet probed",
            metrics.readiness.clone(),
        );
        registry.register("http_requests_in_flight", "HTTP requests being handled", metrics.http_in_flight.clone());
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory at the latest system monitor sample",
            Unit::Bytes,
            metrics.resident_memory.clone(),
        );
        registry.register_with_unit(
            "process_heap_allocated",
            "Live heap (allocated, not yet freed) at the latest system monitor sample",
            Unit::Bytes,
            metrics.heap_allocated.clone(),
        );
        registry.register("process_threads", "OS threads at the latest sample", metrics.threads.clone());
        registry.register("actors_live", "Actors not stopped, at the latest sample", metrics.live_actors.clone());
        registry.register(
            "mailbox_backlog",
            "Messages waiting in mailboxes, at the latest sample",
            metrics.mailbox_backlog.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION").to_owned() }),
        );
        registry.register("messages_stored", "Messages durably committed and acked", metrics.messages_stored.clone());
        registry.register("messages_rejected", "Sends refused, by error code", metrics.messages_rejected.clone());
        registry.register("batch_size", "Messages per committed batch", metrics.batch_size.clone());
        registry.register_with_unit(
            "commit_duration",
            "Time of one successful batch commit",
            Unit::Seconds,
            metrics.commit_duration.clone(),
        );
        registry.register("commit_failures", "Failed batch commit attempts", metrics.commit_failures.clone());
        registry.register_with_unit(
            "pipeline_queue_delay",
            "How long the oldest message of the latest committed batch waited since it was taken",
            Unit::Seconds,
            metrics.pipeline_queue_delay.clone(),
        );
        registry.register(
            "pipeline_admission_limit",
            "Messages the pipeline admits at once (adapts to keep waits under pipeline.max_queue_delay)",
            metrics.pipeline_admission_limit.clone(),
        );
        registry.register(
            "pipeline_in_flight",
            "Messages admitted and not answered yet (at the latest commit)",
            metrics.pipeline_in_flight.clone(),
        );
        registry.register(
            "storage_jobs_abandoned",
            "Storage jobs skipped because their caller had already timed out",
            metrics.storage_jobs_abandoned.clone(),
        );
        registry.register(
            "messages_shed",
            "Sends refused unavailable because the pipeline was at its admission limit",
            metrics.messages_shed.clone(),
        );
        registry.register("dead_letters", "Records moved to dead letters, by kind", metrics.dead_letters.clone());
        registry.register(
            "deliveries_pushed",
            "Messages pushed to connected clients",
            metrics.deliveries_pushed.clone(),
        );
        registry.register(
            "deliveries_requeued",
            "Deliveries moved back to pending by the cleanup job",
            metrics.deliveries_requeued.clone(),
        );
        registry.register(
            "deliveries_caught_up",
            "Pending deliveries pushed to a live connection by a catch-up (backstop, requeue, hub restart), not by their commit's announcement",
            metrics.deliveries_caught_up.clone(),
        );
        registry.register(
            "deliveries_unannounced",
            "Commit announcements the delivery hub could not take (full mailbox); the backstop pushes those deliveries",
            metrics.deliveries_unannounced.clone(),
        );
        registry.register("search_indexed", "Messages added to the search index", metrics.search_indexed.clone());
        registry.register(
            "search_index_failures",
            "Failed indexing steps (retried on the next poll)",
            metrics.search_index_failures.clone(),
        );
        registry.register("ws_connections", "Open WebSocket connections", metrics.ws_connections.clone());
        registry.register(
            "ws_slow_clients",
            "WebSocket clients disconnected for falling behind",
            metrics.ws_slow_clients.clone(),
        );
        registry.register_with_unit(
            "ws_outbound",
            "Bytes queued for WebSocket clients (/ws and /rtc) to read",
            Unit::Bytes,
            metrics.ws_outbound_bytes.clone(),
        );
        registry.register_with_unit(
            "ws_outbound_budget",
            "The process's budget for bytes queued for WebSocket clients (ws.outbound_total_bytes)",
            Unit::Bytes,
            metrics.ws_outbound_budget_bytes.clone(),
        );
        registry.register(
            "ws_outbox_reclaimed",
            "WebSocket clients cut because the process was over its outbound budget (largest queues first)",
            metrics.ws_outbox_reclaimed.clone(),
        );
        registry.register(
            "limits_refused",
            "Requests refused by a per-user limit, by limit",
            metrics.limits_refused.clone(),
        );
        registry.register(
            "jwks_refreshes",
            "Fetches of the identity provider's key set, by outcome",
            metrics.jwks_refreshes.clone(),
        );
        registry.register("jwks_keys", "Signing keys in the cached key set", metrics.jwks_keys.clone());
        for outcome in ["ok", "error"] {
            drop(metrics.jwks_refreshes.get_or_create(&OutcomeLabels::of(outcome)));
        }
        registry.register_with_unit(
            "sqlite_wal",
            "Size of each SQLite write-ahead log",
            Unit::Bytes,
            metrics.wal_bytes.clone(),
        );
        registry.register_with_unit(
            "sqlite_checkpoint",
            "Blocking WAL checkpoints (restart, truncate): time writers waited",
            Unit::Seconds,
            metrics.checkpoint_duration.clone(),
        );
        registry.register(
            "kafka_consumer_lag",
            "Records of each partition not yet stored (stored-offset lag of the writer group)",
            metrics.kafka_consumer_lag.clone(),
        );
        registry.register(
            "kafka_writer_lag",
            "Records not yet stored on the partitions this process's writer owns (the sum of its rampart_kafka_consumer_lag)",
            metrics.kafka_writer_lag.clone(),
        );
        registry.register(
            "kafka_producer_in_flight",
            "Records sent to Kafka awaiting their delivery report",
            metrics.kafka_producer_in_flight.clone(),
        );
        registry.register_with_unit(
            "kafka_delivery",
            "Time from sending a record to its delivery report",
            Unit::Seconds,
            metrics.kafka_delivery_duration.clone(),
        );
        registry.register(
            "kafka_dead_letters",
            "Records published to the dead-letter topic",
            metrics.kafka_dead_letters.clone(),
        );
        registry.register("sfu_rooms", "Open SFU rooms", metrics.sfu_rooms.clone());
        registry.register("sfu_participants", "Participants in SFU rooms", metrics.sfu_participants.clone());
        registry.register("sfu_tracks", "Tracks published in SFU rooms", metrics.sfu_tracks.clone());
        registry.register(
            "sfu_forwarded_packets",
            "RTP packets the SFU wrote to subscribers",
            metrics.sfu_forwarded_packets.clone(),
        );
        registry.register(
            "sfu_keyframe_requests",
            "Subscribers' keyframe requests (PLI/FIR): relayed to the publisher (sent) or absorbed by the throttle",
            metrics.sfu_keyframe_requests.clone(),
        );
        registry.register(
            "sfu_write_errors",
            "RTP packets a subscriber connection refused (not negotiated yet, or closing)",
            metrics.sfu_write_errors.clone(),
        );
        registry.register(
            "sfu_dropped_packets",
            "RTP packets dropped because a subscriber connection fell more than 256 packets behind (the oldest go)",
            metrics.sfu_dropped_packets.clone(),
        );
        registry.register(
            "turn_allocations",
            "Open allocations on the embedded TURN relay",
            metrics.turn_allocations.clone(),
        );
        registry.register(
            "turn_auth_refused",
            "TURN requests answered 400: an unknown, expired or wrongly signed credential, or a malformed request",
            metrics.turn_auth_refused.clone(),
        );
        registry.register(
            "turn_peers_refused",
            "TURN permissions, channel bindings and packets refused: the peer is not a media address of this deployment",
            metrics.turn_peers_refused.clone(),
        );
        registry.register(
            "turn_relayed_bytes",
            "Bytes relayed by TURN allocations, counted when each closes",
            metrics.turn_relayed_bytes.clone(),
        );
        registry.register(
            "turn_connections_refused",
            "TURN TCP/TLS connections closed at accept: sfu.turn.max_connections were open",
            metrics.turn_connections_refused.clone(),
        );
        registry.register(
            "turn_quota_refused",
            "TURN allocations refused (486): the credential held sfu.turn.max_allocations_per_credential",
            metrics.turn_quota_refused.clone(),
        );
        for outcome in ["sent", "throttled"] {
            drop(metrics.sfu_keyframe_requests.get_or_create(&OutcomeLabels::of(outcome)));
        }
        for db in ["storage", "search"] {
            drop(metrics.wal_bytes.get_or_create(&DbLabels { db: db.into() }));
        }
        for kind in ["message", "delivery", "quarantine", "index"] {
            drop(metrics.dead_letters.get_or_create(&KindLabels { kind: kind.into() }));
        }
        for sink in ["log", "slack", "webhook"] {
            drop(metrics.alerts_sent.get_or_create(&SinkLabels { sink: sink.into() }));
        }
        for limit in ["ws_connections_per_user", "rtc_sockets_per_user", "rooms_per_user", "conversations_per_minute"] {
            drop(metrics.limits_refused.get_or_create(&LimitLabels { limit: limit.into() }));
        }
        for reason in ["queue_full", "outbox_full", "failed", "too_many_groups"] {
            drop(metrics.alerts_dropped.get_or_create(&ReasonLabels { reason: reason.into() }));
        }
        for sink in ["stdout", "file"] {
            drop(metrics.log_sink_errors.get_or_create(&SinkLabels { sink: sink.into() }));
        }
        for source in [PanicSource::actor, PanicSource::http, PanicSource::task, PanicSource::thread] {
            drop(metrics.panics.get_or_create(&SourceLabels::of(source)));
        }
        Self { registry, ..metrics }
    }

    /// Makes an actor's series exist (at 0) as soon as the actor does.
    pub fn register_actor(&self, label: &str) {
        let labels = ActorLabels { actor: label.to_owned() };
        drop(self.actor_restarts.get_or_create(&labels));
        drop(self.actor_stalls.get_or_create(&labels));
    }

    /// The OpenMetrics text exposition of everything above.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail (fmt::Write on String is infallible).
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlabeled_families_are_exported_from_start_with_conventional_names() {
        // Per-actor families appear with the first actor (see tests/it/metrics.rs).
        let text = metrics().render();
        for line in [
            "rampart_panics_total{source=\"actor\",route=\"\"} 0",
            "rampart_panics_total{source=\"http\",route=\"\"} 0",
            "rampart_actor_quarantined_total 0",
            "rampart_log_dropped_total ",
            "# TYPE rampart_crash_records counter",
            "rampart_alerts_sent_total{sink=\"slack\"} 0",
            "rampart_alerts_dropped_total{reason=\"queue_full\"} 0",
            "# TYPE rampart_process_resident_memory_bytes gauge",
            "rampart_build_info{version=",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
