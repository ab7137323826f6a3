//! Wiring of chat: opens the stores the configuration names, loads the token keys, connects the
//! transport, and starts `/root/chat` with each pipeline stage handed the next one.
//!
//! The only place that knows which backend and which transport a process runs on: `chat` sees a
//! `ChatStore`, a `SearchStore` and a `Next` stage, never SQLite, MongoDB or Kafka by name.

use std::sync::Arc;

use anyhow::Context as _;

use crate::auth::Tokens;
use crate::chat::{Chat, Foundation, Next};
use crate::config::Config;
use crate::queue::WakeQueue;
use crate::resilience::{CircuitBreakers, Dependency};
use crate::storage::{RoomStore, Selection, StorageKind};
use crate::supervision::{QuarantineRecord, SupervisorHandle};
use crate::transport::TransportKind;

/// What chat's wiring gives the rest of the process.
pub(super) struct Wired {
    pub chat: Arc<Chat>,
    /// The keys that verify clients' tokens (HTTP, WebSocket and `/rtc` authentication).
    pub tokens: Arc<Tokens>,
    /// The SFU's operator rooms, kept in the chat store's backend.
    #[cfg_attr(not(feature = "sfu"), allow(dead_code, reason = "only the SFU keeps rooms"))]
    pub rooms: Arc<dyn RoomStore>,
    /// The Kafka transport, when `transport.kind = "kafka"` (its readiness goes into `/ready`).
    #[cfg(feature = "kafka")]
    pub kafka: Option<Arc<crate::transport::kafka::Kafka>>,
}

/// Opens the databases and starts `/root/chat` with its children.
pub(super) async fn start(
    root: &SupervisorHandle,
    config: &Config,
    breakers: &CircuitBreakers,
    dead_letters: &'static WakeQueue<QuarantineRecord>,
) -> anyhow::Result<Wired> {
    #[cfg(not(feature = "kafka"))]
    if config.transport.kind == TransportKind::Kafka {
        anyhow::bail!(
            "transport.kind = \"kafka\" needs a build with Kafka support: cargo build --release --features kafka"
        );
    }
    let stores = crate::storage::open(Selection {
        storage: &config.storage,
        mongodb: &config.mongodb,
        search: config.search.kind,
        elasticsearch: &config.elasticsearch,
    })
    .await?;
    let store = stores.chat;
    let tokens = Arc::new(Tokens::load(&config.auth, &config.storage.data_dir).context("loading the JWT secret")?);
    // Nothing can be stored while the store fails (the embedded one on this instance's disk, or
    // MongoDB shared by the deployment). Search is optional: chat goes on without it.
    let storage_dependency = match config.storage.kind {
        StorageKind::Sqlite => Dependency::LocalRequired,
        StorageKind::Mongodb => Dependency::SharedOrOptional,
    };
    let storage_breaker = breakers.create("storage", config.pipeline.breaker.clone(), storage_dependency);
    let search_breaker = breakers.create("search", config.search.breaker.clone(), Dependency::SharedOrOptional);
    #[cfg(feature = "kafka")]
    let kafka = match config.transport.kind {
        TransportKind::Kafka => {
            // Like MongoDB at start-up: wait a while for the brokers, then fail naming them.
            let wait = config.kafka.delivery_timeout.max(std::time::Duration::from_secs(5)) * 4;
            Some(Arc::new(crate::transport::kafka::Kafka::connect(&config.kafka, wait).await?))
        }
        TransportKind::Embedded => None,
    };

    let stages = crate::chat::start(
        root,
        Foundation {
            store: store.clone(),
            search: stores.search,
            storage_breaker: storage_breaker.clone(),
            search_breaker,
            pipeline: config.pipeline.clone(),
            search_config: config.search.clone(),
            delivery: config.delivery.clone(),
            ws: config.ws.clone(),
            api: config.api.clone(),
            chaos: config.chaos.enabled,
            quarantine_after: config.supervisor.quarantine_after,
            dead_letters,
        },
    )?;

    #[cfg(feature = "kafka")]
    if let Some(kafka) = &kafka {
        // Stored messages reach every process's connections through the feed; senders are
        // admitted by the brokers' delivery reports (the producer reports them), so the batch
        // writer, fed by the writer consumer, gets an admission of its own that no sender waits
        // on. The writer consumer starts after the batch writer and the producer before the
        // validator, so at shutdown the producer flushes, then the writer drains into a batch
        // writer that is still running.
        let announce =
            kafka.spawn_feed(&stages.supervisor, stages.delivery.clone(), stages.announcements.clone()).await?;
        let batch_writer = stages.spawn_batch_writer(stages.admission_of_its_own(), Some(announce))?;
        kafka.spawn_writer(&stages.supervisor, batch_writer.clone(), store, storage_breaker)?;
        let kafka_breaker = breakers.create("kafka", config.pipeline.breaker.clone(), Dependency::SharedOrOptional);
        let producer = kafka.spawn_producer(
            &stages.supervisor,
            kafka_breaker,
            stages.admission.clone(),
            config.pipeline.queue_capacity,
        )?;
        let next = Next::new(move |submission| producer.try_send(crate::transport::kafka::Produce(submission)));
        let chat = stages.finish(batch_writer, next)?;
        return Ok(Wired { chat, tokens, rooms: stores.rooms, kafka: Some(kafka.clone()) });
    }

    // Embedded: senders are admitted by the batch writer's commits.
    let batch_writer = stages.spawn_batch_writer(stages.admission.clone(), None)?;
    let chat = stages.finish(batch_writer.clone(), Next::batch_writer(batch_writer))?;
    Ok(Wired {
        chat,
        tokens,
        rooms: stores.rooms,
        #[cfg(feature = "kafka")]
        kafka: None,
    })
}
