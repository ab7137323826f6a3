//! The Kafka transport (`transport.kind = "kafka"`): the only code that knows rdkafka.
//!
//! Owns: the producer shared by the process (created once: idempotent, `acks=all`), the topics
//! (`<topic>`, `<topic>.dlq`, `<topic>.committed`, created when missing), and three actors under
//! `/root/chat` (see actors.md):
//! - `producer` (`Producer`): validated messages → `<topic>`, keyed by conversation; the sender is
//!   acked once the brokers confirmed the record.
//! - `kafka_writer` (`KafkaWriter`): group `<group_prefix>writer`; hands records to the batch
//!   writer (which writes MongoDB) and commits offsets per partition only up to the contiguous
//!   watermark of records stored or dead-lettered.
//! - `kafka_feed` (`Feed`): publishes what the batch writer stored to `<topic>.committed` and reads
//!   every partition of that topic, assigned directly (no group, nothing committed), so each
//!   process pushes to its own connections.
//!
//! Architecture Invariant: no blocking librdkafka call runs on an actix arbiter thread. Consumers
//! live on their own threads (`consumer.rs`): polling, rebalance callbacks, synchronous commits
//! and closing (which can hang while brokers are down) happen there. The producer is only asked
//! to enqueue (non-blocking); its delivery reports are futures; flushing runs on the blocking pool.

mod consumer;
mod feed;
mod producer;
mod record;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

use crate::chat::DeliveryHub;
use crate::resilience::CircuitBreaker;
use crate::storage::ChatStore;
use crate::supervision::{ActorHandle, ChildSpec, SupervisorHandle};
pub use feed::{Announce, Feed};
pub use producer::{Produce, Producer};
pub use writer::KafkaWriter;

use super::KafkaConfig;

/// The client settings every rampart Kafka client shares: brokers, client id, extra properties.
fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    // No Nagle: records are small and each ack waits on its round trip.
    client.set("bootstrap.servers", &config.brokers).set("client.id", "rampart").set("socket.nagle.disable", "true");
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// The process's producer, shared by every actor that writes to Kafka. librdkafka marks an
/// idempotent producer as fatally failed when it can no longer promise order without duplicates
/// (the brokers lost its sequence state, for one); such a producer never sends again, so the
/// first failure that finds it fatal replaces it with a new one.
#[derive(Clone)]
pub struct SharedProducer {
    config: KafkaConfig,
    current: Arc<parking_lot::RwLock<Arc<FutureProducer>>>,
}

impl SharedProducer {
    fn new(config: &KafkaConfig) -> anyhow::Result<Self> {
        let producer = create_producer(config)?;
        Ok(Self { config: config.clone(), current: Arc::new(parking_lot::RwLock::new(producer)) })
    }

    pub fn get(&self) -> Arc<FutureProducer> {
        self.current.read().clone()
    }

    /// After a failed send or delivery through `used`: replaces it if it failed fatally (once,
    /// whoever notices first).
    pub fn renew_if_fatal(&self, used: &Arc<FutureProducer>) {
        let Some((code, reason)) = used.client().fatal_error() else { return };
        let mut current = self.current.write();
        if !Arc::ptr_eq(&current, used) {
            return;
        }
        tracing::error!(%code, reason, "the kafka producer failed fatally; replacing it");
        match create_producer(&self.config) {
            Ok(fresh) => *current = fresh,
            Err(error) => tracing::error!(%error, "could not create a new kafka producer"),
        }
    }
}

/// A producer: idempotent (no duplicates from librdkafka's own retries, order kept per
/// partition), every in-sync replica acknowledges, no linger (each ack waits on it).
fn create_producer(config: &KafkaConfig) -> anyhow::Result<Arc<FutureProducer>> {
    let producer: FutureProducer = client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", config.delivery_timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", "200000")
        .create()
        .context("creating the Kafka producer")?;
    Ok(Arc::new(producer))
}

/// Creates the topics that are missing. Waits for the brokers up to `wait`, then fails naming them.
pub async fn ensure_topics(config: &KafkaConfig, wait: Duration) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(config).create().context("creating the Kafka admin client")?;
    let names = [config.topic.clone(), config.dead_letter_topic(), config.committed_topic()];
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, config.partitions, TopicReplication::Fixed(config.replication_factor)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(15), admin.create_topics(&topics, &options)).await;
        let failure = match attempt {
            Ok(Ok(results)) => {
                let refused: Vec<String> = results
                    .into_iter()
                    .filter_map(|result| match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                        Err((topic, code)) => Some(format!("{topic}: {code}")),
                    })
                    .collect();
                if refused.is_empty() {
                    return Ok(());
                }
                refused.join(", ")
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer from the brokers".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("could not create the Kafka topics on {}: {failure}", config.brokers);
        }
        tracing::warn!(brokers = %config.brokers, failure, "Kafka not ready; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Readiness: the brokers answer a metadata request within `timeout` (on the blocking pool: the
/// call blocks). `Ok(brokers known)` or why not.
pub async fn check_brokers(producer: Arc<FutureProducer>, timeout: Duration) -> Result<usize, String> {
    let probe = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout));
    match probe.await {
        Ok(Ok(metadata)) if !metadata.brokers().is_empty() => Ok(metadata.brokers().len()),
        Ok(Ok(_)) => Err("no broker in the metadata".into()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// Waits (on the blocking pool) until every record the producer holds is delivered or `timeout`
/// passes. Graceful shutdown calls it before the consumers drain.
pub async fn flush(producer: Arc<FutureProducer>, timeout: Duration) {
    let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("kafka producer flushed"),
        Ok(Err(error)) => tracing::warn!(%error, "kafka producer not fully flushed"),
        Err(error) => tracing::warn!(%error, "kafka producer flush failed"),
    }
}

/// The Kafka transport of one process: its producer and the actors it spawns under
/// `/root/chat`, started by the composition root (`crate::app`) in the order the pipeline needs.
pub struct Kafka {
    config: KafkaConfig,
    /// How long start-up waits for the brokers.
    wait: Duration,
    producer: SharedProducer,
    recent: producer::RecentAcks,
}

impl Kafka {
    /// Creates the producer and the missing topics; waits for the brokers up to `wait`.
    pub async fn connect(config: &KafkaConfig, wait: Duration) -> anyhow::Result<Self> {
        ensure_topics(config, wait).await?;
        let producer = SharedProducer::new(config)?;
        Ok(Self { config: config.clone(), wait, producer, recent: producer::RecentAcks::default() })
    }

    /// `kafka_feed`: committed events in and out, once it reads the events topic (waits up to
    /// `wait` for that). Returns what the batch writer announces with.
    pub async fn spawn_feed(
        &self,
        chat: &SupervisorHandle,
        delivery: ActorHandle<DeliveryHub>,
        announcements: Arc<crate::chat::AnnounceBudget>,
    ) -> anyhow::Result<crate::chat::Announcer> {
        let deps = Arc::new(feed::FeedDeps {
            config: self.config.clone(),
            client: client_config(&self.config),
            group_prefix: self.config.group_prefix.clone(),
            producer: self.producer.clone(),
            delivery,
            announcements: announcements.clone(),
            positions: Arc::default(),
            ready: Arc::default(),
        });
        let ready = deps.ready.clone();
        let feed = chat
            .spawn(ChildSpec::new("kafka_feed", move || Feed::new(deps.clone())))
            .context("starting the kafka feed")?;
        let deadline = tokio::time::Instant::now() + self.wait;
        while !ready.load(std::sync::atomic::Ordering::Acquire) {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the kafka feed could not read {}",
                self.config.committed_topic()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Arc::new(move |messages| {
            // Held until the feed published it: a slow broker cannot pile batches up here.
            let Some(reserved) = announcements.reserve(&messages) else { return };
            if let Err(error) = feed.try_send(Announce(messages, reserved)) {
                tracing::warn!(%error, "the kafka feed did not take stored messages; recipients get them from their backlog");
            }
        }))
    }

    /// `kafka_writer`: the writer group's consumer, feeding `batch_writer`.
    pub fn spawn_writer(
        &self,
        chat: &SupervisorHandle,
        batch_writer: ActorHandle<crate::chat::BatchWriter>,
        store: ChatStore,
        storage_breaker: Arc<CircuitBreaker>,
    ) -> anyhow::Result<ActorHandle<KafkaWriter>> {
        let deps = Arc::new(writer::WriterDeps {
            config: self.config.clone(),
            client: client_config(&self.config),
            group: format!("{}writer", self.config.group_prefix),
            batch_writer,
            store,
            storage_breaker,
            producer: self.producer.clone(),
        });
        chat.spawn(ChildSpec::new("kafka_writer", move || KafkaWriter::new(deps.clone())))
            .context("starting the kafka writer")
    }

    /// `producer`: validated messages → the topic.
    pub fn spawn_producer(
        &self,
        chat: &SupervisorHandle,
        breaker: Arc<CircuitBreaker>,
        admission: Arc<crate::chat::Admission>,
        mailbox: usize,
    ) -> anyhow::Result<ActorHandle<Producer>> {
        let (producer, topic, recent) = (self.producer.clone(), self.config.topic.clone(), self.recent.clone());
        chat.spawn(
            ChildSpec::new("producer", move || Producer {
                producer: producer.clone(),
                topic: topic.clone(),
                breaker: breaker.clone(),
                recent: recent.clone(),
                admission: admission.clone(),
                flushed: false,
            })
            .mailbox_capacity(mailbox),
        )
        .context("starting the kafka producer")
    }

    /// Readiness: the brokers answer within `timeout`.
    pub async fn check(&self, timeout: Duration) -> Result<usize, String> {
        check_brokers(self.producer.get(), timeout).await
    }
}
