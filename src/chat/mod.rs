//! Chat: the ingest pipeline, delivery, search indexing and WebSocket sessions, on whichever
//! store and transport the composition root (`crate::app`) wires in.
//!
//! Owns: the actors of the `/root/chat` subtree (see actors.md) and the runtime handles HTTP
//! handlers use (`Chat`). The pipeline is session → validator → next stage → storage: embedded,
//! the next stage is the batch writer, which commits, pokes the indexer (search, asynchronous)
//! and hands the new messages to delivery. With the Kafka transport the next stage is its
//! producer, the writer consumer feeds the batch writer, and new messages reach delivery on every
//! process through the feed. Nothing here names a transport or a backend.
//!
//! Architecture Invariant: a client is told "ack" only after its message is committed (the
//! batch writer replies after the transaction returned), or with Kafka once the brokers have the
//! record (which is then stored before its offset is committed). Message ids are derived from
//! (sender, client_msg_id), so every retry — by the client, by a restarted batch writer, by a
//! dead-letter replay — lands on the same row.

mod admission;
mod batch_writer;
mod cleanup;
mod config;
mod dead_letters;
mod delivery;
mod directory;
mod indexer;
pub mod presence;
pub mod protocol;
pub mod session;
mod user_rate;
mod validator;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::oneshot;

pub use admission::Admission;
pub use batch_writer::{Announcer, BatchWriter, Commit};
pub use cleanup::CleanupJob;
pub use config::{ApiConfig, DeliveryConfig, PipelineConfig, SearchConfig, WsConfig};
pub use dead_letters::{DeadLetterSink, DeadLetterWriter, QUEUE_CAPACITY as DEAD_LETTER_QUEUE_CAPACITY};
pub use delivery::{
    AnnounceBudget, Attach, Committed, Confirm, DeliveryHub, Reservation, ANNOUNCE_BUDGET_BYTES,
    CHAOS_DELIVERY_PANIC_MARKER,
};
pub use directory::Directory;
pub use indexer::Indexer;
pub use presence::Presence;
pub use session::{Session, SessionDeps};
pub use user_rate::UserRate;
pub use validator::{Next, Validate, Validator};

use crate::resilience::CircuitBreaker;
use crate::storage::{ChatStore, NewMessage, SearchStore};
use crate::supervision::{ActorHandle, ChildSpec, RestartType, SupervisorHandle, SupervisorSpec};

/// A message whose body contains this is a poison message while `chaos.enabled`: the batch
/// writer panics on any batch holding it (tests and drills of the bisection path).
pub const CHAOS_POISON_MARKER: &str = "\u{1F4A5}chaos:poison";

/// A message whose body contains this is stored and acked but never announced to delivery while
/// `chaos.enabled` (as if the announcement were lost: a crash, a full mailbox, a lost Kafka feed
/// event): drills of the delivery backstop.
pub const CHAOS_UNANNOUNCED_MARKER: &str = "\u{1F4A5}chaos:unannounced";

/// A batch holding a message whose body contains this never finishes committing while
/// `chaos.enabled` (a batch that times out while the store is healthy): drills of the batch
/// writer's bisection of stalled batches.
pub const CHAOS_STALL_MARKER: &str = "\u{1F4A5}chaos:stall";

/// The reply to a stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Ack {
    pub client_msg_id: String,
    /// The message id (a UUID, the same for every resend of this `client_msg_id`).
    pub id: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Why a message was not stored. `code()` is what clients match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Invalid(String),
    #[error("not a member of this conversation (or it does not exist)")]
    Forbidden,
    #[error("sender {0} is not a user")]
    UnknownSender(String),
    #[error("too many messages; slow down")]
    RateLimited,
    #[error("not stored, try again: {0}")]
    Unavailable(String),
    #[error("the message could not be stored and was moved to dead letters: {0}")]
    Rejected(String),
}

impl SendError {
    pub fn code(&self) -> &'static str {
        match self {
            SendError::Invalid(_) => "invalid",
            SendError::Forbidden => "forbidden",
            SendError::UnknownSender(_) => "unknown_sender",
            SendError::RateLimited => "rate_limited",
            SendError::Unavailable(_) => "unavailable",
            SendError::Rejected(_) => "rejected",
        }
    }
}

pub type AckResult = Result<Ack, SendError>;

/// Who is told the outcome of a submission.
pub enum Reply {
    /// An HTTP request (or an operator's retry) awaiting the result.
    Waiter(oneshot::Sender<AckResult>),
    /// A WebSocket client: the `ack`/`error` frame goes straight to its connection, so a
    /// restarted session does not lose acks of messages it had passed on.
    Connection(Arc<presence::Connection>),
}

/// A message on its way through the pipeline, with whoever waits for its ack.
pub struct Submission {
    pub message: NewMessage,
    /// Taken when answered. A submission a stage loses (crash, full mailbox, quarantined key)
    /// answers `unavailable` from its `Drop`; the client resends (resends are idempotent).
    pub reply: Option<Reply>,
    pub received: Instant,
    /// Batch-writer failures this message was part of (bisection depth included).
    pub crashes: u32,
    /// Of those, failures while it was committed alone: only these make it poison.
    pub crashes_alone: u32,
    /// The admission slot this message holds until answered (none for operator replays).
    ticket: Option<admission::Ticket>,
}

impl Submission {
    pub fn new(message: NewMessage) -> (Self, oneshot::Receiver<AckResult>) {
        let (reply, receiver) = oneshot::channel();
        (Self::with_reply(message, Reply::Waiter(reply)), receiver)
    }

    pub fn with_reply(message: NewMessage, reply: Reply) -> Self {
        Self { message, reply: Some(reply), received: Instant::now(), crashes: 0, crashes_alone: 0, ticket: None }
    }

    /// Holds `ticket` until answered.
    pub fn with_ticket(mut self, ticket: admission::Ticket) -> Self {
        self.ticket = Some(ticket);
        self
    }

    pub fn answer(mut self, result: AckResult) {
        self.reply_with(result);
    }

    fn reply_with(&mut self, result: AckResult) {
        if self.reply.is_none() {
            return;
        }
        if let Err(error) = &result {
            crate::telemetry::message_rejected(error.code());
        }
        // Answered: its slot is free for the next send.
        self.ticket = None;
        match self.reply.take() {
            Some(Reply::Waiter(reply)) => {
                let _ = reply.send(result);
            }
            Some(Reply::Connection(connection)) => {
                let frame = match &result {
                    Ok(ack) => protocol::ServerFrame::Ack {
                        client_msg_id: &ack.client_msg_id,
                        id: &ack.id,
                        created_at: &ack.created_at,
                    }
                    .to_json(),
                    Err(error) => protocol::ServerFrame::Error {
                        client_msg_id: Some(&self.message.client_msg_id),
                        code: error.code(),
                        message: &error.to_string(),
                    }
                    .to_json(),
                };
                connection.outbox.text(frame);
            }
            None => {}
        }
    }
}

impl Drop for Submission {
    /// Dropped unanswered — a stage crashed with it in hand, a mailbox refused it, or its key is
    /// quarantined: the sender hears `unavailable` at once instead of waiting for an ack.
    fn drop(&mut self) {
        self.reply_with(Err(SendError::Unavailable("the message was not stored; send it again".into())));
    }
}

impl std::fmt::Debug for Submission {
    /// The payload a quarantine record keeps: the message as JSON, so it can be replayed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(&self.message).unwrap_or_default())
    }
}

/// A message a client sent, with its deterministic id, not yet stamped with a time.
pub fn new_message(sender: String, conversation: String, client_msg_id: String, body: String) -> NewMessage {
    NewMessage {
        id: message_id(&sender, &client_msg_id),
        conversation,
        sender,
        client_msg_id,
        body,
        created_at_ms: None,
    }
}

/// The id of the message `sender` sent as `client_msg_id`: the same pair always gives the same id.
pub fn message_id(sender: &str, client_msg_id: &str) -> String {
    /// Fixed namespace of rampart message ids (UUIDv5).
    const NAMESPACE: uuid::Uuid = uuid::uuid!("0c5b2f4e-6d8a-4b7e-9a51-3f2e8d1c7a90");
    // User ids cannot contain '\n', so the name is unambiguous.
    uuid::Uuid::new_v5(&NAMESPACE, format!("{sender}\n{client_msg_id}").as_bytes()).to_string()
}

/// Handles to the chat components, for HTTP handlers and WebSocket sessions.
pub struct Chat {
    pub store: ChatStore,
    pub search: SearchStore,
    pub directory: Arc<Directory>,
    pub presence: Arc<Presence>,
    pub validator: ActorHandle<Validator>,
    pub delivery: ActorHandle<DeliveryHub>,
    pub batch_writer: ActorHandle<BatchWriter>,
    pub sessions: SupervisorHandle,
    pub session_deps: Arc<session::SessionDeps>,
    pub search_breaker: Arc<CircuitBreaker>,
    /// Refuses sends early while the pipeline is behind (`pipeline.max_queue_delay`).
    pub admission: Arc<Admission>,
    /// The bytes every socket's outbox may hold (`ws.outbound_bytes`, `ws.outbound_total_bytes`);
    /// `/rtc` sockets draw from it too.
    pub outboxes: Arc<crate::socket::OutboxBudget>,
    /// Open `/ws` connections per user (`ws.max_connections_per_user`).
    pub connections_per_user: Arc<crate::socket::PerUser>,
    /// Conversations each user may create (`api.conversations_per_minute`).
    pub conversation_rate: UserRate,
}

impl Chat {
    /// Sends `message` through the pipeline and waits for its ack (or refusal).
    pub async fn submit(&self, message: NewMessage) -> AckResult {
        let ticket = match self.admission.admit() {
            Ok(ticket) => ticket,
            Err(refused) => {
                crate::telemetry::message_rejected(refused.code());
                return Err(refused);
            }
        };
        let (submission, receiver) = Submission::new(message);
        let submission = submission.with_ticket(ticket);
        if let Err(error) = self.validator.try_send(Validate(submission)) {
            tracing::debug!(%error, "validator refused a message");
        }
        receiver.await.unwrap_or_else(|_| Err(SendError::Unavailable("the pipeline restarted; send again".into())))
    }

    /// Pushes `user`'s pending deliveries to their open connections.
    pub fn redeliver(&self, user: String) {
        if let Err(error) = self.delivery.try_send(delivery::Redeliver(vec![user])) {
            tracing::warn!(%error, "delivery did not take a redelivery; it happens on reconnect");
        }
    }
}

/// What the chat stages are built on, chosen and opened by the composition root (`crate::app`).
pub struct Foundation {
    pub store: ChatStore,
    pub search: SearchStore,
    /// Guards commits: nothing is stored while it is open.
    pub storage_breaker: Arc<CircuitBreaker>,
    /// Guards the indexer and search queries; chat goes on without search.
    pub search_breaker: Arc<CircuitBreaker>,
    pub pipeline: PipelineConfig,
    pub search_config: SearchConfig,
    pub delivery: DeliveryConfig,
    pub ws: WsConfig,
    pub api: ApiConfig,
    /// `chaos.enabled`: the chaos markers act.
    pub chaos: bool,
    /// `supervisor.quarantine_after`: failures alone that make a message poison.
    pub quarantine_after: u32,
    /// Where quarantined messages wait for the dead-letter writer.
    pub dead_letters: &'static crate::queue::WakeQueue<crate::supervision::QuarantineRecord>,
}

/// `/root/chat` while it is being built: the stages behind the batch writer run (dead letters,
/// indexer, delivery); the batch writer and the stages in front of it come next, in the order a
/// transport needs (see `crate::app`), so that at shutdown the front stops first.
pub struct Stages {
    pub supervisor: SupervisorHandle,
    pub delivery: ActorHandle<DeliveryHub>,
    /// Bytes of announcements not yet handled by delivery, shared by whoever announces.
    pub announcements: Arc<AnnounceBudget>,
    /// Admits senders by how fast their acks come.
    pub admission: Arc<Admission>,
    foundation: Foundation,
    directory: Arc<Directory>,
    presence: Arc<Presence>,
    indexer: ActorHandle<Indexer>,
    ledger: batch_writer::Ledger,
}

/// Starts `/root/chat` with the stages every transport shares: dead letters, indexer, delivery.
pub fn start(root: &SupervisorHandle, foundation: Foundation) -> anyhow::Result<Stages> {
    let store = foundation.store.clone();
    let directory = Directory::new(store.clone());
    let presence = Presence::new();
    let chat = root.spawn_supervisor(SupervisorSpec::new("chat")).context("starting /root/chat")?;

    let (writer_store, queue) = (store.clone(), foundation.dead_letters);
    chat.spawn(ChildSpec::new("dead_letters", move || DeadLetterWriter::new(writer_store.clone(), queue)))
        .context("starting the dead-letter writer")?;

    let (index_store, index_search, index_config, index_breaker) =
        (store.clone(), foundation.search.clone(), foundation.search_config.clone(), foundation.search_breaker.clone());
    let indexer = chat
        .spawn(ChildSpec::new("indexer", move || {
            Indexer::new(index_store.clone(), index_search.clone(), index_config.clone(), index_breaker.clone())
        }))
        .context("starting the indexer")?;

    let (delivery_store, delivery_directory, delivery_presence, chaos) =
        (store, directory.clone(), presence.clone(), foundation.chaos);
    let delivery = chat
        .spawn(ChildSpec::new("delivery", move || {
            DeliveryHub::new(delivery_store.clone(), delivery_directory.clone(), delivery_presence.clone(), chaos)
        }))
        .context("starting delivery")?;
    let admission = pipeline_admission(&foundation.pipeline);
    Ok(Stages {
        supervisor: chat,
        delivery,
        announcements: AnnounceBudget::new(ANNOUNCE_BUDGET_BYTES),
        admission,
        foundation,
        directory,
        presence,
        indexer,
        ledger: batch_writer::Ledger::new(),
    })
}

/// An admission sized by the pipeline's settings (`pipeline.max_queue_delay`, batch size, queue).
fn pipeline_admission(pipeline: &PipelineConfig) -> Arc<Admission> {
    Admission::new(pipeline.max_queue_delay, pipeline.batch_max_messages, pipeline.queue_capacity)
}

impl Stages {
    /// An admission of the pipeline's size that no sender waits on: for a batch writer fed by a
    /// transport, whose senders were admitted by the transport's acks.
    pub fn admission_of_its_own(&self) -> Arc<Admission> {
        pipeline_admission(&self.foundation.pipeline)
    }

    /// The batch writer: commits batches, then announces them (`announce`, when new messages
    /// reach delivery through a transport; otherwise straight to this process's delivery).
    pub fn spawn_batch_writer(
        &self,
        admission: Arc<Admission>,
        announce: Option<Announcer>,
    ) -> anyhow::Result<ActorHandle<BatchWriter>> {
        let foundation = &self.foundation;
        let (store, config, breaker, delivery, indexer, ledger, announcements) = (
            foundation.store.clone(),
            foundation.pipeline.clone(),
            foundation.storage_breaker.clone(),
            self.delivery.clone(),
            self.indexer.clone(),
            self.ledger.clone(),
            self.announcements.clone(),
        );
        let (chaos, poison_after) = (foundation.chaos, foundation.quarantine_after);
        let batch_writer = self
            .supervisor
            .spawn(
                ChildSpec::new("batch_writer", move || BatchWriter {
                    store: store.clone(),
                    config: config.clone(),
                    breaker: breaker.clone(),
                    delivery: delivery.clone(),
                    indexer: indexer.clone(),
                    ledger: ledger.clone(),
                    admission: admission.clone(),
                    chaos,
                    poison_after,
                    stopping: false,
                    announce: announce.clone(),
                    announcements: announcements.clone(),
                })
                .mailbox_capacity(foundation.pipeline.queue_capacity),
            )
            .context("starting the batch writer")?;
        self.ledger.attach(batch_writer.record().clone());
        Ok(batch_writer)
    }

    /// The front of the pipeline and the handles HTTP uses: the validator, which hands accepted
    /// messages to `next`; the cleanup job; and, last so they stop first at shutdown (closing
    /// sockets with 1001 while the pipeline behind them still runs), the sessions.
    pub fn finish(self, batch_writer: ActorHandle<BatchWriter>, next: Next) -> anyhow::Result<Arc<Chat>> {
        let Stages { supervisor: chat, delivery, admission, foundation, directory, presence, .. } = self;
        let (validator_store, validator_directory, validator_config) =
            (foundation.store.clone(), directory.clone(), foundation.pipeline.clone());
        let validator = chat
            .spawn(
                ChildSpec::new("validator", move || {
                    Validator::new(
                        validator_store.clone(),
                        validator_directory.clone(),
                        next.clone(),
                        validator_config.clone(),
                    )
                })
                .mailbox_capacity(foundation.pipeline.queue_capacity),
            )
            .context("starting the validator")?;

        let (cleanup_store, cleanup_delivery, cleanup_presence, cleanup_config) =
            (foundation.store.clone(), delivery.clone(), presence.clone(), foundation.delivery.clone());
        chat.spawn(ChildSpec::new("cleanup", move || {
            CleanupJob::new(
                cleanup_store.clone(),
                cleanup_delivery.clone(),
                cleanup_presence.clone(),
                cleanup_config.clone(),
            )
        }))
        .context("starting the cleanup job")?;

        // A session that panics is restarted behind its open socket; a flood of such panics from
        // one bad client must not restart the pipeline, hence the room.
        let sessions = chat
            .spawn_supervisor(
                SupervisorSpec::new("sessions")
                    .dynamic()
                    .intensity(SESSIONS_MAX_RESTARTS, SESSIONS_RESTART_WINDOW)
                    .restart(RestartType::Permanent),
            )
            .context("starting the sessions supervisor")?;

        let session_deps = Arc::new(session::SessionDeps {
            validator: validator.clone(),
            delivery: delivery.clone(),
            admission: admission.clone(),
            config: foundation.ws.clone(),
        });
        let ws = &foundation.ws;
        Ok(Arc::new(Chat {
            outboxes: crate::socket::OutboxBudget::new(ws.outbound_bytes, ws.outbound_total_bytes),
            connections_per_user: crate::socket::PerUser::new(ws.max_connections_per_user),
            conversation_rate: UserRate::per_minute(foundation.api.conversations_per_minute),
            session_deps,
            store: foundation.store,
            search: foundation.search,
            directory,
            presence,
            validator,
            delivery,
            batch_writer,
            sessions,
            search_breaker: foundation.search_breaker,
            admission,
        }))
    }
}

/// Restart intensity of the sessions supervisor (session panics, all connections together).
const SESSIONS_MAX_RESTARTS: u32 = 1000;
const SESSIONS_RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::{message_id, SendError, Submission};
    use crate::storage::NewMessage;

    #[test]
    fn a_submission_dropped_unanswered_tells_its_sender_unavailable() {
        let message = NewMessage {
            id: message_id("alice", "1"),
            conversation: "c".into(),
            sender: "alice".into(),
            client_msg_id: "1".into(),
            body: "hi".into(),
            created_at_ms: None,
        };
        let (submission, mut receiver) = Submission::new(message);
        drop(submission);
        assert!(matches!(receiver.try_recv(), Ok(Err(SendError::Unavailable(_)))));
    }

    #[test]
    fn message_ids_are_deterministic_per_sender_and_client_id() {
        assert_eq!(message_id("alice", "1"), message_id("alice", "1"));
        assert_ne!(message_id("alice", "1"), message_id("bob", "1"));
        assert_ne!(message_id("alice", "1"), message_id("alice", "2"));
    }
}
