//! `SqliteChat`: users, conversations, messages, per-recipient deliveries and dead letters in
//! `<data_dir>/rampart.db`, one file per area of [`ChatBackend`](crate::storage::ChatBackend)
//! (`conversations.rs`, `messages.rs`, `deliveries.rs`; the SFU's rooms in `rooms.rs`).
//!
//! Message ids are derived by the caller from (sender, client_msg_id), and `messages.id` is
//! unique, so committing a batch twice stores each message once: the second commit reports the
//! original row as a duplicate.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::Connection;

use super::db::{Db, WalPolicy};
use super::faults::Faults;
use super::schema::MIGRATIONS;
use crate::storage::{ChatBackend, StorageError, StorageKind, StoredMessage};

/// The embedded chat database. Cheap to clone.
#[derive(Clone)]
pub struct SqliteChat {
    pub(super) db: Db,
}

impl SqliteChat {
    pub fn open(data_dir: &Path, readers: usize, wal: WalPolicy) -> Result<Self, StorageError> {
        Ok(Self { db: Db::open("storage", &data_dir.join("rampart.db"), MIGRATIONS, readers, wal)? })
    }
}

#[async_trait]
impl ChatBackend for SqliteChat {
    fn kind(&self) -> StorageKind {
        StorageKind::Sqlite
    }

    /// Fault injection for this store's disk (`chaos.enabled`).
    fn faults(&self) -> Option<&Arc<Faults>> {
        Some(self.db.faults())
    }

    /// A no-op job on the writer thread: done once the writes queued before it are.
    async fn write_probe(&self) -> Result<(), StorageError> {
        self.db.write(|_| Ok(())).await
    }
}

pub(super) const SELECT_MESSAGE: &str =
    "SELECT seq, id, conversation, sender, client_msg_id, body, created_at FROM messages";

pub(super) fn exists(connection: &Connection, sql: &str, key: &str) -> rusqlite::Result<bool> {
    connection.prepare_cached(sql)?.exists([key])
}

pub(super) fn stored_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        seq: row.get(0)?,
        id: row.get(1)?,
        conversation: row.get(2)?,
        sender: row.get(3)?,
        client_msg_id: row.get(4)?,
        body: row.get(5)?,
        created_at_ms: row.get(6)?,
    })
}
