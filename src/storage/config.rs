//! The `[storage]` section: which backend, where embedded data lives, and the WAL policy.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where chat is stored: `sqlite` (embedded, under `data_dir`) or `mongodb` (`[mongodb]`).
    pub kind: super::StorageKind,
    /// Directory for everything rampart persists (embedded database, crash records, secrets).
    pub data_dir: PathBuf,
    /// Reader threads per database file (history, search, deliveries); writes have one thread.
    pub readers: usize,
    /// A WAL this large is checkpointed and restarted (writers wait for it, briefly).
    pub wal_checkpoint_bytes: u64,
    /// A restarted WAL file is truncated to this size (SQLite's `journal_size_limit`).
    pub wal_size_limit_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let wal = super::WalPolicy::default();
        Self {
            kind: super::StorageKind::Sqlite,
            data_dir: PathBuf::from("./data"),
            readers: 4,
            wal_checkpoint_bytes: wal.checkpoint_bytes,
            wal_size_limit_bytes: wal.size_limit_bytes,
        }
    }
}

impl StorageConfig {
    pub fn wal_policy(&self) -> super::WalPolicy {
        super::WalPolicy { checkpoint_bytes: self.wal_checkpoint_bytes, size_limit_bytes: self.wal_size_limit_bytes }
    }
}
