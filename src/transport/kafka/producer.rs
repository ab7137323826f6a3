//! `Producer` (`/root/chat/producer`): validated messages → the messages topic.
//!
//! Owns: enqueueing each message as a record (key = conversation, so order holds per
//! conversation; value = the message stamped with its time; W3C `traceparent` header) and
//! answering its sender when the brokers' delivery report arrives: `ack` on success, `unavailable`
//! on a failed or timed-out delivery (`kafka.delivery_timeout`), never before. Resends of a
//! message acked here recently get that same ack without a second record.
//!
//! State: the delivery futures in flight (a restart cancels them: their senders hear
//! `unavailable` and send again; a record that did reach Kafka is then stored once, by id). The
//! rdkafka producer and the recent-acks cache are shared and outlive incarnations.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;

use super::{record, SharedProducer};
use crate::chat::{Ack, Admission, SendError, Submission};
use crate::resilience::{CircuitBreaker, Outcome};
use crate::supervision::SupervisedMessage;

/// Send this validated message to Kafka; the reply goes through the submission.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Produce(pub Submission);

impl SupervisedMessage for Produce {
    fn key(&self) -> Option<String> {
        Some(self.0.message.id.clone())
    }
}

/// Acks given recently, by message id: a resend (same sender and client id) gets the same ack
/// (the same `created_at`) instead of a new record. Bounded by count and age.
#[derive(Clone, Default)]
pub struct RecentAcks {
    inner: Arc<Mutex<RecentInner>>,
}

#[derive(Default)]
struct RecentInner {
    by_id: HashMap<String, Ack>,
    order: VecDeque<(Instant, String)>,
}

impl RecentAcks {
    const CAPACITY: usize = 200_000;
    const MAX_AGE: Duration = Duration::from_secs(600);

    fn get(&self, id: &str) -> Option<Ack> {
        self.inner.lock().by_id.get(id).cloned()
    }

    fn insert(&self, id: String, ack: Ack) {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        while let Some((at, _)) = inner.order.front() {
            if inner.order.len() < Self::CAPACITY && now.duration_since(*at) < Self::MAX_AGE {
                break;
            }
            if let Some((_, old)) = inner.order.pop_front() {
                inner.by_id.remove(&old);
            }
        }
        if inner.by_id.insert(id.clone(), ack).is_none() {
            inner.order.push_back((now, id));
        }
    }
}

pub struct Producer {
    pub(super) producer: SharedProducer,
    pub(super) topic: String,
    pub(super) breaker: Arc<CircuitBreaker>,
    pub(super) recent: RecentAcks,
    /// Told how long each confirmed send waited: with Kafka, that is what admits sends.
    pub(super) admission: Arc<Admission>,
    /// Set once the graceful stop has flushed the producer.
    pub(super) flushed: bool,
}

impl Actor for Producer {
    type Context = Context<Self>;

    /// Graceful shutdown: wait (on the blocking pool) until librdkafka has delivered what it
    /// holds, so the delivery reports of messages already sent still answer their senders.
    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if self.flushed {
            return Running::Stop;
        }
        self.flushed = true;
        let flush = super::flush(self.producer.get(), Duration::from_secs(5));
        ctx.spawn(flush.into_actor(self).map(|(), _, ctx| ctx.stop()));
        Running::Continue
    }
}

crate::supervised!(Producer);

impl Handler<Produce> for Producer {
    type Result = ();

    fn handle(&mut self, Produce(mut submission): Produce, ctx: &mut Self::Context) {
        if let Some(ack) = self.recent.get(&submission.message.id) {
            submission.answer(Ok(ack));
            return;
        }
        let Ok(permit) = self.breaker.try_acquire() else {
            submission.answer(Err(SendError::Unavailable("kafka is unavailable (circuit open); send again".into())));
            return;
        };
        let created_at_ms = crate::storage::now_ms();
        submission.message.created_at_ms = Some(created_at_ms);
        let payload = record::encode(&submission.message);
        let record = FutureRecord::to(&self.topic)
            .key(submission.message.conversation.as_str())
            .payload(&payload)
            .timestamp(created_at_ms)
            .headers(record::message_headers(&submission.message));
        let producer = self.producer.get();
        let delivery = match producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((error, _)) => {
                self.producer.renew_if_fatal(&producer);
                // The local queue is full (the brokers are slow or gone): refuse at once.
                let overloaded = matches!(error, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
                self.breaker.record(permit, if overloaded { Outcome::Success } else { Outcome::Failure });
                submission.answer(Err(SendError::Unavailable(format!("kafka did not take the message: {error}"))));
                return;
            }
        };
        let metrics = crate::telemetry::metrics();
        metrics.kafka_producer_in_flight.inc();
        let started = Instant::now();
        let (breaker, recent, shared, admission) =
            (self.breaker.clone(), self.recent.clone(), self.producer.clone(), self.admission.clone());
        ctx.spawn(
            async move {
                let result = delivery.await;
                metrics.kafka_producer_in_flight.dec();
                metrics.kafka_delivery_duration.observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(Ok(_)) => {
                        breaker.record(permit, Outcome::Success);
                        admission.committed(started.elapsed(), 1);
                        let ack = Ack {
                            client_msg_id: submission.message.client_msg_id.clone(),
                            id: submission.message.id.clone(),
                            created_at: crate::storage::ms_to_rfc3339(created_at_ms),
                        };
                        recent.insert(ack.id.clone(), ack.clone());
                        submission.answer(Ok(ack));
                    }
                    Ok(Err((error, _))) => {
                        breaker.record(permit, Outcome::Failure);
                        shared.renew_if_fatal(&producer);
                        tracing::warn!(%error, id = %submission.message.id, "kafka delivery failed");
                        submission
                            .answer(Err(SendError::Unavailable(format!("kafka did not confirm the message: {error}"))));
                    }
                    Err(_) => {
                        breaker.record(permit, Outcome::Failure);
                        submission.answer(Err(SendError::Unavailable("the kafka producer went away".into())));
                    }
                }
            }
            .into_actor(self),
        );
    }
}
