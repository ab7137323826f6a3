//! `SqliteChat`: users, conversations, messages, per-recipient deliveries and dead letters in
//! `<data_dir>/rampart.db`.
//!
//! Owns: the chat schema and every statement on it. Message ids are derived by the caller from
//! (sender, client_msg_id), and `messages.id` is unique, so committing a batch twice stores each
//! message once: the second commit reports the original row as a duplicate.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::db::{Db, WalPolicy};
use super::faults::Faults;
use crate::storage::{
    BacklogEntry, BacklogPage, Claim, CommitOutcome, ConversationCursor, ConversationSummary, DeadLetter,
    DeadLetterKind, NewDeadLetter, NewMessage, RequeueReport, StorageError, StoredMessage, User,
};

const MIGRATIONS: &[&str] = &[
    // 1: the chat schema.
    "CREATE TABLE users (
        id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE members (
        conversation TEXT NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (conversation, user)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user, conversation);
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        conversation TEXT NOT NULL,
        sender TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages (conversation, seq);
    -- state: 0 pending, 1 in_flight (claimed_at set), 2 delivered, 3 dead-lettered.
    CREATE TABLE deliveries (
        recipient TEXT NOT NULL,
        message_seq INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        claimed_at INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (recipient, message_seq)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_in_flight ON deliveries (claimed_at) WHERE state = 1;
    CREATE TABLE dead_letters (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        payload TEXT NOT NULL,
        at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: how far an external search engine has indexed (the embedded index keeps its own).
    "CREATE TABLE search_progress (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 3: SFU rooms an operator opened to every authenticated user (`POST /admin/rooms`).
    "CREATE TABLE rooms (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 4: a recipient's undelivered records without reading past the delivered ones (backlog
    // replays, the delivery backstop): nearly all of a long-lived user's records are delivered.
    // Queries name it (`INDEXED BY`: without statistics the planner takes the primary key, which
    // reads the delivered records too) and `state IN (0, 1)` literally, as a partial index needs.
    "CREATE INDEX deliveries_undelivered ON deliveries (recipient, message_seq) WHERE state IN (0, 1);",
];

/// A recipient's undelivered records (pending and in flight) after a seq, in seq order.
const SELECT_UNDELIVERED: &str = "SELECT m.seq, m.id, m.conversation, m.sender, m.client_msg_id, m.body, m.created_at
     FROM deliveries d INDEXED BY deliveries_undelivered JOIN messages m ON m.seq = d.message_seq
     WHERE d.recipient = ?1 AND d.state IN (0, 1) AND d.message_seq > ?2";

/// The embedded chat database. Cheap to clone.
#[derive(Clone)]
pub struct SqliteChat {
    db: Db,
}

impl SqliteChat {
    pub fn open(data_dir: &Path, readers: usize, wal: WalPolicy) -> Result<Self, StorageError> {
        Ok(Self { db: Db::open("storage", &data_dir.join("rampart.db"), MIGRATIONS, readers, wal)? })
    }

    /// Fault injection for this store (`chaos.enabled`).
    pub fn faults(&self) -> &Arc<Faults> {
        self.db.faults()
    }

    /// A no-op job on the writer thread: done once the writes queued before it are.
    pub async fn probe(&self) -> Result<(), StorageError> {
        self.db.write(|_| Ok(())).await
    }

    /// `true` when created, `false` when the id is taken.
    pub async fn create_user(&self, id: String, display_name: String, now_ms: i64) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| {
                let inserted = connection.execute(
                    "INSERT INTO users (id, display_name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![id, display_name, now_ms],
                )?;
                Ok(inserted == 1)
            })
            .await
    }

    pub async fn user_exists(&self, id: String) -> Result<bool, StorageError> {
        self.db.read(move |connection| Ok(exists(connection, "SELECT 1 FROM users WHERE id = ?1", &id)?)).await
    }

    pub async fn user(&self, id: String) -> Result<Option<User>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement =
                    connection.prepare_cached("SELECT id, display_name, created_at FROM users WHERE id = ?1")?;
                let user = statement
                    .query_row([&id], |row| {
                        Ok(User { id: row.get(0)?, display_name: row.get(1)?, created_at_ms: row.get(2)? })
                    })
                    .optional()?;
                Ok(user)
            })
            .await
    }

    /// One conversation with its members and latest message, or `None` when it does not exist.
    pub async fn conversation(&self, id: String) -> Result<Option<ConversationSummary>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!("{SELECT_CONVERSATION} WHERE c.id = ?1"))?;
                let Some(row) = statement.query_row([&id], conversation_row).optional()? else {
                    return Ok(None);
                };
                Ok(Some(summarize(connection, row)?))
            })
            .await
    }

    /// A page of `user`'s conversations, most recently active first, after `cursor`.
    pub async fn conversations_page(
        &self,
        user: String,
        cursor: Option<ConversationCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StorageError> {
        self.db
            .read(move |connection| {
                // Activity per conversation: one index probe each into messages_by_conversation
                // (latest seq) and the messages primary key; members_by_user finds the set.
                let cursor = cursor.unwrap_or(ConversationCursor { activity_ms: i64::MAX, id: String::new() });
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT * FROM ({SELECT_CONVERSATION} JOIN members mb ON mb.conversation = c.id WHERE mb.user = ?1)
                     WHERE activity < ?2 OR (activity = ?2 AND (?3 = '' OR id < ?3))
                     ORDER BY activity DESC, id DESC LIMIT ?4"
                ))?;
                let rows: Vec<ConversationRow> = statement
                    .query_map(params![user, cursor.activity_ms, cursor.id, limit], conversation_row)?
                    .collect::<Result<_, _>>()?;
                rows.into_iter().map(|row| summarize(connection, row)).collect()
            })
            .await
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
        self.db
            .write(move |connection| {
                let transaction = connection.transaction()?;
                let mut unknown = Vec::new();
                for member in members.iter().filter(|member| **member != created_by) {
                    if !exists(&transaction, "SELECT 1 FROM users WHERE id = ?1", member)? {
                        unknown.push(member.clone());
                    }
                }
                if !unknown.is_empty() {
                    return Ok(Err(unknown));
                }
                transaction.execute(
                    "INSERT INTO conversations (id, title, created_by, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, title, created_by, now_ms],
                )?;
                for member in &members {
                    transaction.execute(
                        "INSERT OR IGNORE INTO members (conversation, user) VALUES (?1, ?2)",
                        params![id, member],
                    )?;
                }
                transaction.commit()?;
                Ok(Ok(()))
            })
            .await
    }

    /// The members of a conversation, or `None` when it does not exist.
    pub async fn members(&self, conversation: String) -> Result<Option<Vec<String>>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement =
                    connection.prepare_cached("SELECT user FROM members WHERE conversation = ?1 ORDER BY user")?;
                let members: Vec<String> =
                    statement.query_map([&conversation], |row| row.get(0))?.collect::<Result<_, _>>()?;
                Ok((!members.is_empty()).then_some(members))
            })
            .await
    }

    /// Every conversation `user` is a member of.
    pub async fn conversations_of(&self, user: String) -> Result<Vec<String>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement = connection.prepare_cached("SELECT conversation FROM members WHERE user = ?1")?;
                let conversations = statement.query_map([&user], |row| row.get(0))?.collect::<Result<_, _>>()?;
                Ok(conversations)
            })
            .await
    }

    /// Commits a batch in one transaction. Every message gets an outcome, in batch order; the
    /// deliveries of new messages (one per member other than the sender) are written with them.
    #[cfg(test)]
    pub async fn commit_batch(
        &self,
        batch: Arc<[NewMessage]>,
        now_ms: i64,
    ) -> Result<Vec<CommitOutcome>, StorageError> {
        self.commit_batch_inspected(batch, now_ms, |_| {}).await
    }

    /// `commit_batch`, calling `inspect` on each message inside the job just before it is written
    /// (a panic there aborts the transaction and comes back as `StorageError::Panicked`).
    pub async fn commit_batch_inspected(
        &self,
        batch: Arc<[NewMessage]>,
        now_ms: i64,
        inspect: impl Fn(&NewMessage) + Send + 'static,
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
    pub async fn message(&self, id: String) -> Result<Option<StoredMessage>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!("{SELECT_MESSAGE} WHERE id = ?1"))?;
                Ok(statement.query_row([&id], stored_message).optional()?)
            })
            .await
    }

    /// Newest first: up to `limit` messages of `conversation` older than message `before`.
    /// `Ok(None)` when `before` is not a message of this conversation.
    pub async fn history(
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
    pub async fn search_watermark(&self, name: &'static str) -> Result<i64, StorageError> {
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
    pub async fn set_search_watermark(&self, name: &'static str, seq: i64) -> Result<(), StorageError> {
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
    pub async fn messages_after(&self, seq: i64, limit: u32) -> Result<Vec<StoredMessage>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement =
                    connection.prepare_cached(&format!("{SELECT_MESSAGE} WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
                let messages = statement.query_map(params![seq, limit], stored_message)?.collect::<Result<_, _>>()?;
                Ok(messages)
            })
            .await
    }

    /// A page of undelivered messages for `recipient` after `after_seq`, in commit order:
    /// pending ones, and with `include_in_flight` also those pushed to a connection but never
    /// confirmed (what a reconnecting client must get again).
    pub async fn undelivered(
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
    pub async fn stale_pending(
        &self,
        recipients: Vec<String>,
        stored_before_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
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
    pub async fn mark_in_flight(&self, claims: Vec<Claim>, now_ms: i64) -> Result<(), StorageError> {
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
    pub async fn mark_delivered(&self, confirmations: Vec<(String, String)>) -> Result<(), StorageError> {
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
    pub async fn requeue_stale(
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
    pub async fn requeue_delivery(&self, recipient: String, message_id: String) -> Result<bool, StorageError> {
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

    pub async fn add_dead_letter(&self, letter: NewDeadLetter, now_ms: i64) -> Result<String, StorageError> {
        self.db.write(move |connection| insert_dead_letter(connection, &letter, now_ms)).await
    }

    /// Newest first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement =
                    connection.prepare_cached(&format!("{SELECT_DEAD_LETTER} ORDER BY at DESC, id DESC LIMIT ?1"))?;
                let letters = statement.query_map([limit], dead_letter)?.collect::<Result<_, _>>()?;
                Ok(letters)
            })
            .await
    }

    pub async fn dead_letter(&self, id: String) -> Result<Option<DeadLetter>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement = connection.prepare_cached(&format!("{SELECT_DEAD_LETTER} WHERE id = ?1"))?;
                Ok(statement.query_row([&id], dead_letter).optional()?)
            })
            .await
    }

    pub async fn remove_dead_letter(&self, id: String) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| Ok(connection.execute("DELETE FROM dead_letters WHERE id = ?1", [&id])? == 1))
            .await
    }

    pub async fn create_room(&self, name: String, now_ms: i64) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| {
                let inserted = connection.execute(
                    "INSERT INTO rooms (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![name, now_ms],
                )?;
                Ok(inserted == 1)
            })
            .await
    }

    pub async fn delete_room(&self, name: String) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| Ok(connection.execute("DELETE FROM rooms WHERE name = ?1", [&name])? == 1))
            .await
    }

    pub async fn room_exists(&self, name: String) -> Result<bool, StorageError> {
        self.db.read(move |connection| Ok(exists(connection, "SELECT 1 FROM rooms WHERE name = ?1", &name)?)).await
    }

    pub async fn rooms(&self) -> Result<Vec<String>, StorageError> {
        self.db
            .read(|connection| {
                let mut statement = connection.prepare_cached("SELECT name FROM rooms ORDER BY name")?;
                let names = statement.query_map([], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?;
                Ok(names)
            })
            .await
    }
}

/// A conversation's columns plus its latest message's seq and its activity time (see
/// [`ConversationSummary::activity_ms`]), as `c.*`-qualified columns for joins.
const SELECT_CONVERSATION: &str = "SELECT c.id AS id, c.title, c.created_by, c.created_at,
        (SELECT seq FROM messages m WHERE m.conversation = c.id ORDER BY seq DESC LIMIT 1) AS latest_seq,
        COALESCE((SELECT created_at FROM messages m WHERE m.conversation = c.id ORDER BY seq DESC LIMIT 1),
                 c.created_at) AS activity
    FROM conversations c";

struct ConversationRow {
    id: String,
    title: String,
    created_by: String,
    created_at_ms: i64,
    latest_seq: Option<i64>,
    activity_ms: i64,
}

fn conversation_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationRow> {
    Ok(ConversationRow {
        id: row.get(0)?,
        title: row.get(1)?,
        created_by: row.get(2)?,
        created_at_ms: row.get(3)?,
        latest_seq: row.get(4)?,
        activity_ms: row.get(5)?,
    })
}

/// Adds members and the latest message to a conversation row.
fn summarize(connection: &Connection, row: ConversationRow) -> Result<ConversationSummary, StorageError> {
    let members: Vec<String> = connection
        .prepare_cached("SELECT user FROM members WHERE conversation = ?1 ORDER BY user")?
        .query_map([&row.id], |member| member.get(0))?
        .collect::<Result<_, _>>()?;
    let latest = match row.latest_seq {
        Some(seq) => connection
            .prepare_cached(&format!("{SELECT_MESSAGE} WHERE seq = ?1"))?
            .query_row([seq], stored_message)
            .optional()?,
        None => None,
    };
    Ok(ConversationSummary {
        id: row.id,
        title: row.title,
        created_by: row.created_by,
        created_at_ms: row.created_at_ms,
        members,
        latest,
        activity_ms: row.activity_ms,
    })
}

const SELECT_MESSAGE: &str = "SELECT seq, id, conversation, sender, client_msg_id, body, created_at FROM messages";
const SELECT_DEAD_LETTER: &str = "SELECT id, kind, reason, attempts, payload, at FROM dead_letters";

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

fn exists(connection: &Connection, sql: &str, key: &str) -> rusqlite::Result<bool> {
    connection.prepare_cached(sql)?.exists([key])
}

fn stored_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender: &str, client_msg_id: &str, conversation: &str) -> NewMessage {
        NewMessage {
            id: format!("{sender}/{client_msg_id}"),
            conversation: conversation.into(),
            sender: sender.into(),
            client_msg_id: client_msg_id.into(),
            body: format!("hello from {sender}"),
            created_at_ms: None,
        }
    }

    #[actix_rt::test]
    async fn operator_rooms_are_kept_across_reopening_and_can_be_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
            assert!(store.create_room("town-hall".into(), 1).await.unwrap());
            assert!(!store.create_room("town-hall".into(), 2).await.unwrap(), "a second create is not a new room");
            assert!(store.create_room("all-hands".into(), 3).await.unwrap());
        }
        let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
        assert_eq!(store.rooms().await.unwrap(), vec!["all-hands".to_owned(), "town-hall".to_owned()]);
        assert!(store.room_exists("town-hall".into()).await.unwrap());
        assert!(store.delete_room("town-hall".into()).await.unwrap());
        assert!(!store.delete_room("town-hall".into()).await.unwrap());
        assert!(!store.room_exists("town-hall".into()).await.unwrap());
        assert_eq!(store.rooms().await.unwrap(), vec!["all-hands".to_owned()]);
    }

    #[actix_rt::test]
    async fn a_recommitted_batch_stores_each_message_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
        for user in ["alice", "bob"] {
            assert!(store.create_user(user.into(), user.into(), 1).await.unwrap());
        }
        store
            .create_conversation("c".into(), "t".into(), "alice".into(), vec!["alice".into(), "bob".into()], 1)
            .await
            .unwrap()
            .unwrap();
        let batch = vec![message("alice", "1", "c"), message("alice", "2", "c")];
        let batch: Arc<[NewMessage]> = batch.into();
        let first = store.commit_batch(batch.clone(), 10).await.unwrap();
        let duplicate = |outcome: &CommitOutcome| matches!(outcome, CommitOutcome::Stored { duplicate: true, .. });
        assert!(!first.iter().any(duplicate));
        let second = store.commit_batch(batch, 20).await.unwrap();
        assert!(second.iter().all(duplicate));
        assert!(
            matches!(&second[0], CommitOutcome::Stored { message, .. } if message.created_at_ms == 10),
            "the original is reported"
        );
        let history = store.history("c".into(), None, 10).await.unwrap().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].client_msg_id, "2", "newest first");
        // One delivery per recipient other than the sender.
        assert_eq!(store.undelivered("bob".into(), 0, 10, true).await.unwrap().entries.len(), 2);
        assert!(store.undelivered("alice".into(), 0, 10, true).await.unwrap().entries.is_empty());
    }

    #[actix_rt::test]
    async fn stale_deliveries_are_requeued_then_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
        for user in ["alice", "bob"] {
            store.create_user(user.into(), user.into(), 1).await.unwrap();
        }
        store
            .create_conversation("c".into(), "t".into(), "alice".into(), vec!["alice".into(), "bob".into()], 1)
            .await
            .unwrap()
            .unwrap();
        let committed = store.commit_batch(vec![message("alice", "1", "c")].into(), 10).await.unwrap();
        let CommitOutcome::Stored { message, .. } = &committed[0] else { panic!("not stored") };
        let claim = Claim { recipient: "bob".into(), message_id: message.id.clone(), seq: message.seq };
        store.mark_in_flight(vec![claim.clone()], 100).await.unwrap();
        let report = store.requeue_stale(200, 2, 10, 300).await.unwrap();
        assert_eq!(report.requeued, vec!["bob".to_owned()]);
        store.mark_in_flight(vec![claim], 400).await.unwrap();
        let report = store.requeue_stale(500, 2, 10, 600).await.unwrap();
        assert_eq!(report.dead_lettered, 1, "second attempt reaches max_attempts = 2");
        let letters = store.dead_letters(10).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].kind, DeadLetterKind::Delivery);
        assert!(store.undelivered("bob".into(), 0, 10, true).await.unwrap().entries.is_empty());
    }

    #[actix_rt::test]
    async fn pending_deliveries_of_old_messages_are_found_for_the_backstop() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
        for user in ["alice", "bob", "carol"] {
            store.create_user(user.into(), user.into(), 1).await.unwrap();
        }
        let members = vec!["alice".into(), "bob".into(), "carol".into()];
        store.create_conversation("c".into(), "t".into(), "alice".into(), members, 1).await.unwrap().unwrap();
        let committed = store.commit_batch(vec![message("alice", "1", "c")].into(), 100).await.unwrap();
        let CommitOutcome::Stored { message, .. } = &committed[0] else { panic!("not stored") };
        let everyone = vec!["alice".to_owned(), "bob".to_owned(), "carol".to_owned()];
        assert!(store.stale_pending(everyone.clone(), 100).await.unwrap().is_empty(), "not older than the cutoff");
        assert_eq!(store.stale_pending(everyone.clone(), 101).await.unwrap(), vec!["bob", "carol"]);
        // Pushed to bob (in flight): only carol's is still pending.
        let claim = Claim { recipient: "bob".into(), message_id: message.id.clone(), seq: message.seq };
        store.mark_in_flight(vec![claim], 150).await.unwrap();
        assert_eq!(store.stale_pending(everyone, 101).await.unwrap(), vec!["carol"]);
        let pending_only = store.undelivered("bob".into(), 0, 10, false).await.unwrap();
        assert!(pending_only.entries.is_empty() && pending_only.last && pending_only.through == 0);
        let with_in_flight = store.undelivered("bob".into(), 0, 1, true).await.unwrap();
        assert_eq!(
            (with_in_flight.entries.len(), with_in_flight.through, with_in_flight.last),
            (1, message.seq, false)
        );
    }

    #[test]
    fn undelivered_reads_use_the_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap());
        let connection = rusqlite::Connection::open(dir.path().join("rampart.db")).unwrap();
        let queries = [
            format!("{SELECT_UNDELIVERED} ORDER BY d.message_seq LIMIT ?3"),
            format!("{SELECT_UNDELIVERED} AND d.state = 0 ORDER BY d.message_seq LIMIT ?3"),
        ];
        for query in queries {
            let mut plan = connection.prepare(&format!("EXPLAIN QUERY PLAN {query}")).unwrap();
            let details: Vec<String> = plan
                .query_map(params!["bob", 0, 10], |row| row.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(details.iter().any(|detail| detail.contains("deliveries_undelivered")), "{query}: {details:?}");
        }
    }

    #[test]
    fn a_database_from_a_newer_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap());
        let connection = rusqlite::Connection::open(dir.path().join("rampart.db")).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
        drop(connection);
        let refused = SqliteChat::open(dir.path(), 1, WalPolicy::default()).err().expect("refused");
        assert!(refused.to_string().contains("newer"), "{refused}");
    }

    #[actix_rt::test]
    async fn a_panicking_job_leaves_the_thread_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
        let outcome: Result<(), StorageError> = store.db.write(|_| panic!("boom in a storage job")).await;
        assert!(matches!(outcome, Err(StorageError::Panicked(message)) if message.contains("boom")));
        assert!(store.create_user("carol".into(), "Carol".into(), 1).await.unwrap());
    }
}
