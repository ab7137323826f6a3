//! The embedded backend: SQLite files under `storage.data_dir`, the default for chat storage and
//! for search.
//!
//! Owns: the schema and its migrations (`schema.rs`), every SQL statement (one file per area of
//! the chat contract), and the threads that run them (`db::Db`): per file one writer thread, a
//! small reader pool and a WAL checkpointer. No blocking SQLite call runs on an actix arbiter
//! thread.

mod chat;
mod conversations;
mod db;
mod deliveries;
mod faults;
mod messages;
mod rooms;
mod schema;
mod search;
#[cfg(test)]
mod tests;

pub use chat::SqliteChat;
pub use db::{Db, WalPolicy};
pub use faults::{FaultPlan, FaultState, Faults, IoFault};
pub use search::SqliteSearch;
