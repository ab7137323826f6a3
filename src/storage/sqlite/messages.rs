//! Messages: the batch commit (messages and their deliveries in one transaction), history, and
//! the search indexer's feed and watermark.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};

use super::chat::{stored_message, SqliteChat, SELECT_MESSAGE};
use crate::storage::{CommitOutcome, Inspect, MessageStore, NewMessage, StorageError, StoredMessage};

impl SqliteChat {
    /// Commits a batch in one transaction. Every message gets an outcome, in batch order; the
    /// deliveries of new messages (one per member other than the sender) are written with them.
    #[cfg(test)]
    pub async fn commit_batch(
        &self,
        batch: Arc<[NewMessage]>,
        now_ms: i64,
    ) -> Result<Vec<CommitOutcome>, StorageError> {
        self.commit_batch_inspected(batch, now_ms, Box::new(|_| {})).await
    }
}

#[async_trait]
impl MessageStore for SqliteChat {
    async fn commit_batch_inspected(
        &self,
        batch: Arc<[NewMessage]>,
        now_ms: i64,
        inspect: Inspect,
    ) -> Result<Vec<CommitOutcome>, StorageError> {
        let faults = self.db.faults().clone();
        self.db
            .write(move |connection| {
                let transaction = connection.transaction()?;
                let fail_point = || faults.fail_point();
                let outcomes = commit_in(&transaction, &batch, now_ms, &inspect, &fail_point)?;
                transaction.commit()?;
                Ok(outcomes)
            })
            .await
    }

    /// Committed message by id (the original of a duplicate).
    async fn message(&self, id: String) -> Result<Option<StoredMessage>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!("{SELECT_MESSAGE} WHERE id = ?1"))?;
                Ok(statement.query_row([&id], stored_message).optional()?)
            })
            .await
    }

    /// Newest first: up to `limit` messages of `conversation` older than message `before`.
    /// `Ok(None)` when `before` is not a message of this conversation.
    async fn history(
        &self,
        conversation: String,
        before: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<StoredMessage>>, StorageError> {
        self.db
            .read(move |connection| {
                let before_seq = match before {
                    None => i64::MAX,
                    Some(before) => {
                        let seq = connection
                            .prepare_cached("SELECT seq FROM messages WHERE id = ?1 AND conversation = ?2")?
                            .query_row([&before, &conversation], |row| row.get::<_, i64>(0))
                            .optional()?;
                        match seq {
                            Some(seq) => seq,
                            None => return Ok(None),
                        }
                    }
                };
                let mut statement = connection.prepare_cached(&format!(
                    "{SELECT_MESSAGE} WHERE conversation = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
                ))?;
                let messages = statement
                    .query_map(params![conversation, before_seq, limit], stored_message)?
                    .collect::<Result<_, _>>()?;
                Ok(Some(messages))
            })
            .await
    }

    /// How far the external search engine `name` has indexed (0: nothing yet).
    async fn search_watermark(&self, name: &'static str) -> Result<i64, StorageError> {
        self.db
            .read(move |connection| {
                let seq = connection
                    .prepare_cached("SELECT seq FROM search_progress WHERE name = ?1")?
                    .query_row([name], |row| row.get(0))
                    .optional()?;
                Ok(seq.unwrap_or(0))
            })
            .await
    }

    /// Records that `name` has indexed (or dead-lettered) everything up to `seq`; never moves
    /// the watermark back.
    async fn set_search_watermark(&self, name: &'static str, seq: i64) -> Result<(), StorageError> {
        self.db
            .write(move |connection| {
                connection.execute(
                    "INSERT INTO search_progress (name, seq) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                    params![name, seq],
                )?;
                Ok(())
            })
            .await
    }

    /// Messages committed after `seq`, oldest first (the search indexer's feed).
    async fn messages_after(&self, seq: i64, limit: u32) -> Result<Vec<StoredMessage>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement =
                    connection.prepare_cached(&format!("{SELECT_MESSAGE} WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
                let messages = statement.query_map(params![seq, limit], stored_message)?.collect::<Result<_, _>>()?;
                Ok(messages)
            })
            .await
    }
}

fn commit_in(
    transaction: &Transaction<'_>,
    batch: &[NewMessage],
    now_ms: i64,
    inspect: &dyn Fn(&NewMessage),
    fail_point: &dyn Fn() -> Result<(), rusqlite::Error>,
) -> Result<Vec<CommitOutcome>, StorageError> {
    let mut insert = transaction.prepare_cached(
        "INSERT INTO messages (id, conversation, sender, client_msg_id, body, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
    )?;
    let mut deliveries = transaction.prepare_cached(
        "INSERT OR IGNORE INTO deliveries (recipient, message_seq, state)
         SELECT user, ?1, 0 FROM members WHERE conversation = ?2 AND user <> ?3",
    )?;
    let mut original = transaction.prepare_cached(&format!("{SELECT_MESSAGE} WHERE id = ?1"))?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for (index, message) in batch.iter().enumerate() {
        // Injected I/O faults strike halfway, after real rows were written.
        if index == batch.len() / 2 {
            fail_point()?;
        }
        inspect(message);
        let created_at_ms = message.created_at_ms.unwrap_or(now_ms);
        let inserted = insert.execute(params![
            message.id,
            message.conversation,
            message.sender,
            message.client_msg_id,
            message.body,
            created_at_ms
        ])?;
        if inserted == 1 {
            let seq = transaction.last_insert_rowid();
            deliveries.execute(params![seq, message.conversation, message.sender])?;
            outcomes.push(CommitOutcome::Stored {
                message: StoredMessage {
                    seq,
                    id: message.id.clone(),
                    conversation: message.conversation.clone(),
                    sender: message.sender.clone(),
                    client_msg_id: message.client_msg_id.clone(),
                    body: message.body.clone(),
                    created_at_ms,
                },
                duplicate: false,
            });
        } else {
            let stored = original.query_row([&message.id], stored_message)?;
            outcomes.push(CommitOutcome::Stored { message: stored, duplicate: true });
        }
    }
    Ok(outcomes)
}
