//! `SqliteSearch`: the embedded full-text index in `<data_dir>/search.db` (SQLite FTS5).
//!
//! Owns: the index and its watermark (the highest message `seq` indexed), written in the same
//! transaction so the indexer resumes exactly where it stopped. A separate file with its own
//! writer thread: indexing never contends with ingestion for the chat database's write lock.

use std::path::Path;

use rusqlite::params;

use super::db::{Db, WalPolicy};
use crate::storage::{SearchHit, StorageError, StoredMessage};

const MIGRATIONS: &[&str] = &[
    // 1: the index. rowid = messages.seq, so re-indexing a message replaces it.
    "CREATE VIRTUAL TABLE messages_fts USING fts5(
        body, id UNINDEXED, conversation UNINDEXED, sender UNINDEXED, created_at UNINDEXED,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TABLE watermark (only INTEGER PRIMARY KEY CHECK (only = 0), seq INTEGER NOT NULL);
    INSERT INTO watermark (only, seq) VALUES (0, 0);",
];

/// The search index. Cheap to clone.
#[derive(Clone)]
pub struct SqliteSearch {
    db: Db,
}

impl SqliteSearch {
    pub fn open(data_dir: &Path, readers: usize, wal: WalPolicy) -> Result<Self, StorageError> {
        Ok(Self { db: Db::open("search", &data_dir.join("search.db"), MIGRATIONS, readers, wal)? })
    }

    /// The highest message `seq` indexed so far.
    pub async fn watermark(&self) -> Result<i64, StorageError> {
        self.db.read(|connection| Ok(connection.query_row("SELECT seq FROM watermark", [], |row| row.get(0))?)).await
    }

    /// Indexes `messages` (ascending seq) and advances the watermark, atomically.
    pub async fn index(&self, messages: Vec<StoredMessage>) -> Result<i64, StorageError> {
        self.db
            .write(move |connection| {
                let transaction = connection.transaction()?;
                let mut watermark: i64 = transaction.query_row("SELECT seq FROM watermark", [], |row| row.get(0))?;
                {
                    let mut insert = transaction.prepare_cached(
                        "INSERT OR REPLACE INTO messages_fts (rowid, body, id, conversation, sender, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?;
                    for message in &messages {
                        insert.execute(params![
                            message.seq,
                            message.body,
                            message.id,
                            message.conversation,
                            message.sender,
                            message.created_at_ms
                        ])?;
                        watermark = watermark.max(message.seq);
                    }
                }
                transaction.execute("UPDATE watermark SET seq = ?1", [watermark])?;
                transaction.commit()?;
                Ok(watermark)
            })
            .await
    }

    /// Best matches first, restricted to `conversations`. Every whitespace-separated word of
    /// `query` must match (as a literal term: FTS5 operators in user input are not interpreted).
    pub async fn search(
        &self,
        query: String,
        conversations: Vec<String>,
        limit: u32,
    ) -> Result<Vec<SearchHit>, StorageError> {
        let Some(expression) = match_expression(&query) else {
            return Ok(Vec::new());
        };
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        self.db
            .read(move |connection| {
                let scope = serde_json::Value::from(conversations).to_string();
                let mut statement = connection.prepare_cached(
                    "SELECT id, conversation, sender, body, created_at,
                            highlight(messages_fts, 0, '<mark>', '</mark>')
                     FROM messages_fts
                     WHERE messages_fts MATCH ?1
                       AND conversation IN (SELECT value FROM json_each(?2))
                     ORDER BY rank LIMIT ?3",
                )?;
                let hits = statement
                    .query_map(params![expression, scope, limit], |row| {
                        Ok(SearchHit {
                            id: row.get(0)?,
                            conversation: row.get(1)?,
                            sender: row.get(2)?,
                            body: row.get(3)?,
                            created_at_ms: row.get(4)?,
                            highlight: row.get(5)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(hits)
            })
            .await
    }
}

/// `hello "world` → `"hello" "world"""`: each word a quoted FTS5 string (quotes doubled).
/// Control characters separate words like whitespace: FTS5 ends a string at a NUL, so a NUL
/// inside a quoted term was a syntax error ("unterminated string", found by schemathesis).
fn match_expression(query: &str) -> Option<String> {
    let terms: Vec<String> = query
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: i64, conversation: &str, body: &str) -> StoredMessage {
        StoredMessage {
            seq,
            id: format!("m{seq}"),
            conversation: conversation.into(),
            sender: "alice".into(),
            client_msg_id: seq.to_string(),
            body: body.into(),
            created_at_ms: seq,
        }
    }

    #[actix_rt::test]
    async fn finds_words_in_scope_only_and_keeps_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteSearch::open(dir.path(), 1, WalPolicy::default()).unwrap();
        assert_eq!(store.watermark().await.unwrap(), 0);
        let watermark = store
            .index(vec![stored(1, "a", "the quick brown fox"), stored(2, "b", "a quick reply"), stored(3, "a", "slow")])
            .await
            .unwrap();
        assert_eq!(watermark, 3);
        let hits = store.search("quick".into(), vec!["a".into()], 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].highlight, "the <mark>quick</mark> brown fox");
        // Operators and quotes in user input are literal, never a syntax error.
        assert!(store.search("quick OR \"(".into(), vec!["a".into(), "b".into()], 10).await.unwrap().is_empty());
        // Regression: a NUL in the query was an FTS5 syntax error (503, and a breaker failure).
        let scope = vec!["a".to_owned(), "b".to_owned()];
        assert!(store.search("\u{16}ß3\u{0}F&(".into(), scope.clone(), 10).await.unwrap().is_empty());
        assert!(store.search("\u{0}\u{1}".into(), scope, 10).await.unwrap().is_empty());
        drop(store);
        let reopened = SqliteSearch::open(dir.path(), 1, WalPolicy::default()).unwrap();
        assert_eq!(reopened.watermark().await.unwrap(), 3);
    }
}
