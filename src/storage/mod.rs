//! Embedded storage: SQLite files under `storage.data_dir`, reached only through this module.
//!
//! Owns: the schema and its migrations, every SQL statement, and the threads that run them
//! (`db::Db`). The rest of rampart sees the narrow interfaces below — `ChatStore` for users,
//! conversations, messages, deliveries and dead letters, `SearchStore` for the full-text index —
//! so the MongoDB and OpenSearch backends can slot in behind the same calls.
//!
//! Architecture Invariant: only this module knows SQL. No blocking SQLite call runs on an actix
//! arbiter thread: everything goes through `Db::write` (one dedicated writer thread per file)
//! or `Db::read` (a small reader pool).

mod chat;
mod db;
mod faults;
mod search;

pub use chat::{
    ChatStore, CommitOutcome, ConversationCursor, ConversationSummary, DeadLetter, DeadLetterKind, NewDeadLetter,
    NewMessage, RequeueReport, StoredMessage, User,
};
pub use db::{Db, WalPolicy};
pub use faults::{FaultPlan, FaultState, Faults, IoFault};
pub use search::{SearchHit, SearchStore};

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
