//! Storage and search behind narrow interfaces, one folder per backend.
//!
//! Owns: what the rest of rampart may ask of storage — the `ChatBackend` contract (`backend.rs`:
//! users, conversations, messages, deliveries and dead letters; `RoomStore` for the SFU),
//! `SearchStore` for full-text search, and `open`, which picks the backends the configuration
//! names — and the backend-neutral types they speak (`model`). Backends: `sqlite/` (embedded, the default: the
//! only code that knows SQL) and `elasticsearch/` (search on Elasticsearch/OpenSearch: the only
//! code that knows its query DSL) and `mongodb/` (the chat store on MongoDB: the only code that
//! knows BSON).
//!
//! Architecture Invariant: no blocking call runs on an actix arbiter thread: SQLite jobs go
//! through `Db::write` (one dedicated writer thread per file) or `Db::read` (a small reader
//! pool); remote engines are called asynchronously.

mod backend;
mod config;
pub mod elasticsearch;
mod model;
pub mod mongodb;
pub mod sqlite;

use std::sync::Arc;

pub use backend::{
    ChatBackend, ChatStore, ConversationStore, DeadLetterStore, DeliveryStore, Inspect, MessageStore, RoomLease,
    RoomStore, UserStore,
};
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

/// Which backends a process opens, and their sections of the configuration.
pub struct Selection<'a> {
    pub storage: &'a StorageConfig,
    pub mongodb: &'a mongodb::MongoConfig,
    pub search: SearchKind,
    pub elasticsearch: &'a elasticsearch::ElasticsearchConfig,
}

/// What [`open`] opened: the chat store, the SFU's rooms kept in the same backend, and the
/// search index.
pub struct Stores {
    pub chat: ChatStore,
    pub rooms: Arc<dyn RoomStore>,
    pub search: SearchStore,
}

/// Which store [`open`] could not open, and why.
#[derive(Debug, thiserror::Error)]
#[error("opening {what}: {reason}")]
pub struct OpenError {
    what: &'static str,
    reason: StorageError,
}

/// Opens the chat store `storage.kind` names and the search index `search.kind` names. With
/// MongoDB this waits for the server (a process that cannot reach its store should not report
/// itself started); an external search engine is not asked anything here (its indexer creates the
/// index on its first step, behind the search breaker).
pub async fn open(selection: Selection<'_>) -> Result<Stores, OpenError> {
    let Selection { storage, mongodb, search, elasticsearch } = selection;
    let wal = storage.wal_policy();
    let failed = |what: &'static str| move |reason: StorageError| OpenError { what, reason };
    let (chat, rooms, progress): (ChatStore, Arc<dyn RoomStore>, SearchProgress) = match storage.kind {
        StorageKind::Sqlite => {
            let sqlite =
                SqliteChat::open(&storage.data_dir, storage.readers, wal).map_err(failed("the chat database"))?;
            let chat: ChatStore = Arc::new(sqlite.clone());
            (chat.clone(), Arc::new(sqlite), SearchProgress::Watermark(chat))
        }
        StorageKind::Mongodb => {
            // With an external engine, each message carries an "unindexed" flag from its insert
            // (see `SearchProgress::Flags`).
            let flag_unindexed = search == SearchKind::Elasticsearch;
            let mongo =
                mongodb::MongoChat::open(mongodb, flag_unindexed).await.map_err(failed("the MongoDB chat store"))?;
            (Arc::new(mongo.clone()), Arc::new(mongo.clone()), SearchProgress::Flags(mongo))
        }
    };
    let search = match search {
        SearchKind::Sqlite => SearchStore::Sqlite(
            SqliteSearch::open(&storage.data_dir, storage.readers.div_ceil(2), wal)
                .map_err(failed("the search index"))?,
        ),
        SearchKind::Elasticsearch => SearchStore::Elasticsearch {
            engine: elasticsearch::ElasticsearchSearch::new(elasticsearch)
                .map_err(failed("the search engine client"))?,
            progress,
        },
    };
    Ok(Stores { chat, rooms, search })
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
