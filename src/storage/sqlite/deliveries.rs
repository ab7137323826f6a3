//! Per-recipient deliveries (pending, in flight, delivered, dead-lettered) and the dead letters.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::chat::{stored_message, SqliteChat};
use crate::storage::{
    BacklogEntry, BacklogPage, Claim, DeadLetter, DeadLetterKind, DeadLetterStore, DeliveryStore, NewDeadLetter,
    RequeueReport, StorageError, StoredMessage,
};

/// A recipient's undelivered records (pending and in flight) after a seq, in seq order.
pub(super) const SELECT_UNDELIVERED: &str =
    "SELECT m.seq, m.id, m.conversation, m.sender, m.client_msg_id, m.body, m.created_at
     FROM deliveries d INDEXED BY deliveries_undelivered JOIN messages m ON m.seq = d.message_seq
     WHERE d.recipient = ?1 AND d.state IN (0, 1) AND d.message_seq > ?2";

const SELECT_DEAD_LETTER: &str = "SELECT id, kind, reason, attempts, payload, at FROM dead_letters";

#[async_trait]
impl DeliveryStore for SqliteChat {
    /// A page of undelivered messages for `recipient` after `after_seq`, in commit order:
    /// pending ones, and with `include_in_flight` also those pushed to a connection but never
    /// confirmed (what a reconnecting client must get again).
    async fn undelivered(
        &self,
        recipient: String,
        after_seq: i64,
        limit: u32,
        include_in_flight: bool,
    ) -> Result<BacklogPage, StorageError> {
        self.db
            .read(move |connection| {
                let sql = if include_in_flight {
                    format!("{SELECT_UNDELIVERED} ORDER BY d.message_seq LIMIT ?3")
                } else {
                    format!("{SELECT_UNDELIVERED} AND d.state = 0 ORDER BY d.message_seq LIMIT ?3")
                };
                let mut statement = connection.prepare_cached(&sql)?;
                let messages: Vec<StoredMessage> = statement
                    .query_map(params![recipient, after_seq, limit], stored_message)?
                    .collect::<Result<_, _>>()?;
                // A delivery record and its message are written in one transaction: every
                // record read has its message, so the page's records are its messages.
                let through = messages.last().map_or(after_seq, |message| message.seq);
                let last = messages.len() < limit as usize;
                let entries = messages.into_iter().map(|message| BacklogEntry { seq: message.seq, message }).collect();
                Ok(BacklogPage { entries, through, last })
            })
            .await
    }

    /// Of `recipients`, those with a pending delivery of a message stored before
    /// `stored_before_ms`.
    async fn stale_pending(&self, recipients: Vec<String>, stored_before_ms: i64) -> Result<Vec<String>, StorageError> {
        self.db
            .read(move |connection| {
                // One probe per recipient into deliveries_undelivered (a connected user's pending
                // records are few: pushes are claimed within milliseconds).
                let mut statement = connection.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM deliveries d INDEXED BY deliveries_undelivered
                     JOIN messages m ON m.seq = d.message_seq
                     WHERE d.recipient = ?1 AND d.state IN (0, 1) AND d.state = 0 AND m.created_at < ?2)",
                )?;
                let mut stale = Vec::new();
                for recipient in recipients {
                    if statement.query_row(params![recipient, stored_before_ms], |row| row.get::<_, bool>(0))? {
                        stale.push(recipient);
                    }
                }
                Ok(stale)
            })
            .await
    }

    /// Marks deliveries pushed to a connection: in_flight, claimed now.
    async fn mark_in_flight(&self, claims: Vec<Claim>, now_ms: i64) -> Result<(), StorageError> {
        self.db
            .write(move |connection| {
                let transaction = connection.transaction()?;
                {
                    let mut statement = transaction.prepare_cached(
                        "UPDATE deliveries SET state = 1, claimed_at = ?3
                         WHERE recipient = ?1 AND message_seq = ?2 AND state IN (0, 1)",
                    )?;
                    for claim in &claims {
                        statement.execute(params![claim.recipient, claim.seq, now_ms])?;
                    }
                }
                transaction.commit()?;
                Ok(())
            })
            .await
    }

    /// Marks deliveries confirmed by their recipient. Ids that are not the recipient's are ignored.
    async fn mark_delivered(&self, confirmations: Vec<(String, String)>) -> Result<(), StorageError> {
        self.db
            .write(move |connection| {
                let transaction = connection.transaction()?;
                {
                    let mut statement = transaction.prepare_cached(
                        "UPDATE deliveries SET state = 2
                         WHERE recipient = ?1 AND message_seq = (SELECT seq FROM messages WHERE id = ?2)
                           AND state IN (0, 1)",
                    )?;
                    for (recipient, id) in &confirmations {
                        statement.execute(params![recipient, id])?;
                    }
                }
                transaction.commit()?;
                Ok(())
            })
            .await
    }

    /// One cleanup pass: up to `limit` deliveries in flight since before `stale_before_ms` go
    /// back to pending with one more attempt, or to dead letters once `max_attempts` is reached.
    /// Each record is handled inside `contain`: a panic on one dead-letters that record alone.
    async fn requeue_stale(
        &self,
        stale_before_ms: i64,
        max_attempts: u32,
        limit: u32,
        now_ms: i64,
    ) -> Result<RequeueReport, StorageError> {
        self.db
            .write(move |connection| {
                let transaction = connection.transaction()?;
                let stale: Vec<StaleDelivery> = {
                    let mut statement = transaction.prepare_cached(
                        "SELECT d.recipient, d.message_seq, m.id, d.attempts
                         FROM deliveries d JOIN messages m ON m.seq = d.message_seq
                         WHERE d.state = 1 AND d.claimed_at < ?1 ORDER BY d.claimed_at LIMIT ?2",
                    )?;
                    let rows = statement
                        .query_map(params![stale_before_ms, limit], |row| {
                            Ok(StaleDelivery {
                                recipient: row.get(0)?,
                                seq: row.get(1)?,
                                message_id: row.get(2)?,
                                attempts: row.get::<_, u32>(3)? + 1,
                            })
                        })?
                        .collect::<Result<_, _>>()?;
                    rows
                };
                let mut report = RequeueReport { examined: stale.len(), ..RequeueReport::default() };
                for record in stale {
                    let requeued = match crate::supervision::contain(|| {
                        requeue_one(&transaction, &record, max_attempts, now_ms)
                    }) {
                        Ok(requeued) => requeued?,
                        Err(panic) => {
                            let reason = format!("cleanup panicked on this record: {}", panic.message);
                            dead_letter_delivery(&transaction, &record, reason, now_ms)?;
                            false
                        }
                    };
                    if !requeued {
                        report.dead_lettered += 1;
                    } else if !report.requeued.contains(&record.recipient) {
                        report.requeued.push(record.recipient);
                    }
                }
                transaction.commit()?;
                Ok(report)
            })
            .await
    }

    /// Puts a dead-lettered delivery back to pending with a fresh attempt count.
    async fn requeue_delivery(&self, recipient: String, message_id: String) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| {
                let changed = connection.execute(
                    "UPDATE deliveries SET state = 0, claimed_at = NULL, attempts = 0
                     WHERE recipient = ?1 AND message_seq = (SELECT seq FROM messages WHERE id = ?2)",
                    params![recipient, message_id],
                )?;
                Ok(changed == 1)
            })
            .await
    }
}

#[async_trait]
impl DeadLetterStore for SqliteChat {
    async fn add_dead_letter(&self, letter: NewDeadLetter, now_ms: i64) -> Result<String, StorageError> {
        self.db.write(move |connection| insert_dead_letter(connection, &letter, now_ms)).await
    }

    /// Newest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement =
                    connection.prepare_cached(&format!("{SELECT_DEAD_LETTER} ORDER BY at DESC, id DESC LIMIT ?1"))?;
                let letters = statement.query_map([limit], dead_letter)?.collect::<Result<_, _>>()?;
                Ok(letters)
            })
            .await
    }

    async fn dead_letter(&self, id: String) -> Result<Option<DeadLetter>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!("{SELECT_DEAD_LETTER} WHERE id = ?1"))?;
                Ok(statement.query_row([&id], dead_letter).optional()?)
            })
            .await
    }

    async fn remove_dead_letter(&self, id: String) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| Ok(connection.execute("DELETE FROM dead_letters WHERE id = ?1", [&id])? == 1))
            .await
    }
}

/// A delivery in flight for too long, with its attempt count already incremented.
struct StaleDelivery {
    recipient: String,
    seq: i64,
    message_id: String,
    attempts: u32,
}

/// Back to pending (`true`), or to dead letters once `max_attempts` is reached (`false`).
fn requeue_one(
    transaction: &Transaction<'_>,
    record: &StaleDelivery,
    max_attempts: u32,
    now_ms: i64,
) -> Result<bool, StorageError> {
    if record.attempts >= max_attempts {
        let reason = format!("not confirmed after {} delivery attempts", record.attempts);
        dead_letter_delivery(transaction, record, reason, now_ms)?;
        return Ok(false);
    }
    transaction.execute(
        "UPDATE deliveries SET state = 0, claimed_at = NULL, attempts = ?3 WHERE recipient = ?1 AND message_seq = ?2",
        params![record.recipient, record.seq, record.attempts],
    )?;
    Ok(true)
}

fn dead_letter_delivery(
    transaction: &Transaction<'_>,
    record: &StaleDelivery,
    reason: String,
    now_ms: i64,
) -> Result<(), StorageError> {
    transaction.execute(
        "UPDATE deliveries SET state = 3, attempts = ?3 WHERE recipient = ?1 AND message_seq = ?2",
        params![record.recipient, record.seq, record.attempts],
    )?;
    let payload = serde_json::json!({"recipient": record.recipient, "message_id": record.message_id});
    let letter = NewDeadLetter { kind: DeadLetterKind::Delivery, reason, attempts: record.attempts, payload };
    insert_dead_letter(transaction, &letter, now_ms)?;
    Ok(())
}

fn insert_dead_letter(connection: &Connection, letter: &NewDeadLetter, now_ms: i64) -> Result<String, StorageError> {
    let id = uuid::Uuid::now_v7().to_string();
    connection.execute(
        "INSERT INTO dead_letters (id, kind, reason, attempts, payload, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, letter.kind.as_str(), letter.reason, letter.attempts, letter.payload.to_string(), now_ms],
    )?;
    Ok(id)
}

fn dead_letter(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    let kind: String = row.get(1)?;
    let payload: String = row.get(4)?;
    Ok(DeadLetter {
        id: row.get(0)?,
        kind: DeadLetterKind::parse(&kind),
        reason: row.get(2)?,
        attempts: row.get(3)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        at_ms: row.get(5)?,
    })
}
