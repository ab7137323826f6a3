//! Storage and search behind narrow interfaces, one folder per backend.
//!
//! Owns: what the rest of rampart may ask of storage — `ChatStore` for users, conversations,
//! messages, deliveries and dead letters, `SearchStore` for full-text search — and the
//! backend-neutral types they speak (`model`). Backends: `sqlite/` (embedded, the default: the
//! only code that knows SQL) and `elasticsearch/` (search on Elasticsearch/OpenSearch: the only
//! code that knows its query DSL). The MongoDB chat store is to slot in beside `sqlite/` behind
//! the same calls.
//!
//! Architecture Invariant: no blocking call runs on an actix arbiter thread: SQLite jobs go
//! through `Db::write` (one dedicated writer thread per file) or `Db::read` (a small reader
//! pool); remote engines are called asynchronously.

pub mod elasticsearch;
mod model;
pub mod sqlite;

pub use model::{
    CommitOutcome, ConversationCursor, ConversationSummary, DeadLetter, DeadLetterKind, NewDeadLetter, NewMessage,
    RequeueReport, SearchHit, StoredMessage, User,
};
pub use sqlite::{ChatStore, Db, FaultPlan, FaultState, Faults, IoFault, SqliteSearch, WalPolicy};

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
    /// A remote engine (the search engine) failed or refused.
    #[error("{0}")]
    Remote(String),
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

/// The search backend the indexer feeds and `/api/search` asks. Cheap to clone.
#[derive(Clone)]
pub enum SearchStore {
    Sqlite(SqliteSearch),
    /// The engine, and the chat store that keeps how far it has indexed (the position belongs
    /// to the store's commit order, and survives the engine losing its data).
    Elasticsearch {
        engine: elasticsearch::ElasticsearchSearch,
        progress: ChatStore,
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

    /// The highest message seq indexed (or dead-lettered) so far.
    pub async fn watermark(&self) -> Result<i64, StorageError> {
        match self {
            SearchStore::Sqlite(index) => index.watermark().await,
            SearchStore::Elasticsearch { progress, .. } => progress.search_watermark(ELASTICSEARCH_PROGRESS).await,
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

    /// Moves the watermark to `through` (after the step's rejections are dead-lettered).
    pub async fn advance(&self, through: i64) -> Result<(), StorageError> {
        match self {
            SearchStore::Sqlite(_) => Ok(()),
            SearchStore::Elasticsearch { progress, .. } => {
                progress.set_search_watermark(ELASTICSEARCH_PROGRESS, through).await
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
