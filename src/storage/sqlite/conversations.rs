//! Users, conversations and their members.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::chat::{exists, stored_message, SqliteChat, SELECT_MESSAGE};
use crate::storage::{ConversationCursor, ConversationStore, ConversationSummary, StorageError, User, UserStore};

#[async_trait]
impl UserStore for SqliteChat {
    /// `true` when created, `false` when the id is taken.
    async fn create_user(&self, id: String, display_name: String, now_ms: i64) -> Result<bool, StorageError> {
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

    async fn user_exists(&self, id: String) -> Result<bool, StorageError> {
        self.db.read(move |connection| Ok(exists(connection, "SELECT 1 FROM users WHERE id = ?1", &id)?)).await
    }

    async fn user(&self, id: String) -> Result<Option<User>, StorageError> {
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
}

#[async_trait]
impl ConversationStore for SqliteChat {
    /// One conversation with its members and latest message, or `None` when it does not exist.
    async fn conversation(&self, id: String) -> Result<Option<ConversationSummary>, StorageError> {
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
    async fn conversations_page(
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
    async fn create_conversation(
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
    async fn members(&self, conversation: String) -> Result<Option<Vec<String>>, StorageError> {
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
    async fn conversations_of(&self, user: String) -> Result<Vec<String>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement = connection.prepare_cached("SELECT conversation FROM members WHERE user = ?1")?;
                let conversations = statement.query_map([&user], |row| row.get(0))?.collect::<Result<_, _>>()?;
                Ok(conversations)
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
