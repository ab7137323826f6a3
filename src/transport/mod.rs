//! How accepted messages travel from the session to the chat store (`transport.kind`).
//!
//! Owns: the choice between the embedded pipeline (validator → batch writer, in process: the
//! default) and Kafka (validator → producer → topic → writer consumer → batch writer, across
//! processes), and the Kafka configuration. The Kafka actors live in `kafka/`, the only code that
//! knows rdkafka; they are compiled with the `kafka` feature.

#[cfg(feature = "kafka")]
pub mod kafka;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `transport.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// In process: the validator hands messages straight to the batch writer.
    #[default]
    Embedded,
    /// Through a Kafka topic shared by every process of the deployment (`[kafka]`).
    Kafka,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    pub kind: TransportKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// The messages topic; `<topic>.dlq` holds dead letters and `<topic>.committed` the events
    /// of stored messages that every process reads to push them to its connections.
    pub topic: String,
    /// Partitions and replication factor of the topics rampart creates when they are missing
    /// (existing topics are left as they are).
    pub partitions: i32,
    pub replication_factor: i32,
    /// A send not confirmed by the brokers within this is answered `unavailable` (librdkafka
    /// `message.timeout.ms`); the client sends it again, and the resend is stored once.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Consumer group session timeout: a process that stops heartbeating this long loses its
    /// partitions to the others.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Records a writer consumer holds between reading and storing them; beyond this its
    /// partitions are paused (it keeps polling) until it has caught up to half.
    pub max_in_flight: usize,
    /// Storage failures of one record, while storage is otherwise healthy, before it goes to the
    /// dead-letter topic. Failures while the storage breaker is open are waited out, never counted.
    pub max_attempts: u32,
    /// Consumer groups are `<group_prefix>writer` (storing messages, shared by every process)
    /// and `<group_prefix>feed-<uuid>` (one per process, for delivery).
    pub group_prefix: String,
    /// Extra librdkafka properties for every client (`security.protocol`, `sasl.*`, `ssl.*`…),
    /// as quoted TOML keys in a `--config` file (`"sasl.password" = "…"`): property names hold
    /// dots, which environment overrides read as nesting.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "rampart.messages".into(),
            partitions: 6,
            replication_factor: 1,
            delivery_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            max_in_flight: 4000,
            max_attempts: 10,
            group_prefix: "rampart-".into(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers must list at least one broker (host:port)".into());
        }
        let topic_ok = !self.topic.is_empty()
            && self.topic.len() <= 200
            && self.topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !topic_ok {
            return Err(format!(
                "kafka.topic {:?} must be 1-200 characters of letters, digits, '.', '_' and '-'",
                self.topic
            ));
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return Err("kafka.partitions and kafka.replication_factor must be at least 1".into());
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            return Err("kafka.delivery_timeout must be at least 100ms".into());
        }
        if !(Duration::from_secs(6)..=Duration::from_secs(300)).contains(&self.session_timeout) {
            return Err("kafka.session_timeout must be between 6s and 300s".into());
        }
        if self.max_in_flight < 2 || self.max_attempts == 0 {
            return Err("kafka.max_in_flight must be at least 2 and kafka.max_attempts at least 1".into());
        }
        Ok(())
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    pub fn committed_topic(&self) -> String {
        format!("{}.committed", self.topic)
    }

    /// `properties` with values of secret-looking keys replaced, for `check-config`.
    pub fn redact(&mut self) {
        for (key, value) in &mut self.properties {
            if ["password", "secret", "key", "token"].iter().any(|word| key.contains(word)) {
                *value = "<redacted>".into();
            }
        }
    }
}
