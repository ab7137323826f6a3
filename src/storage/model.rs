//! What the backends keep and hand back — messages, users, conversations, deliveries, dead
//! letters, search hits. Backend-neutral: no SQL, BSON or query DSL here.

use serde::{Deserialize, Serialize};

/// A message ready to commit. `id` is deterministic per (sender, client_msg_id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewMessage {
    pub id: String,
    pub conversation: String,
    pub sender: String,
    pub client_msg_id: String,
    pub body: String,
    /// When it was accepted, if stamped before the commit (the Kafka transport stamps it when
    /// the brokers confirm the send, so the ack and the stored message agree); otherwise the
    /// commit's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<i64>,
}

/// A committed message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredMessage {
    /// Commit order; history pages and the search watermark use it.
    pub seq: i64,
    pub id: String,
    pub conversation: String,
    pub sender: String,
    pub client_msg_id: String,
    pub body: String,
    pub created_at_ms: i64,
}

/// A user record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub display_name: String,
    pub created_at_ms: i64,
}

/// A conversation with its members and latest message, as clients list it.
#[derive(Debug, Clone)]
pub struct ConversationSummary {
    pub id: String,
    pub title: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub members: Vec<String>,
    pub latest: Option<StoredMessage>,
    /// The latest message's time, or the creation time of a conversation without messages:
    /// listings are ordered by it, newest first.
    pub activity_ms: i64,
}

/// Where a page of conversations ends: the next page lists those less active than this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationCursor {
    pub activity_ms: i64,
    pub id: String,
}

/// What committing one message of a batch did.
#[derive(Debug, Clone)]
pub enum CommitOutcome {
    /// Stored. `duplicate`: the id was already stored (a retried batch or a resent message),
    /// nothing new was written and `message` is the original.
    Stored { message: StoredMessage, duplicate: bool },
    /// Refused for good by the store (the document itself is invalid there): the writer
    /// dead-letters it and tells the sender.
    Rejected(String),
    /// Not stored this time for a reason of the store's (retries used up on this message alone):
    /// the sender is told to send again.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// A message that could not be stored (poison, unknown sender). Payload: a `NewMessage`.
    Message,
    /// A delivery that exhausted its attempts. Payload: `{"recipient", "message_id"}`.
    Delivery,
    /// A message quarantined by the supervision layer. Payload: its debug text.
    Quarantine,
    /// A stored message the search engine refused to index (a mapping error). Payload:
    /// `{"message_id"}`; the message itself is stored and in history.
    Index,
}

impl DeadLetterKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Message => "message",
            DeadLetterKind::Delivery => "delivery",
            DeadLetterKind::Quarantine => "quarantine",
            DeadLetterKind::Index => "index",
        }
    }

    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "message" => DeadLetterKind::Message,
            "delivery" => DeadLetterKind::Delivery,
            "index" => DeadLetterKind::Index,
            _ => DeadLetterKind::Quarantine,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub kind: DeadLetterKind,
    pub reason: String,
    pub attempts: u32,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub kind: DeadLetterKind,
    pub reason: String,
    pub attempts: u32,
    pub payload: serde_json::Value,
    #[serde(skip)]
    pub at_ms: i64,
}

/// One page of a recipient's undelivered messages ([`crate::storage::DeliveryStore::undelivered`]).
#[derive(Debug, Clone, Default)]
pub struct BacklogPage {
    /// In delivery-record seq order. May hold fewer messages than the page read records: a
    /// record whose message is not (yet) there is skipped, never the end of the backlog.
    pub entries: Vec<BacklogEntry>,
    /// The seq of the last delivery record read: the next page starts after it (`after_seq`).
    /// `after_seq` as given when nothing was read.
    pub through: i64,
    /// Fewer records than asked for: nothing more was undelivered when the page was read.
    pub last: bool,
}

/// An undelivered message and the seq of its delivery record (the backlog's cursor; on MongoDB
/// it may differ from the message's own seq).
#[derive(Debug, Clone)]
pub struct BacklogEntry {
    pub seq: i64,
    pub message: StoredMessage,
}

/// A delivery pushed to a connection, to mark in flight. The message id names the record on
/// every backend; `seq` is the record's key on the embedded one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub recipient: String,
    pub message_id: String,
    pub seq: i64,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Default)]
pub struct RequeueReport {
    /// Recipients with records moved back to pending (to push again if online).
    pub requeued: Vec<String>,
    /// Records moved to dead letters after `max_attempts`.
    pub dead_lettered: usize,
    /// Records the pass looked at (equal to the batch size: more may be waiting).
    pub examined: usize,
}

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub conversation: String,
    pub sender: String,
    pub body: String,
    #[serde(skip)]
    pub created_at_ms: i64,
    /// The body with matched terms wrapped in `<mark>` … `</mark>`.
    pub highlight: String,
}
