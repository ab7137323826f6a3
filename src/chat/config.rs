//! Configuration of the chat components: WebSocket sessions, the ingest pipeline, delivery and
//! search. Each struct is one section of `config/default.toml`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::resilience::CircuitBreakerConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Largest WebSocket frame (and reassembled message) accepted; larger ones close the
    /// connection with 1009.
    pub max_frame_bytes: usize,
    /// Sustained `send` frames per second per connection; beyond it (after `burst`) the client
    /// gets `rate_limited` errors.
    pub rate_limit_per_sec: u32,
    /// Sends a connection may make at once before the rate applies.
    pub burst: u32,
    /// The server pings this often.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A connection silent (no frame, no pong) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// Bytes waiting to be written to one client (`/ws` or `/rtc`); a client that falls this far
    /// behind is disconnected with 1008 (its deliveries stay pending and are sent when it
    /// reconnects). Backlog replays use at most half of it. At least 256 KiB.
    pub outbound_bytes: usize,
    /// Bytes waiting to be written to all clients together; beyond it the clients holding the
    /// most are disconnected first (1008). At least `outbound_bytes`.
    pub outbound_total_bytes: usize,
    /// Open `/ws` connections per user; one more is refused with 429 at the handshake.
    pub max_connections_per_user: usize,
    /// Replaced by `outbound_bytes` (a budget in frames bounded nothing: 4,096 frames of up to
    /// 16 KiB each). Present only to say so.
    #[serde(default, skip_serializing)]
    pub outbound_capacity: Option<usize>,
    /// Consecutive invalid frames tolerated before the connection is closed with 1008.
    pub max_consecutive_errors: u32,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            rate_limit_per_sec: 1000,
            burst: 2000,
            heartbeat_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(45),
            outbound_bytes: 2 * 1024 * 1024,
            outbound_total_bytes: 256 * 1024 * 1024,
            max_connections_per_user: 16,
            outbound_capacity: None,
            max_consecutive_errors: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// A batch is committed when it holds this many messages...
    pub batch_max_messages: usize,
    /// ...or this many body bytes...
    pub batch_max_bytes: usize,
    /// ...or when its first message has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
    /// Deadline of each storage operation (one commit attempt), not of the whole batch.
    #[serde(with = "humantime_serde")]
    pub storage_timeout: Duration,
    /// Commit attempts per batch before its senders get `unavailable`.
    pub max_attempts: u32,
    /// Backoff between attempts: full jitter in [0, min(retry_max, retry_base·2^n)].
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long a message from a sender that is not (yet) a user is retried before it is
    /// rejected with `unknown_sender` and dead-lettered.
    #[serde(with = "humantime_serde")]
    pub unknown_sender_wait: Duration,
    /// Messages waiting in the pipeline; beyond this, senders get `unavailable` at once.
    pub queue_capacity: usize,
    /// Overload budget: when the oldest message waiting for a commit has waited longer, new
    /// sends are refused `unavailable` at once until the wait is back under half of it
    /// (see `chat::admission`). Bounds the latency of what is accepted under overload.
    #[serde(with = "humantime_serde")]
    pub max_queue_delay: Duration,
    /// The storage circuit breaker.
    pub breaker: CircuitBreakerConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_max_messages: 500,
            batch_max_bytes: 1024 * 1024,
            batch_max_delay: Duration::from_millis(5),
            storage_timeout: Duration::from_secs(5),
            max_attempts: 5,
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            unknown_sender_wait: Duration::from_secs(2),
            queue_capacity: 65536,
            max_queue_delay: Duration::from_millis(500),
            breaker: CircuitBreakerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// How often the cleanup job looks for deliveries stuck in flight.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// A delivery pushed but not confirmed for this long is requeued.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Delivery attempts before a record goes to dead letters.
    pub max_attempts: u32,
    /// Records handled per cleanup transaction.
    pub cleanup_batch: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            cleanup_interval: Duration::from_secs(60),
            stale_after: Duration::from_secs(5 * 60),
            max_attempts: 5,
            cleanup_batch: 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// The engine: `sqlite` (embedded, the default) or `elasticsearch` (also OpenSearch;
    /// configured in `[elasticsearch]`).
    pub kind: crate::storage::SearchKind,
    /// Messages indexed per step.
    pub index_batch: u32,
    /// The indexer also looks for unindexed messages this often (it is poked after every commit).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The search circuit breaker (indexing and queries).
    pub breaker: CircuitBreakerConfig,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            kind: crate::storage::SearchKind::Sqlite,
            index_batch: 1000,
            poll_interval: Duration::from_secs(1),
            breaker: CircuitBreakerConfig::default(),
        }
    }
}

/// `[api]`: limits of the HTTP API per user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Conversations one user may create per minute (and at once); beyond it `POST
    /// /api/conversations` answers 429 with `Retry-After`. Per process.
    pub conversations_per_minute: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { conversations_per_minute: 60 }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.conversations_per_minute == 0 {
            return Err("api.conversations_per_minute must be at least 1".into());
        }
        Ok(())
    }
}

/// Smallest `ws.outbound_bytes`: half of it (a replay's share) must hold the largest frame.
const MIN_OUTBOUND_BYTES: usize = 256 * 1024;

impl WsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_bytes < 1024 {
            return Err("ws.max_frame_bytes must be at least 1024".into());
        }
        if self.outbound_capacity.is_some() {
            return Err(
                "ws.outbound_capacity was replaced by ws.outbound_bytes (a budget in bytes, default 2 MiB)".into()
            );
        }
        if self.rate_limit_per_sec == 0 || self.burst == 0 || self.max_connections_per_user == 0 {
            return Err("ws.rate_limit_per_sec, ws.burst and ws.max_connections_per_user must be at least 1".into());
        }
        if self.outbound_bytes < MIN_OUTBOUND_BYTES {
            return Err(format!("ws.outbound_bytes must be at least {MIN_OUTBOUND_BYTES} (256 KiB)"));
        }
        if self.outbound_total_bytes < self.outbound_bytes {
            return Err("ws.outbound_total_bytes must be at least ws.outbound_bytes".into());
        }
        if self.heartbeat_interval.is_zero() || self.client_timeout <= self.heartbeat_interval {
            return Err("ws.client_timeout must be longer than ws.heartbeat_interval (> 0)".into());
        }
        Ok(())
    }
}

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_max_messages == 0 || self.batch_max_bytes == 0 || self.queue_capacity == 0 {
            return Err("pipeline.batch_max_messages, batch_max_bytes and queue_capacity must be at least 1".into());
        }
        if self.max_queue_delay < Duration::from_millis(10) {
            return Err("pipeline.max_queue_delay must be at least 10ms".into());
        }
        if self.max_attempts == 0 || self.storage_timeout.is_zero() {
            return Err("pipeline.max_attempts and pipeline.storage_timeout must be positive".into());
        }
        self.breaker.validate("pipeline.breaker")
    }
}

impl DeliveryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.cleanup_interval.is_zero() || self.stale_after.is_zero() {
            return Err("delivery.cleanup_interval and delivery.stale_after must be positive".into());
        }
        if self.max_attempts == 0 || self.cleanup_batch == 0 {
            return Err("delivery.max_attempts and delivery.cleanup_batch must be at least 1".into());
        }
        Ok(())
    }
}

impl SearchConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.index_batch == 0 || self.poll_interval.is_zero() {
            return Err("search.index_batch and search.poll_interval must be positive".into());
        }
        self.breaker.validate("search.breaker")
    }
}
