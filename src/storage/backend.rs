//! The contract every chat backend keeps, stated once.
//!
//! `ChatBackend` is what the pipeline, the handlers and the background jobs hold (as a
//! [`ChatStore`], `Arc<dyn ChatBackend>`). It is made of one trait per area — users,
//! conversations, messages, deliveries, dead letters — so each backend implements an area in the
//! file that holds its queries (`sqlite/messages.rs`, `mongodb/messages.rs`, …). The SFU's
//! operator rooms are not chat: they are a small trait of their own, [`RoomStore`].
//!
//! Calls are boxed futures (`async_trait`): one allocation per call, next to a database round
//! trip or a writer-thread job (the chat benchmark measured no difference on the commit path).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::sqlite::Faults;
use super::{
    BacklogPage, Claim, CommitOutcome, ConversationCursor, ConversationSummary, DeadLetter, NewDeadLetter, NewMessage,
    RequeueReport, StorageError, StorageKind, StoredMessage, User,
};

/// The chat store every pipeline actor and handler talks to. Cheap to clone.
pub type ChatStore = Arc<dyn ChatBackend>;

/// Sees each message of a batch before it is written; a panic there fails the batch as
/// `StorageError::Panicked` (the batch writer's chaos poison uses it).
pub type Inspect = Box<dyn Fn(&NewMessage) + Send + 'static>;

/// Everything chat stores: one backend per deployment (`storage.kind`).
#[async_trait]
pub trait ChatBackend: UserStore + ConversationStore + MessageStore + DeliveryStore + DeadLetterStore {
    fn kind(&self) -> StorageKind;

    /// Fault injection (`/admin/chaos/storage`): the embedded store only, whose disk it mimics.
    fn faults(&self) -> Option<&Arc<Faults>> {
        None
    }

    /// A tiny write that tells a healthy store from a slow one. Embedded: a no-op job on the
    /// writer thread (it waits behind the writes before it). MongoDB: an upsert of one small
    /// document with the configured write concern. Callers use `probe(timeout)` (on `dyn
    /// ChatBackend`), which times it.
    async fn write_probe(&self) -> Result<(), StorageError>;
}

impl dyn ChatBackend {
    /// How long [`ChatBackend::write_probe`] took, or an error when it did not complete within
    /// `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<Duration, StorageError> {
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.write_probe()).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StorageError::Timeout),
        }
    }
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// `true` when created, `false` when the id is taken.
    async fn create_user(&self, id: String, display_name: String, now_ms: i64) -> Result<bool, StorageError>;

    async fn user_exists(&self, id: String) -> Result<bool, StorageError>;

    async fn user(&self, id: String) -> Result<Option<User>, StorageError>;
}

#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// One conversation with its members and latest message, or `None` when it does not exist.
    async fn conversation(&self, id: String) -> Result<Option<ConversationSummary>, StorageError>;

    /// A page of `user`'s conversations, most recently active first, after `cursor`.
    async fn conversations_page(
        &self,
        user: String,
        cursor: Option<ConversationCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StorageError>;

    /// Creates a conversation; `Err(unknown)` lists members that are not users. The creator is
    /// not checked: their identity comes from a signed token, and their user record may be
    /// provisioned a moment later (see `pipeline.unknown_sender_wait`).
    async fn create_conversation(
        &self,
        id: String,
        title: String,
        created_by: String,
        members: Vec<String>,
        now_ms: i64,
    ) -> Result<Result<(), Vec<String>>, StorageError>;

    /// The members of a conversation, or `None` when it does not exist.
    async fn members(&self, conversation: String) -> Result<Option<Vec<String>>, StorageError>;

    /// Every conversation `user` is a member of.
    async fn conversations_of(&self, user: String) -> Result<Vec<String>, StorageError>;
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Commits a batch: every message gets an outcome, in batch order, and the deliveries of
    /// stored messages (one per member other than the sender) are written before this returns.
    /// `inspect` sees each message before it is written (a panic there fails the batch as
    /// `StorageError::Panicked`, and nothing of it is acked).
    async fn commit_batch_inspected(
        &self,
        batch: Arc<[NewMessage]>,
        now_ms: i64,
        inspect: Inspect,
    ) -> Result<Vec<CommitOutcome>, StorageError>;

    /// Committed message by id (the original of a duplicate).
    async fn message(&self, id: String) -> Result<Option<StoredMessage>, StorageError>;

    /// Newest first: up to `limit` messages of `conversation` older than message `before`.
    /// `Ok(None)` when `before` is not a message of this conversation.
    async fn history(
        &self,
        conversation: String,
        before: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<StoredMessage>>, StorageError>;

    /// How far the external search engine `name` has indexed (0: nothing yet).
    async fn search_watermark(&self, name: &'static str) -> Result<i64, StorageError>;

    /// Records that `name` has indexed (or dead-lettered) everything up to `seq`; never moves
    /// the watermark back.
    async fn set_search_watermark(&self, name: &'static str, seq: i64) -> Result<(), StorageError>;

    /// Messages committed after `seq`, in seq order (the search indexer's feed).
    async fn messages_after(&self, seq: i64, limit: u32) -> Result<Vec<StoredMessage>, StorageError>;
}

#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    /// A page of `recipient`'s undelivered messages: up to `limit` delivery records with a seq
    /// after `after_seq`, in seq order, pending ones and with `include_in_flight` also those
    /// pushed to a connection but never confirmed (what a reconnecting client must get again).
    /// The page says where the next one starts and whether this was the last.
    async fn undelivered(
        &self,
        recipient: String,
        after_seq: i64,
        limit: u32,
        include_in_flight: bool,
    ) -> Result<BacklogPage, StorageError>;

    /// Of `recipients`, those with a pending delivery (never pushed, or put back) of a message
    /// stored before `stored_before_ms`: the delivery backstop's question for the users
    /// connected to this process.
    async fn stale_pending(&self, recipients: Vec<String>, stored_before_ms: i64) -> Result<Vec<String>, StorageError>;

    /// Marks deliveries pushed to a connection: in flight, claimed now. Only records still
    /// pending or in flight change (a confirmed one stays delivered).
    async fn mark_in_flight(&self, claims: Vec<Claim>, now_ms: i64) -> Result<(), StorageError>;

    /// Marks deliveries confirmed by their recipient. Ids that are not the recipient's are ignored.
    async fn mark_delivered(&self, confirmations: Vec<(String, String)>) -> Result<(), StorageError>;

    /// One cleanup pass: up to `limit` deliveries in flight since before `stale_before_ms` go
    /// back to pending with one more attempt, or to dead letters once `max_attempts` is reached.
    async fn requeue_stale(
        &self,
        stale_before_ms: i64,
        max_attempts: u32,
        limit: u32,
        now_ms: i64,
    ) -> Result<RequeueReport, StorageError>;

    /// Puts a dead-lettered delivery back to pending with a fresh attempt count.
    async fn requeue_delivery(&self, recipient: String, message_id: String) -> Result<bool, StorageError>;
}

#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    async fn add_dead_letter(&self, letter: NewDeadLetter, now_ms: i64) -> Result<String, StorageError>;

    /// Newest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StorageError>;

    async fn dead_letter(&self, id: String) -> Result<Option<DeadLetter>, StorageError>;

    async fn remove_dead_letter(&self, id: String) -> Result<bool, StorageError>;
}

/// The SFU's operator rooms (`/admin/rooms`), kept beside chat in the same backend.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// Opens room `name` to every authenticated user: `true` when created, `false` when it
    /// already was.
    async fn create_room(&self, name: String, now_ms: i64) -> Result<bool, StorageError>;

    /// `true` when the operator's room `name` existed.
    async fn delete_room(&self, name: String) -> Result<bool, StorageError>;

    async fn room_exists(&self, name: String) -> Result<bool, StorageError>;

    /// The operators' rooms, by name.
    async fn rooms(&self) -> Result<Vec<String>, StorageError>;

    /// Places a room on an instance unless another's lease on it is still running (unexpired
    /// at `now_ms`): `candidate` becomes the lease when the room is free or its lease expired,
    /// is extended when its owner already holds it, and otherwise the running lease is
    /// returned. Exactly one lease per room at any time, however many instances place it at
    /// once.
    async fn place_room(&self, candidate: RoomLease, now_ms: i64) -> Result<RoomLease, StorageError>;

    /// Extends the lease `token` on `room` to `expires_at_ms`: `false` when it is no longer that
    /// lease (expired and taken over, or released).
    async fn renew_room(&self, room: String, token: String, expires_at_ms: i64) -> Result<bool, StorageError>;

    /// Gives the lease `token` on `room` up (nothing when it is no longer that lease).
    async fn release_room(&self, room: String, token: String) -> Result<(), StorageError>;

    /// The leases running at `now_ms`, by room.
    async fn room_leases(&self, now_ms: i64) -> Result<Vec<RoomLease>, StorageError>;
}

/// Which instance runs a room's media (its `Room` actor and every participant's peer
/// connections) in a deployment of several: one owner per open room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomLease {
    pub room: String,
    /// The owner's instance id.
    pub owner: String,
    /// Where the other instances reach the owner's signaling (`sfu.cluster.advertise_url`).
    pub address: String,
    /// Unique to this placement: a renewal or release by an old holder of a lease that was
    /// since taken over names another token and changes nothing.
    pub token: String,
    pub expires_at_ms: i64,
}
