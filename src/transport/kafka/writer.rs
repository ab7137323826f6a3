//! `KafkaWriter` (`/root/chat/kafka_writer`): the messages topic → the chat store.
//!
//! Owns: the writer group's consumer (on its own thread, `consumer.rs`), handing every record to
//! the batch writer (which commits MongoDB in batches, bisects poison and acks nothing itself
//! here), and the offsets: per partition, only up to the first record not yet stored or
//! dead-lettered. A record whose store failed is retried with backoff; failures while the storage
//! breaker is open are waited out, others count toward `kafka.max_attempts`, after which the
//! record goes to the dead-letter topic. Records that are not messages, and messages the store
//! refused (poison included), go there at once. Then their offsets move on.
//!
//! State: the consumer and the per-partition ledger of records in flight. A restart (or a crash)
//! closes that consumer and joins the group with a new one: records in flight were not committed,
//! so they are read again and stored once (ids are deterministic; the batch writer reports them
//! as duplicates). Nothing acked is lost: acks were given when Kafka had the record.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::Rng as _;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureRecord;

use super::consumer::{ConsumerSpec, ConsumerThread, Event, Mode};
use super::record::{self, DeadLetterCause, Record};
use crate::chat::{BatchWriter, Commit, SendError, Submission};
use crate::resilience::{CircuitBreaker, CircuitState};
use crate::storage::{ChatStore, DeadLetterKind, NewDeadLetter, NewMessage};
use crate::supervision::ActorHandle;
use crate::transport::KafkaConfig;

/// Everything a writer incarnation needs; shared by all of them.
pub struct WriterDeps {
    pub config: KafkaConfig,
    pub client: ClientConfig,
    pub group: String,
    pub batch_writer: ActorHandle<BatchWriter>,
    pub store: ChatStore,
    pub storage_breaker: Arc<CircuitBreaker>,
    pub producer: super::SharedProducer,
}

pub struct KafkaWriter {
    deps: Arc<WriterDeps>,
    consumer: Option<ConsumerThread>,
    partitions: HashMap<i32, Track>,
    stopping: bool,
    closed: bool,
}

/// One assigned partition: records read under this assignment and whether each is finished.
struct Track {
    generation: u64,
    pending: BTreeMap<i64, bool>,
}

impl KafkaWriter {
    pub fn new(deps: Arc<WriterDeps>) -> Self {
        Self { deps, consumer: None, partitions: HashMap::new(), stopping: false, closed: false }
    }
}

impl Actor for KafkaWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let spec = ConsumerSpec {
            name: "writer",
            client: self.deps.client.clone(),
            topic: self.deps.config.topic.clone(),
            group: self.deps.group.clone(),
            mode: Mode::Group,
            session_timeout: self.deps.config.session_timeout,
            high: self.deps.config.max_in_flight,
            lag_label: Some("writer"),
        };
        // Creating a consumer fails only on bad client settings: a failure to start, which
        // counts toward restart intensity like any other.
        let (consumer, mut events) = match ConsumerThread::start(spec) {
            Ok(started) => started,
            Err(error) => panic!("the kafka writer consumer could not be created: {error}"),
        };
        self.consumer = Some(consumer);
        ctx.add_stream(futures_util::stream::poll_fn(move |cx| events.poll_recv(cx)));
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if self.closed {
            return Running::Stop;
        }
        // Graceful: stop fetching, finish what is in flight, commit, close (bounded by the
        // supervisor's shutdown timeout).
        if !self.stopping {
            let in_flight: usize = self.partitions.values().map(|track| track.pending.len()).sum();
            tracing::info!(in_flight, "kafka writer stopping: finishing the records it holds, then committing");
        }
        self.stopping = true;
        if let Some(consumer) = &self.consumer {
            consumer.pause();
        }
        self.close_when_idle(ctx);
        Running::Continue
    }
}

crate::supervised!(KafkaWriter);

impl StreamHandler<Event> for KafkaWriter {
    fn handle(&mut self, event: Event, ctx: &mut Self::Context) {
        match event {
            Event::Assigned { partitions, generation } => {
                for partition in partitions {
                    self.partitions.insert(partition, Track { generation, pending: BTreeMap::new() });
                }
            }
            Event::Revoked(partitions) => {
                for partition in partitions {
                    self.partitions.remove(&partition);
                }
                self.close_when_idle(ctx);
            }
            Event::Records(records) => {
                for record in records {
                    if self.stopping {
                        // Fetched before the pause took effect: left for the next owner.
                        self.release(1);
                        continue;
                    }
                    match self.partitions.get_mut(&record.partition) {
                        Some(track) if track.generation == record.generation => {
                            track.pending.insert(record.offset, false);
                            self.process(record, ctx);
                        }
                        _ => self.release(1),
                    }
                }
            }
        }
    }

    /// The consumer thread ended: after a graceful close (it committed and closed first), or
    /// because it failed.
    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.stopping {
            tracing::info!("kafka writer drained, offsets committed, consumer closed");
        } else {
            tracing::error!("the kafka writer's consumer thread ended; restarting the writer with a new consumer");
        }
        self.consumer = None;
        self.closed = true;
        ctx.stop();
    }
}

impl KafkaWriter {
    fn process(&mut self, record: Record, ctx: &mut Context<Self>) {
        match record::decode(&record) {
            Ok(message) => self.submit(record, message, 0, ctx),
            Err(invalid) => {
                tracing::error!(partition = record.partition, offset = record.offset, reason = %invalid, "not a message; dead-lettering the record");
                let letter = NewDeadLetter {
                    kind: DeadLetterKind::Message,
                    reason: format!(
                        "kafka record {}/{}@{} is not a message: {invalid}",
                        record.topic, record.partition, record.offset
                    ),
                    attempts: 1,
                    payload: serde_json::json!({
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "value": String::from_utf8_lossy(record.payload.as_deref().unwrap_or_default()),
                    }),
                };
                self.dead_letter(record, "invalid", invalid.0, 1, Some(letter), ctx);
            }
        }
    }

    /// Hands the message to the batch writer and waits for its outcome.
    fn submit(&mut self, record: Record, message: NewMessage, attempts: u32, ctx: &mut Context<Self>) {
        if !self.owns(&record) {
            self.release(1);
            return;
        }
        let (submission, outcome) = Submission::new(message.clone());
        // A full mailbox drops the submission, which answers `unavailable`: retried below.
        let _ = self.deps.batch_writer.try_send(Commit(submission));
        let wait = async move {
            outcome.await.unwrap_or_else(|_| Err(SendError::Unavailable("the batch writer restarted".into())))
        };
        ctx.spawn(wait.into_actor(self).map(move |result, writer, ctx| match result {
            Ok(_) => writer.finish(&record, ctx),
            // Already in the store's dead letters (written by the batch writer).
            Err(SendError::Rejected(reason)) => writer.dead_letter(record, "rejected", reason, attempts + 1, None, ctx),
            Err(SendError::Unavailable(reason)) => writer.retry(record, message, attempts, reason, ctx),
            Err(other) => {
                let letter = message_letter(&message, &other.to_string(), attempts + 1);
                writer.dead_letter(record, "rejected", other.to_string(), attempts + 1, Some(letter), ctx)
            }
        }));
    }

    fn retry(&mut self, record: Record, message: NewMessage, attempts: u32, reason: String, ctx: &mut Context<Self>) {
        // An open breaker means storage is down for everyone: waited out, not this record's fault.
        let counted = self.deps.storage_breaker.state() == CircuitState::Closed;
        let attempts = attempts + u32::from(counted);
        if attempts >= self.deps.config.max_attempts {
            tracing::error!(id = %message.id, attempts, reason, "storing a kafka record kept failing; dead-lettering it");
            let letter = message_letter(&message, &reason, attempts);
            self.dead_letter(record, "retries", reason, attempts, Some(letter), ctx);
            return;
        }
        let ceiling = Duration::from_millis(100u64 << attempts.min(6)).min(Duration::from_secs(5));
        let delay = rand::thread_rng().gen_range(Duration::from_millis(50)..=ceiling.max(Duration::from_millis(50)));
        tracing::debug!(id = %message.id, attempts, reason, delay_ms = delay.as_millis() as u64, "retrying a kafka record");
        ctx.run_later(delay, move |writer, ctx| writer.submit(record, message, attempts, ctx));
    }

    /// Publishes the record to the dead-letter topic (retrying until Kafka takes it), records it
    /// in the store's dead letters when `letter` is given, then lets its offset move on.
    fn dead_letter(
        &mut self,
        record: Record,
        class: &'static str,
        reason: String,
        attempts: u32,
        letter: Option<NewDeadLetter>,
        ctx: &mut Context<Self>,
    ) {
        let (producer, store) = (self.deps.producer.clone(), self.deps.store.clone());
        let topic = self.deps.config.dead_letter_topic();
        let publish = async move {
            let cause = DeadLetterCause { class, message: &reason, attempts, actor: "/root/chat/kafka_writer" };
            let mut pause = Duration::from_millis(200);
            loop {
                let mut dlq =
                    FutureRecord::<[u8], [u8]>::to(&topic).headers(record::dead_letter_headers(&record, &cause));
                if let Some(key) = record.key.as_deref() {
                    dlq = dlq.key(key);
                }
                if let Some(payload) = record.payload.as_deref() {
                    dlq = dlq.payload(payload);
                }
                let current = producer.get();
                let delivered = match current.send_result(dlq) {
                    Ok(delivery) => matches!(delivery.await, Ok(Ok(_))),
                    Err(_) => false,
                };
                if !delivered {
                    producer.renew_if_fatal(&current);
                }
                if delivered {
                    break;
                }
                tracing::warn!(topic, "the dead-letter topic did not take a record; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            crate::telemetry::metrics().kafka_dead_letters.inc();
            if let Some(letter) = letter {
                match store.add_dead_letter(letter, crate::storage::now_ms()).await {
                    Ok(_) => crate::telemetry::dead_lettered("message"),
                    // The dead-letter topic has it; the operator's list misses this one.
                    Err(error) => tracing::error!(%error, "could not record a dead letter in the store"),
                }
            }
            record
        };
        ctx.spawn(publish.into_actor(self).map(|record, writer, ctx| writer.finish(&record, ctx)));
    }

    /// The record is stored or dead-lettered: its offset may be committed once every earlier
    /// record of its partition is too.
    fn finish(&mut self, record: &Record, ctx: &mut Context<Self>) {
        self.release(1);
        let Some(track) = self.partitions.get_mut(&record.partition).filter(|t| t.generation == record.generation)
        else {
            return;
        };
        if let Some(done) = track.pending.get_mut(&record.offset) {
            *done = true;
        }
        let mut next = None;
        while let Some(entry) = track.pending.first_entry() {
            if !*entry.get() {
                break;
            }
            next = Some(*entry.key() + 1);
            entry.remove();
        }
        if let (Some(next), Some(consumer)) = (next, &self.consumer) {
            consumer.store(vec![(record.partition, next)]);
        }
        self.close_when_idle(ctx);
    }

    fn owns(&self, record: &Record) -> bool {
        self.partitions.get(&record.partition).is_some_and(|track| track.generation == record.generation)
    }

    fn release(&self, count: usize) {
        if let Some(consumer) = &self.consumer {
            let _ = consumer
                .outstanding
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(count)));
        }
    }

    /// While stopping: once nothing is in flight, commit and close the consumer, then stop.
    fn close_when_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.stopping || self.partitions.values().any(|track| !track.pending.is_empty()) {
            return;
        }
        let Some(consumer) = self.consumer.take() else { return };
        // `finished` normally comes first; this bounds a close that hangs (brokers gone).
        ctx.spawn(consumer.close(Duration::from_secs(5)).into_actor(self).map(|(), writer, ctx| {
            if !writer.closed {
                tracing::warn!(
                    "kafka writer drained; its consumer did not close within 5 s and closes in the background"
                );
            }
            writer.closed = true;
            ctx.stop();
        }));
    }
}

fn message_letter(message: &NewMessage, reason: &str, attempts: u32) -> NewDeadLetter {
    NewDeadLetter {
        kind: DeadLetterKind::Message,
        reason: format!("storing it from kafka failed: {reason}"),
        attempts,
        payload: serde_json::to_value(message).unwrap_or_default(),
    }
}
