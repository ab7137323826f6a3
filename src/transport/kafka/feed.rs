//! `Feed` (`/root/chat/kafka_feed`): delivery across processes.
//!
//! Owns: publishing what the batch writer of this process stored (`Announce`) to
//! `<topic>.committed`, and reading every partition of that topic (assigned directly: no group,
//! nothing committed) from where it stood when the process started, handing every event to this
//! process's delivery hub, which pushes to the recipients connected here. A restarted feed goes on
//! from the last event read.
//!
//! Best effort by design: a lost event (a crash, Kafka down) only delays a push. Every delivery
//! is also a pending record in the store, sent when its recipient (re)connects anywhere and
//! requeued by the cleanup job when unconfirmed.
//!
//! State: the consumer (a restart makes a new one, from the positions kept outside the actor) and
//! the publications in flight (a restart drops them: logged, see above).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureRecord;

use super::consumer::{ConsumerSpec, ConsumerThread, Event, Mode};
use super::record;
use crate::chat::DeliveryHub;
use crate::storage::StoredMessage;
use crate::supervision::{ActorHandle, SupervisedMessage};
use crate::transport::KafkaConfig;

/// Messages this process's batch writer stored: publish them to every process.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Announce(pub Vec<Arc<StoredMessage>>, pub crate::chat::Reservation);

impl SupervisedMessage for Announce {}

/// Events larger than this are split (the brokers' default record limit is 1 MiB).
const MAX_EVENT_BYTES: usize = 256 * 1024;

pub struct FeedDeps {
    pub config: KafkaConfig,
    pub client: ClientConfig,
    pub group_prefix: String,
    pub producer: super::SharedProducer,
    pub delivery: ActorHandle<DeliveryHub>,
    /// Bytes of events handed to the hub and not yet handled (bounded).
    pub announcements: Arc<crate::chat::AnnounceBudget>,
    /// Next offset per partition of the events topic: a restarted feed resumes there, so a
    /// crash skips no event.
    pub positions: Arc<parking_lot::Mutex<HashMap<i32, i64>>>,
    /// Set once the feed's consumer is positioned: the process serves only after that, so no
    /// event of a message sent to it can pass before its feed reads.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

pub struct Feed {
    deps: Arc<FeedDeps>,
    consumer: Option<ConsumerThread>,
}

impl Feed {
    pub fn new(deps: Arc<FeedDeps>) -> Self {
        Self { deps, consumer: None }
    }
}

impl Actor for Feed {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let spec = ConsumerSpec {
            name: "feed",
            client: self.deps.client.clone(),
            topic: self.deps.config.committed_topic(),
            group: format!("{}feed-{}", self.deps.group_prefix, uuid::Uuid::new_v4().simple()),
            mode: Mode::Assign { positions: self.deps.positions.clone() },
            session_timeout: self.deps.config.session_timeout,
            high: usize::MAX,
            lag_label: None,
        };
        let (consumer, mut events) = match ConsumerThread::start(spec) {
            Ok(started) => started,
            Err(error) => panic!("the kafka feed consumer could not be created: {error}"),
        };
        self.consumer = Some(consumer);
        ctx.add_stream(futures_util::stream::poll_fn(move |cx| events.poll_recv(cx)));
    }
}

crate::supervised!(Feed);

impl Handler<Announce> for Feed {
    type Result = ();

    fn handle(&mut self, Announce(messages, _reserved): Announce, ctx: &mut Self::Context) {
        let topic = self.deps.config.committed_topic();
        let mut events = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (index, message) in messages.iter().enumerate() {
            bytes += message.body.len() + 256;
            if bytes >= MAX_EVENT_BYTES || index + 1 == messages.len() {
                events.push(record::encode_committed(&messages[start..=index]));
                (start, bytes) = (index + 1, 0);
            }
        }
        let producer = self.deps.producer.get();
        for event in events {
            let delivery = producer.send_result(FutureRecord::<[u8], [u8]>::to(&topic).payload(&event[..]));
            let Ok(delivery) = delivery else {
                tracing::warn!(
                    "kafka did not take a committed event; recipients get those messages from their backlog"
                );
                self.deps.producer.renew_if_fatal(&producer);
                continue;
            };
            let (shared, used) = (self.deps.producer.clone(), producer.clone());
            ctx.spawn(
                async move {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        tracing::warn!(
                            "a committed event was not delivered; recipients get those messages from their backlog"
                        );
                        shared.renew_if_fatal(&used);
                    }
                }
                .into_actor(self),
            );
        }
    }
}

impl StreamHandler<Event> for Feed {
    fn handle(&mut self, event: Event, _ctx: &mut Self::Context) {
        let records = match event {
            Event::Records(records) => records,
            Event::Assigned { .. } => {
                self.deps.ready.store(true, Ordering::Release);
                return;
            }
            Event::Revoked(_) => return,
        };
        if let Some(consumer) = &self.consumer {
            consumer.outstanding.store(0, Ordering::Release);
        }
        {
            let mut positions = self.deps.positions.lock();
            for record in &records {
                positions.insert(record.partition, record.offset + 1);
            }
        }
        for record in records {
            let Some(messages) = record::decode_committed(&record) else {
                tracing::warn!(partition = record.partition, offset = record.offset, "not a committed event; skipped");
                continue;
            };
            let messages: Vec<Arc<StoredMessage>> = messages.into_iter().map(Arc::new).collect();
            let Some(committed) = self.deps.announcements.committed(messages) else { continue };
            if let Err(error) = self.deps.delivery.try_send(committed) {
                crate::telemetry::metrics().deliveries_unannounced.inc();
                tracing::warn!(%error, "delivery did not take committed messages; the backstop pushes them");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        tracing::error!("the kafka feed's consumer thread ended; restarting the feed");
        ctx.stop();
    }
}
