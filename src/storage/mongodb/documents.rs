//! The BSON documents of each collection, the delivery states and the indexes rampart creates.

use mongodb::bson::{Bson, DateTime};
use serde::{Deserialize, Serialize};

use crate::storage::{DeadLetter, DeadLetterKind, StoredMessage};

/// Delivery states, as in the embedded store.
pub(super) const PENDING: i32 = 0;
pub(super) const IN_FLIGHT: i32 = 1;
pub(super) const DELIVERED: i32 = 2;
pub(super) const DEAD_LETTERED: i32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MessageDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) seq: i64,
    pub(super) conversation: String,
    pub(super) sender: String,
    pub(super) client_msg_id: String,
    pub(super) body: String,
    pub(super) created_at: DateTime,
    /// Present (true) until the search indexer has indexed or dead-lettered the message, when
    /// the deployment indexes into an external engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) search_pending: Option<bool>,
}

impl MessageDoc {
    pub(super) fn into_stored(self) -> StoredMessage {
        StoredMessage {
            seq: self.seq,
            id: self.id,
            conversation: self.conversation,
            sender: self.sender,
            client_msg_id: self.client_msg_id,
            body: self.body,
            created_at_ms: self.created_at.timestamp_millis(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UserDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) display_name: String,
    pub(super) created_at: DateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ConversationDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) title: String,
    pub(super) created_by: String,
    pub(super) created_at: DateTime,
    /// Sorted, without duplicates.
    pub(super) members: Vec<String>,
    /// The latest message's time, or `created_at` before the first message.
    pub(super) activity: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) latest: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DeliveryDoc {
    /// `<message id>:<recipient>` (message ids are UUIDs: the first ':' splits).
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) recipient: String,
    pub(super) message_id: String,
    pub(super) seq: i64,
    pub(super) state: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) claimed_at: Option<DateTime>,
    pub(super) attempts: i32,
}

pub(super) fn delivery_key(message_id: &str, recipient: &str) -> String {
    format!("{message_id}:{recipient}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DeadLetterDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) reason: String,
    pub(super) attempts: i64,
    pub(super) payload: Bson,
    pub(super) at: DateTime,
}

impl DeadLetterDoc {
    pub(super) fn into_letter(self) -> DeadLetter {
        DeadLetter {
            id: self.id,
            kind: DeadLetterKind::parse(&self.kind),
            reason: self.reason,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            payload: self.payload.into_relaxed_extjson(),
            at_ms: self.at.timestamp_millis(),
        }
    }
}

/// An SFU room an operator opened to every authenticated user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RoomDoc {
    #[serde(rename = "_id")]
    pub(super) name: String,
    pub(super) created_at: DateTime,
}

/// One placement of a room (`RoomLease`), one document per (room, epoch). FerretDB has no TTL
/// index, and its updates and deletes are a read followed by a write by `_id` (not atomic), so
/// expiry is a field every query compares, a takeover inserts the next epoch (the unique `_id`
/// decides the race), and only the document's owner ever updates it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RoomLeaseDoc {
    /// `<room>#<epoch>`: the unique key every placement race is decided on.
    #[serde(rename = "_id")]
    pub(super) key: String,
    pub(super) room: String,
    /// 1 for a room's first placement, one more for each placement after it.
    pub(super) epoch: i64,
    pub(super) owner: String,
    pub(super) address: String,
    pub(super) token: String,
    pub(super) expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ProgressDoc {
    #[serde(rename = "_id")]
    pub(super) name: String,
    pub(super) seq: i64,
}

/// Name, collection, keys (field, 1 or -1), unique.
pub(super) type IndexSpec = (&'static str, &'static str, &'static [(&'static str, i32)], bool);

/// Every index rampart needs, created one `create_index` call each (FerretDB 1.24 drops the
/// connection when one `createIndexes` names several existing indexes).
pub(super) const INDEXES: &[IndexSpec] = &[
    // Resends are found by _id (derived from this pair); the unique index states the rule.
    ("sender_client_msg_id", "messages", &[("sender", 1), ("client_msg_id", 1)], true),
    // History pages: equality on conversation, range and sort on (created_at, _id).
    ("conversation_created_at_id", "messages", &[("conversation", 1), ("created_at", -1), ("_id", -1)], false),
    // The search indexer's feed: by seq (embedded search), or by flag (an external engine).
    ("seq", "messages", &[("seq", 1)], false),
    ("search_pending_seq", "messages", &[("search_pending", 1), ("seq", 1)], false),
    // Conversation listings and membership checks (multikey on members).
    ("members_activity_id", "conversations", &[("members", 1), ("activity", -1), ("_id", -1)], false),
    // The cleanup job's scan of stale claims.
    ("state_claimed_at", "deliveries", &[("state", 1), ("claimed_at", 1)], false),
    // A recipient's backlog in commit order.
    ("recipient_state_seq", "deliveries", &[("recipient", 1), ("state", 1), ("seq", 1)], false),
    ("at_id", "dead_letters", &[("at", -1), ("_id", -1)], false),
    // A room's current placement: its highest epoch.
    ("room_epoch", "room_leases", &[("room", 1), ("epoch", -1)], false),
];
