//! Storage and search behind narrow interfaces, one folder per backend.
//!
//! Owns: what the rest of rampart may ask of storage — `ChatStore` for users, conversations,
//! messages, deliveries and dead letters, `SearchStore` for full-text search — and the
//! backend-neutral types they speak (`model`). Backends: `sqlite/` (embedded, the default: the
//! only code that knows SQL) and `elasticsearch/` (search on Elasticsearch/OpenSearch: the only
//! code that knows its query DSL) and `mongodb/` (the chat store on MongoDB: the only code that
//! knows BSON).
//!
//! Architecture Invariant: no blocking call runs on an actix arbiter thread: SQLite jobs go
//! through `Db::write` (one dedicated writer thread per file) or `Db::read` (a small reader
//! pool); remote engines are called asynchronously.

mod config;
pub mod elasticsearch;
mod model;
pub mod mongodb;
pub mod sqlite;

use std::sync::Arc;

pub use config::StorageConfig;
pub use model::{
    BacklogEntry, BacklogPage, Claim, CommitOutcome, ConversationCursor, ConversationSummary, DeadLetter,
    DeadLetterKind, NewDeadLetter, NewMessage, RequeueReport, SearchHit, StoredMessage, User,
};
pub use sqlite::{Db, FaultPlan, FaultState, Faults, IoFault, SqliteChat, SqliteSearch, WalPolicy};

/// Why a storage call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("opening the database: {0}")]
    Open(String),
    #[error("database error: {0}")]
    Sqlite(String),
    /// The database thread is gone (shutdown).
    #[error("the database is closed")]
    Closed,
    /// The job panicked; the thread survived and a crash record was written.
    #[error("the storage job panicked: {0}")]
    Panicked(String),
    /// No answer within the per-operation timeout (the job may still complete).
    #[error("the storage operation timed out")]
    Timeout,
    /// The storage circuit breaker is open: calls are refused until it lets trial calls through.
    #[error("storage is unavailable (circuit open)")]
    CircuitOpen,
    /// A remote engine (the search engine) failed, or is overloaded.
    #[error("{0}")]
    Remote(String),
    /// A batch commit outlived its deadline while the store answered a probe in time: the batch,
    /// not the store, is at fault (the batch writer bisects it as it does a panic).
    #[error("{0}")]
    Stalled(String),
    /// A remote engine answered and refused this request (a 4xx other than 429): the engine is
    /// healthy, the request is at fault. Never counts against a circuit breaker.
    #[error("{0}")]
    Refused(String),
}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> Self {
        StorageError::Sqlite(error.to_string())
    }
}

/// Milliseconds since the Unix epoch, the time unit stored in every table.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// `now_ms`-style milliseconds as RFC 3339.
pub fn ms_to_rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    crate::rfc3339::format(at)
}

/// Where chat is stored (`storage.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// The embedded SQLite database (`rampart.db` under `storage.data_dir`).
    #[default]
    Sqlite,
    /// MongoDB (`[mongodb]`), shared by every process of a deployment.
    Mongodb,
}

/// The chat store every pipeline actor and handler talks to. Cheap to clone.
#[derive(Clone)]
pub enum ChatStore {
    Sqlite(SqliteChat),
    Mongodb(mongodb::MongoChat),
}

/// Calls the same method on whichever backend `$store` is.
macro_rules! on_backend {
    ($store:expr, $backend:ident => $call:expr) => {
        match $store {
            ChatStore::Sqlite($backend) => $call,
            ChatStore::Mongodb($backend) => $call,
        }
    };
}

impl ChatStore {
    pub fn kind(&self) -> StorageKind {
        match self {
            ChatStore::Sqlite(_) => StorageKind::Sqlite,
            ChatStore::Mongodb(_) => StorageKind::Mongodb,
        }
    }

    /// Fault injection (`/admin/chaos/storage`): the embedded store only, whose disk it mimics.
    pub fn faults(&self) -> Option<&Arc<Faults>> {
        match self {
            ChatStore::Sqlite(store) => Some(store.faults()),
            ChatStore::Mongodb(_) => None,
        }
    }

    /// A tiny write that tells a healthy store from a slow one: how long it took, or an error
    /// when it did not complete within `timeout`. Embedded: a no-op job on the writer thread (it
    /// waits behind the writes before it). MongoDB: an upsert of one small document with the
    /// configured write concern.
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<std::time::Duration, StorageError> {
        let started = std::time::Instant::now();
        let probe = async { on_backend!(self, store => store.probe().await) };
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StorageError::Timeout),
        }
    }

    /// `true` when created, `false` when the id is taken.
    pub async fn create_user(&self, id: String, display_name: String, now_ms: i64) -> Result<bool, StorageError> {
        on_backend!(self, store => store.create_user(id, display_name, now_ms).await)
    }

    pub async fn user_exists(&self, id: String) -> Result<bool, StorageError> {
        on_backend!(self, store => store.user_exists(id).await)
    }

    pub async fn user(&self, id: String) -> Result<Option<User>, StorageError> {
        on_backend!(self, store => store.user(id).await)
    }

    /// One conversation with its members and latest message, or `None` when it does not exist.
    pub async fn conversation(&self, id: String) -> Result<Option<ConversationSummary>, StorageError> {
        on_backend!(self, store => store.conversation(id).await)
    }

    /// A page of `user`'s conversations, most recently active first, after `cursor`.
    pub async fn conversations_page(
        &self,
        user: String,
        cursor: Option<ConversationCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StorageError> {
        on_backend!(self, store => store.conversations_page(user, cursor, limit).await)
    }

    /// Creates a conversation; `Err(unknown)` lists members that are not users. The creator is
    /// not checked: their identity comes from a signed token, and their user record may be
    /// provisioned a moment later (see `pipeline.unknown_sender_wait`).
    pub async fn create_conversation(
        &self,
        id: String,
        title: String,
        created_by: String,
        members: Vec<String>,
        now_ms: i64,
    ) -> Result<Result<(), Vec<String>>, StorageError> {
        on_backend!(self, store => store.create_conversation(id, title, created_by, members, now_ms).await)
    }

    /// The members of a conversation, or `None` when it does not exist.
    pub async fn members(&self, conversation: String) -> Result<Option<Vec<String>>, StorageError> {
        on_backend!(self, store => store.members(conversation).await)
    }

    /// Every conversation `user` is a member of.
    pub async fn conversations_of(&self, user: String) -> Result<Vec<String>, StorageError> {
        on_backend!(self, store => store.conversations_of(user).await)
    }

    /// Commits a batch: every message gets an outcome, in batch order, and the deliveries of
    /// stored messages (one per member other than the sender) are written before this returns.
    /// `inspect` sees each message before it is written (a panic there fails the batch as
    /// `StorageError::Panicked`, and nothing of it is acked).
    pub async fn commit_batch_inspected(
        &self,
        batch: Arc<[NewMessage]>,
        now_ms: i64,
        inspect: impl Fn(&NewMessage) + Send + 'static,
    ) -> Result<Vec<CommitOutcome>, StorageError> {
        on_backend!(self, store => store.commit_batch_inspected(batch, now_ms, inspect).await)
    }

    /// Committed message by id (the original of a duplicate).
    pub async fn message(&self, id: String) -> Result<Option<StoredMessage>, StorageError> {
        on_backend!(self, store => store.message(id).await)
    }

    /// Newest first: up to `limit` messages of `conversation` older than message `before`.
    /// `Ok(None)` when `before` is not a message of this conversation.
    pub async fn history(
        &self,
        conversation: String,
        before: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<StoredMessage>>, StorageError> {
        on_backend!(self, store => store.history(conversation, before, limit).await)
    }

    /// How far the external search engine `name` has indexed (0: nothing yet).
    pub async fn search_watermark(&self, name: &'static str) -> Result<i64, StorageError> {
        on_backend!(self, store => store.search_watermark(name).await)
    }

    /// Records that `name` has indexed (or dead-lettered) everything up to `seq`; never moves
    /// the watermark back.
    pub async fn set_search_watermark(&self, name: &'static str, seq: i64) -> Result<(), StorageError> {
        on_backend!(self, store => store.set_search_watermark(name, seq).await)
    }

    /// Messages committed after `seq`, in seq order (the search indexer's feed).
    pub async fn messages_after(&self, seq: i64, limit: u32) -> Result<Vec<StoredMessage>, StorageError> {
        on_backend!(self, store => store.messages_after(seq, limit).await)
    }

    /// A page of `recipient`'s undelivered messages: up to `limit` delivery records with a seq
    /// after `after_seq`, in seq order, pending ones and with `include_in_flight` also those
    /// pushed to a connection but never confirmed (what a reconnecting client must get again).
    /// The page says where the next one starts and whether this was the last.
    pub async fn undelivered(
        &self,
        recipient: String,
        after_seq: i64,
        limit: u32,
        include_in_flight: bool,
    ) -> Result<BacklogPage, StorageError> {
        on_backend!(self, store => store.undelivered(recipient, after_seq, limit, include_in_flight).await)
    }

    /// Of `recipients`, those with a pending delivery (never pushed, or put back) of a message
    /// stored before `stored_before_ms`: the delivery backstop's question for the users
    /// connected to this process.
    pub async fn stale_pending(
        &self,
        recipients: Vec<String>,
        stored_before_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        on_backend!(self, store => store.stale_pending(recipients, stored_before_ms).await)
    }

    /// Marks deliveries pushed to a connection: in flight, claimed now. Only records still
    /// pending or in flight change (a confirmed one stays delivered).
    pub async fn mark_in_flight(&self, claims: Vec<Claim>, now_ms: i64) -> Result<(), StorageError> {
        on_backend!(self, store => store.mark_in_flight(claims, now_ms).await)
    }

    /// Marks deliveries confirmed by their recipient. Ids that are not the recipient's are ignored.
    pub async fn mark_delivered(&self, confirmations: Vec<(String, String)>) -> Result<(), StorageError> {
        on_backend!(self, store => store.mark_delivered(confirmations).await)
    }

    /// One cleanup pass: up to `limit` deliveries in flight since before `stale_before_ms` go
    /// back to pending with one more attempt, or to dead letters once `max_attempts` is reached.
    pub async fn requeue_stale(
        &self,
        stale_before_ms: i64,
        max_attempts: u32,
        limit: u32,
        now_ms: i64,
    ) -> Result<RequeueReport, StorageError> {
        on_backend!(self, store => store.requeue_stale(stale_before_ms, max_attempts, limit, now_ms).await)
    }

    /// Puts a dead-lettered delivery back to pending with a fresh attempt count.
    pub async fn requeue_delivery(&self, recipient: String, message_id: String) -> Result<bool, StorageError> {
        on_backend!(self, store => store.requeue_delivery(recipient, message_id).await)
    }

    pub async fn add_dead_letter(&self, letter: NewDeadLetter, now_ms: i64) -> Result<String, StorageError> {
        on_backend!(self, store => store.add_dead_letter(letter, now_ms).await)
    }

    /// Newest first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        on_backend!(self, store => store.dead_letters(limit).await)
    }

    pub async fn dead_letter(&self, id: String) -> Result<Option<DeadLetter>, StorageError> {
        on_backend!(self, store => store.dead_letter(id).await)
    }

    /// Opens SFU room `name` to every authenticated user: `true` when created, `false` when it
    /// already was.
    pub async fn create_room(&self, name: String, now_ms: i64) -> Result<bool, StorageError> {
        on_backend!(self, store => store.create_room(name, now_ms).await)
    }

    /// `true` when the operator's room `name` existed.
    pub async fn delete_room(&self, name: String) -> Result<bool, StorageError> {
        on_backend!(self, store => store.delete_room(name).await)
    }

    pub async fn room_exists(&self, name: String) -> Result<bool, StorageError> {
        on_backend!(self, store => store.room_exists(name).await)
    }

    /// The operators' rooms, by name.
    pub async fn rooms(&self) -> Result<Vec<String>, StorageError> {
        on_backend!(self, store => store.rooms().await)
    }

    pub async fn remove_dead_letter(&self, id: String) -> Result<bool, StorageError> {
        on_backend!(self, store => store.remove_dead_letter(id).await)
    }
}

/// Which search engine indexes and answers queries (`search.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchKind {
    /// The embedded SQLite FTS5 index (`search.db`).
    #[default]
    Sqlite,
    /// Elasticsearch or OpenSearch (`[elasticsearch]`).
    Elasticsearch,
}

/// Name of the external engine's watermark in the chat store.
const ELASTICSEARCH_PROGRESS: &str = "elasticsearch";

/// How the indexer of an external engine knows what is left to index.
#[derive(Clone)]
pub enum SearchProgress {
    /// A seq watermark kept in the chat store (`search_progress`): exact where seqs follow
    /// commit order (the embedded store has one writer).
    Watermark(ChatStore),
    /// A flag on each MongoDB message, set when it is inserted and cleared once it is indexed or
    /// dead-lettered: exact in whatever order the writes of several processes land.
    Flags(mongodb::MongoChat),
}

/// The search backend the indexer feeds and `/api/search` asks. Cheap to clone.
#[derive(Clone)]
pub enum SearchStore {
    Sqlite(SqliteSearch),
    /// The engine, and where the indexer's progress is kept (beside the messages, so it survives
    /// the engine losing its data).
    Elasticsearch {
        engine: elasticsearch::ElasticsearchSearch,
        progress: SearchProgress,
    },
}

/// What one indexing step did.
#[derive(Debug, Default)]
pub struct IndexOutcome {
    /// Everything up to this seq is indexed or refused for good (then in `rejected`); the
    /// watermark may move here once those are dead-lettered (`SearchStore::advance`).
    pub through: Option<i64>,
    pub indexed: usize,
    /// Refused for good by the engine, with its reason: to dead-letter.
    pub rejected: Vec<(StoredMessage, String)>,
    /// Why the step stopped before its end (the rest is retried on the next poll).
    pub incomplete: Option<StorageError>,
}

impl SearchStore {
    pub fn kind(&self) -> SearchKind {
        match self {
            SearchStore::Sqlite(_) => SearchKind::Sqlite,
            SearchStore::Elasticsearch { .. } => SearchKind::Elasticsearch,
        }
    }

    /// The next messages to index (at most `limit`, ascending seq), read from `store`.
    pub async fn pending(&self, store: &ChatStore, limit: u32) -> Result<Vec<StoredMessage>, StorageError> {
        match self {
            SearchStore::Sqlite(index) => store.messages_after(index.watermark().await?, limit).await,
            SearchStore::Elasticsearch { progress: SearchProgress::Watermark(chat), .. } => {
                store.messages_after(chat.search_watermark(ELASTICSEARCH_PROGRESS).await?, limit).await
            }
            SearchStore::Elasticsearch { progress: SearchProgress::Flags(mongo), .. } => mongo.unindexed(limit).await,
        }
    }

    /// Indexes `messages` (ascending seq). The embedded index advances its watermark in the same
    /// transaction; an external engine's moves with `advance`.
    pub async fn index(&self, messages: Vec<StoredMessage>) -> Result<IndexOutcome, StorageError> {
        match self {
            SearchStore::Sqlite(index) => {
                let indexed = messages.len();
                let through = index.index(messages).await?;
                Ok(IndexOutcome { through: Some(through), indexed, ..IndexOutcome::default() })
            }
            SearchStore::Elasticsearch { engine, .. } => engine.index(&messages).await,
        }
    }

    /// Records that the step's messages up to seq `through` are done (after its rejections
    /// are dead-lettered): the watermark moves there, or their flags are cleared.
    pub async fn advance(&self, through: i64, step: &[StoredMessage]) -> Result<(), StorageError> {
        match self {
            SearchStore::Sqlite(_) => Ok(()),
            SearchStore::Elasticsearch { progress: SearchProgress::Watermark(chat), .. } => {
                chat.set_search_watermark(ELASTICSEARCH_PROGRESS, through).await
            }
            SearchStore::Elasticsearch { progress: SearchProgress::Flags(mongo), .. } => {
                let done = step.iter().filter(|message| message.seq <= through).map(|m| m.id.clone()).collect();
                mongo.mark_indexed(done).await
            }
        }
    }

    /// Best matches first, restricted to `conversations`; every word of `query` must match.
    pub async fn search(
        &self,
        query: String,
        conversations: Vec<String>,
        limit: u32,
    ) -> Result<Vec<SearchHit>, StorageError> {
        match self {
            SearchStore::Sqlite(index) => index.search(query, conversations, limit).await,
            SearchStore::Elasticsearch { engine, .. } => engine.search(query, conversations, limit).await,
        }
    }
}
