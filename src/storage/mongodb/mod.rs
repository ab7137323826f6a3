//! The MongoDB chat store (`storage.kind = "mongodb"`): users, conversations, messages,
//! deliveries, dead letters and the search watermark in one MongoDB database, shared by every
//! rampart process of a deployment.
//!
//! Owns: the collections, their indexes and every query and BSON document on them. Nothing
//! outside this folder knows BSON. One `mongodb::Client` (a connection pool) per process.
//!
//! Design points, each forced by running several processes on one database without transactions
//! (FerretDB has none, and a transaction per batch would halve throughput on MongoDB):
//! - Message ids are deterministic (UUIDv5 of sender and client id) and are the `_id`: writing a
//!   batch twice stores each message once, and a duplicate-key error (11000) means "already
//!   stored" — the original is read back and acked again.
//! - `seq` orders messages for the search indexer and delivery backlogs without a shared counter
//!   (FerretDB's `$inc` is not atomic under concurrency): milliseconds since 2025 in the high
//!   bits, a random per-process node and a per-millisecond counter below ([`SeqClock`]). Seqs of
//!   different processes interleave by time, not by commit. So an external search engine's
//!   indexer finds its work by a flag set at insert (`search_pending`), exact in any order; the
//!   embedded search index (one per process) reads by seq, only seqs older than
//!   `mongodb.index_settle`, so writes in flight land before the watermark passes them.
//! - A conversation embeds its member list (membership is one document: created atomically,
//!   checked through a multikey index) and its latest message's id and time (`activity`), updated
//!   conditionally after each batch so listings sort by an index.
//! - Delivery records are keyed `<message id>:<recipient>`: inserting them again after a retried
//!   batch is harmless. Claims are conditional updates; two processes claiming the same record
//!   both push it (clients dedupe by id) and neither can lose it.

mod seq;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use crate::storage::{
    BacklogEntry, BacklogPage, Claim, CommitOutcome, ConversationCursor, ConversationSummary, DeadLetter,
    DeadLetterKind, NewDeadLetter, NewMessage, RequeueReport, StorageError, StoredMessage, User,
};
pub use seq::SeqClock;

/// `[mongodb]`: where the chat store lives when `storage.kind = "mongodb"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    /// Connection string (`mongodb://…` or `mongodb+srv://…`); may carry credentials, so it is
    /// redacted by `check-config`.
    pub uri: String,
    /// Database holding rampart's collections.
    pub database: String,
    /// Write concern of every write: `majority`, a number of nodes, or a tag set name.
    pub write_concern: String,
    /// Acknowledge writes only once journaled (`j: true`).
    pub journal: bool,
    /// Deadline of each operation other than batch commits (those use `pipeline.storage_timeout`).
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// With the embedded search index, the indexer reads only messages stored at least this
    /// long ago: writes still in flight get this long to land before the indexer passes their
    /// `seq`. At least `pipeline.storage_timeout` is safe; less makes search fresher. (An
    /// external engine's indexer finds messages by flag and does not wait.)
    #[serde(with = "humantime_serde")]
    pub index_settle: Duration,
    /// Connections per server in the driver's pool.
    pub max_pool_size: u32,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017/?directConnection=true".into(),
            database: "rampart".into(),
            write_concern: "majority".into(),
            journal: true,
            operation_timeout: Duration::from_secs(5),
            index_settle: Duration::from_secs(5),
            max_pool_size: 32,
        }
    }
}

impl MongoConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            return Err("mongodb.uri must start with mongodb:// or mongodb+srv://".into());
        }
        let database_ok = !self.database.is_empty()
            && self.database.len() < 64
            && !self.database.contains(['/', '\\', '.', ' ', '"', '$', '\0']);
        if !database_ok {
            return Err(format!("mongodb.database {:?} is not a valid database name", self.database));
        }
        if self.write_concern.is_empty() {
            return Err("mongodb.write_concern must be \"majority\", a number of nodes or a tag set".into());
        }
        if self.operation_timeout.is_zero() || self.max_pool_size == 0 {
            return Err("mongodb.operation_timeout and mongodb.max_pool_size must be above 0".into());
        }
        Ok(())
    }

    /// The URI with any password replaced, for `check-config` and logs.
    pub fn redacted_uri(&self) -> String {
        redact_uri(&self.uri)
    }

    fn write_concern(&self) -> WriteConcern {
        let w = match self.write_concern.parse::<u32>() {
            Ok(nodes) => Acknowledgment::Nodes(nodes),
            Err(_) if self.write_concern == "majority" => Acknowledgment::Majority,
            Err(_) => Acknowledgment::Custom(self.write_concern.clone()),
        };
        WriteConcern::builder().w(w).journal(self.journal).build()
    }
}

fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{}", &rest[at + 1..])
        }
        None => uri.to_owned(),
    }
}

impl From<mongodb::error::Error> for StorageError {
    fn from(error: mongodb::error::Error) -> Self {
        StorageError::Remote(format!("mongodb: {error}"))
    }
}

/// Delivery states, as in the embedded store.
const PENDING: i32 = 0;
const IN_FLIGHT: i32 = 1;
const DELIVERED: i32 = 2;
const DEAD_LETTERED: i32 = 3;

/// MongoDB's duplicate-key error (FerretDB's too; neither names the index there).
const DUPLICATE_KEY: i32 = 11000;

/// Write errors that say something about this document, not the server's state: retrying the
/// same document cannot succeed, so the message is dead-lettered.
const PERMANENT_WRITE_ERRORS: &[i32] = &[
    2,     // BadValue
    14,    // TypeMismatch
    52,    // DollarPrefixedFieldName
    55,    // InvalidDBRef
    121,   // DocumentValidationFailure
    10334, // BSONObjectTooLarge
    17280, // KeyTooLong
];

/// Conversation updates in flight per batch commit.
const ACTIVITY_UPDATES_IN_FLIGHT: usize = 8;

/// Recipients per query of the delivery backstop (`stale_pending`).
const STALE_PENDING_CHUNK: usize = 500;

/// Rounds of retrying documents refused with a transient write error within one commit.
const ITEM_RETRY_ROUNDS: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MessageDoc {
    #[serde(rename = "_id")]
    id: String,
    seq: i64,
    conversation: String,
    sender: String,
    client_msg_id: String,
    body: String,
    created_at: DateTime,
    /// Present (true) until the search indexer has indexed or dead-lettered the message, when
    /// the deployment indexes into an external engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    search_pending: Option<bool>,
}

impl MessageDoc {
    fn into_stored(self) -> StoredMessage {
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
struct UserDoc {
    #[serde(rename = "_id")]
    id: String,
    display_name: String,
    created_at: DateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConversationDoc {
    #[serde(rename = "_id")]
    id: String,
    title: String,
    created_by: String,
    created_at: DateTime,
    /// Sorted, without duplicates.
    members: Vec<String>,
    /// The latest message's time, or `created_at` before the first message.
    activity: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeliveryDoc {
    /// `<message id>:<recipient>` (message ids are UUIDs: the first ':' splits).
    #[serde(rename = "_id")]
    id: String,
    recipient: String,
    message_id: String,
    seq: i64,
    state: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claimed_at: Option<DateTime>,
    attempts: i32,
}

fn delivery_key(message_id: &str, recipient: &str) -> String {
    format!("{message_id}:{recipient}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeadLetterDoc {
    #[serde(rename = "_id")]
    id: String,
    kind: String,
    reason: String,
    attempts: i64,
    payload: Bson,
    at: DateTime,
}

impl DeadLetterDoc {
    fn into_letter(self) -> DeadLetter {
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
struct RoomDoc {
    #[serde(rename = "_id")]
    name: String,
    created_at: DateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProgressDoc {
    #[serde(rename = "_id")]
    name: String,
    seq: i64,
}

/// Name, collection, keys (field, 1 or -1), unique.
type IndexSpec = (&'static str, &'static str, &'static [(&'static str, i32)], bool);

/// Every index rampart needs, created one `create_index` call each (FerretDB 1.24 drops the
/// connection when one `createIndexes` names several existing indexes).
const INDEXES: &[IndexSpec] = &[
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
];

/// The chat store on MongoDB. Cheap to clone.
#[derive(Clone)]
pub struct MongoChat {
    inner: Arc<Inner>,
}

struct Inner {
    database: Database,
    messages: Collection<MessageDoc>,
    users: Collection<UserDoc>,
    conversations: Collection<ConversationDoc>,
    deliveries: Collection<DeliveryDoc>,
    dead_letters: Collection<DeadLetterDoc>,
    progress: Collection<ProgressDoc>,
    rooms: Collection<RoomDoc>,
    clock: SeqClock,
    /// The write concern every collection uses (for collections opened later: probes).
    writes: CollectionOptions,
    timeout: Duration,
    settle: Duration,
    /// Mark each new message unindexed (`search_pending`) for an external engine's indexer.
    flag_unindexed: bool,
}

impl MongoChat {
    /// Connects (lazily: the driver dials on first use) and creates the indexes. Fails when the
    /// URI is malformed or the indexes cannot be created within `operation_timeout` × 4 (the
    /// server is unreachable or refuses): a process that cannot reach its store should not
    /// report itself started.
    /// `flag_unindexed`: the deployment indexes into an external engine, whose indexer finds
    /// its work by flag ([`MongoChat::unindexed`]); every process sharing the database must say
    /// the same.
    pub async fn open(config: &MongoConfig, flag_unindexed: bool) -> Result<Self, StorageError> {
        let mut options = ClientOptions::parse(&config.uri)
            .await
            .map_err(|error| StorageError::Open(format!("mongodb.uri {}: {error}", config.redacted_uri())))?;
        options.app_name.get_or_insert_with(|| "rampart".into());
        options.max_pool_size = Some(config.max_pool_size);
        options.server_selection_timeout.get_or_insert(config.operation_timeout);
        options.connect_timeout.get_or_insert(config.operation_timeout);
        let client = Client::with_options(options).map_err(|error| StorageError::Open(error.to_string()))?;
        let database = client.database(&config.database);
        let writes = CollectionOptions::builder().write_concern(config.write_concern()).build();
        let inner = Inner {
            messages: database.collection_with_options("messages", writes.clone()),
            users: database.collection_with_options("users", writes.clone()),
            conversations: database.collection_with_options("conversations", writes.clone()),
            deliveries: database.collection_with_options("deliveries", writes.clone()),
            dead_letters: database.collection_with_options("dead_letters", writes.clone()),
            progress: database.collection_with_options("search_progress", writes.clone()),
            rooms: database.collection_with_options("rooms", writes.clone()),
            writes,
            database,
            clock: SeqClock::new(),
            timeout: config.operation_timeout,
            settle: config.index_settle,
            flag_unindexed,
        };
        let store = Self { inner: Arc::new(inner) };
        tokio::time::timeout(config.operation_timeout * 4, store.create_indexes())
            .await
            .map_err(|_| {
                StorageError::Open(format!(
                    "no answer from MongoDB at {} within {:?}",
                    config.redacted_uri(),
                    config.operation_timeout * 4
                ))
            })?
            .map_err(|error| StorageError::Open(format!("creating indexes: {error}")))?;
        Ok(store)
    }

    async fn create_indexes(&self) -> Result<(), StorageError> {
        for (name, collection, keys, unique) in INDEXES {
            let keys: Document = keys.iter().map(|(field, order)| ((*field).to_owned(), Bson::Int32(*order))).collect();
            let options = IndexOptions::builder().name((*name).to_owned()).unique(*unique).build();
            let index = IndexModel::builder().keys(keys).options(options).build();
            self.inner.database.collection::<Document>(collection).create_index(index).await?;
        }
        Ok(())
    }

    /// Runs `operation` under `mongodb.operation_timeout`.
    /// One page of `collection`: what matches `filter`, in `sort` order, at most `limit`. The
    /// server stops the query at the operation timeout (`maxTimeMS`): one the client gave up on
    /// must not go on running there (on FerretDB, abandoned scans piled up until PostgreSQL did
    /// nothing else).
    async fn page<T>(
        &self,
        collection: &Collection<T>,
        filter: Document,
        sort: Document,
        limit: u32,
    ) -> Result<Vec<T>, StorageError>
    where
        T: serde::de::DeserializeOwned + Send + Sync,
    {
        let cursor = collection.find(filter).sort(sort).limit(i64::from(limit)).max_time(self.inner.timeout).await?;
        Ok(cursor.try_collect().await?)
    }

    async fn timed<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        tokio::time::timeout(self.inner.timeout, operation).await.unwrap_or(Err(StorageError::Timeout))
    }

    /// The server's own description (`buildInfo`): version, and `ferretdb` on FerretDB.
    pub async fn build_info(&self) -> Result<serde_json::Value, StorageError> {
        self.timed(async {
            let info = self.inner.database.run_command(doc! {"buildInfo": 1}).await?;
            Ok(Bson::Document(info).into_relaxed_extjson())
        })
        .await
    }

    /// The server's query plan for the history page query and the membership query, as
    /// `explain` (queryPlanner verbosity) returns them: `(history, membership)`.
    pub async fn explain_reads(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<(serde_json::Value, serde_json::Value), StorageError> {
        let (filter, sort) = history_query(conversation, None);
        let history = doc! {
            "explain": {"find": "messages", "filter": filter, "sort": sort, "limit": 50},
            "verbosity": "queryPlanner",
        };
        let membership = doc! {
            "explain": {"find": "conversations", "filter": {"members": user},
                        "sort": {"activity": -1, "_id": -1}, "limit": 50},
            "verbosity": "queryPlanner",
        };
        self.timed(async {
            let history = self.inner.database.run_command(history).await?;
            let membership = self.inner.database.run_command(membership).await?;
            Ok((Bson::Document(history).into_relaxed_extjson(), Bson::Document(membership).into_relaxed_extjson()))
        })
        .await
    }

    /// One small upsert with the configured write concern (`probes` collection).
    pub async fn probe(&self) -> Result<(), StorageError> {
        let probes = self.inner.database.collection_with_options::<Document>("probes", self.inner.writes.clone());
        probes.update_one(doc! {"_id": "probe"}, doc! {"$set": {"at": DateTime::now()}}).upsert(true).await?;
        Ok(())
    }

    pub async fn create_user(&self, id: String, display_name: String, now_ms: i64) -> Result<bool, StorageError> {
        let user = UserDoc { id, display_name, created_at: DateTime::from_millis(now_ms) };
        self.timed(insert_new(&self.inner.users, user)).await
    }

    pub async fn user_exists(&self, id: String) -> Result<bool, StorageError> {
        Ok(self.user(id).await?.is_some())
    }

    pub async fn user(&self, id: String) -> Result<Option<User>, StorageError> {
        self.timed(async {
            let user = self.inner.users.find_one(doc! {"_id": id}).await?;
            Ok(user.map(|user| User {
                id: user.id,
                display_name: user.display_name,
                created_at_ms: user.created_at.timestamp_millis(),
            }))
        })
        .await
    }

    pub async fn conversation(&self, id: String) -> Result<Option<ConversationSummary>, StorageError> {
        self.timed(async {
            let Some(conversation) = self.inner.conversations.find_one(doc! {"_id": id}).await? else {
                return Ok(None);
            };
            Ok(self.summarize(vec![conversation]).await?.pop())
        })
        .await
    }

    pub async fn conversations_page(
        &self,
        user: String,
        cursor: Option<ConversationCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StorageError> {
        // Expected plan: IXSCAN members_activity_id (members = user, then the index order), no
        // in-memory sort.
        let mut filter = doc! {"members": &user};
        if let Some(cursor) = cursor {
            let activity = DateTime::from_millis(cursor.activity_ms);
            filter.insert(
                "$or",
                vec![doc! {"activity": {"$lt": activity}}, doc! {"activity": activity, "_id": {"$lt": cursor.id}}],
            );
        }
        self.timed(async {
            let conversations: Vec<ConversationDoc> =
                self.page(&self.inner.conversations, filter, doc! {"activity": -1, "_id": -1}, limit).await?;
            self.summarize(conversations).await
        })
        .await
    }

    /// Adds the latest messages (one query for all) to conversation documents.
    async fn summarize(&self, conversations: Vec<ConversationDoc>) -> Result<Vec<ConversationSummary>, StorageError> {
        let latest_ids: Vec<&String> = conversations.iter().filter_map(|c| c.latest.as_ref()).collect();
        let mut latest: HashMap<String, StoredMessage> = HashMap::new();
        if !latest_ids.is_empty() {
            let mut found = self.inner.messages.find(doc! {"_id": {"$in": latest_ids}}).await?;
            while let Some(message) = found.try_next().await? {
                latest.insert(message.id.clone(), message.into_stored());
            }
        }
        Ok(conversations
            .into_iter()
            .map(|conversation| ConversationSummary {
                latest: conversation.latest.as_ref().and_then(|id| latest.get(id).cloned()),
                id: conversation.id,
                title: conversation.title,
                created_by: conversation.created_by,
                created_at_ms: conversation.created_at.timestamp_millis(),
                members: conversation.members,
                activity_ms: conversation.activity.timestamp_millis(),
            })
            .collect())
    }

    pub async fn create_conversation(
        &self,
        id: String,
        title: String,
        created_by: String,
        members: Vec<String>,
        now_ms: i64,
    ) -> Result<Result<(), Vec<String>>, StorageError> {
        let members: Vec<String> = members.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let others: Vec<String> = members.iter().filter(|member| **member != created_by).cloned().collect();
        self.timed(async {
            let mut known = HashSet::new();
            if !others.is_empty() {
                let users = self.inner.users.clone_with_type::<Document>();
                let mut found = users
                    .find(doc! {"_id": {"$in": &others}})
                    .projection(doc! {"_id": 1})
                    .max_time(self.inner.timeout)
                    .await?;
                while let Some(user) = found.try_next().await? {
                    if let Ok(id) = user.get_str("_id") {
                        known.insert(id.to_owned());
                    }
                }
            }
            let unknown: Vec<String> = others.into_iter().filter(|member| !known.contains(member)).collect();
            if !unknown.is_empty() {
                return Ok(Err(unknown));
            }
            let created_at = DateTime::from_millis(now_ms);
            let conversation =
                ConversationDoc { id, title, created_by, created_at, members, activity: created_at, latest: None };
            // One document: the conversation and its members appear together or not at all.
            self.inner.conversations.insert_one(conversation).await?;
            Ok(Ok(()))
        })
        .await
    }

    pub async fn members(&self, conversation: String) -> Result<Option<Vec<String>>, StorageError> {
        self.timed(async {
            let found = self.inner.conversations.find_one(doc! {"_id": conversation}).await?;
            Ok(found.map(|conversation| conversation.members).filter(|members| !members.is_empty()))
        })
        .await
    }

    pub async fn conversations_of(&self, user: String) -> Result<Vec<String>, StorageError> {
        // Expected plan: IXSCAN members_activity_id (members = user), covered by the index.
        self.timed(async {
            let conversations = self.inner.conversations.clone_with_type::<Document>();
            let mut found = conversations
                .find(doc! {"members": user})
                .projection(doc! {"_id": 1})
                .max_time(self.inner.timeout)
                .await?;
            let mut ids = Vec::new();
            while let Some(conversation) = found.try_next().await? {
                if let Ok(id) = conversation.get_str("_id") {
                    ids.push(id.to_owned());
                }
            }
            Ok(ids)
        })
        .await
    }

    /// Commits a batch: one unordered `insert_many`, then the deliveries of every message stored
    /// (new or found already stored) and the conversations' latest message. Each message gets
    /// its own outcome; only a failure that leaves the whole batch unknown (network, timeout, the
    /// write concern not satisfied) fails the call, and the caller retries the batch.
    pub async fn commit_batch_inspected(
        &self,
        batch: Arc<[NewMessage]>,
        now_ms: i64,
        inspect: impl Fn(&NewMessage) + Send + 'static,
    ) -> Result<Vec<CommitOutcome>, StorageError> {
        for message in batch.iter() {
            // Contained like a panicking SQLite job: recorded, and the batch is bisected.
            if let Err(panic) = crate::supervision::contain(|| inspect(message)) {
                crate::tasks::task_panicked("mongodb.commit", &panic);
                return Err(StorageError::Panicked(panic.message));
            }
        }
        let created_at = DateTime::from_millis(now_ms);
        let documents: Vec<MessageDoc> = batch
            .iter()
            .map(|message| MessageDoc {
                id: message.id.clone(),
                seq: self.inner.clock.next(),
                conversation: message.conversation.clone(),
                sender: message.sender.clone(),
                client_msg_id: message.client_msg_id.clone(),
                body: message.body.clone(),
                created_at: message.created_at_ms.map(DateTime::from_millis).unwrap_or(created_at),
                search_pending: self.inner.flag_unindexed.then_some(true),
            })
            .collect();
        let conversations: Vec<&String> =
            batch.iter().map(|message| &message.conversation).collect::<HashSet<_>>().into_iter().collect();
        let members = self.members_of(conversations).await?;
        // The messages, their delivery records and the conversations' latest message are
        // written together (one round trip each, concurrently), and all three must succeed
        // before anything is acked: recipients find a message in their backlog once its sender
        // was told it is stored. A delivery record may briefly precede its message (backlog
        // reads skip it until the message exists); records of messages that end up not stored
        // are removed below. Writing the same delivery twice (a retried batch, a resend) keeps
        // the first.
        let (written, deliveries, activity) = futures_util::future::join3(
            self.insert_messages(&documents),
            self.insert_deliveries(&documents, &members),
            self.record_activity(&documents),
        )
        .await;
        let written = written?;
        deliveries?;
        activity?;
        // Duplicates: read the originals back (they carry the original seq and time).
        let duplicates: Vec<&String> = documents
            .iter()
            .zip(&written)
            .filter(|(_, written)| matches!(written, Written::Duplicate))
            .map(|(document, _)| &document.id)
            .collect();
        let mut originals: HashMap<String, StoredMessage> = HashMap::new();
        if !duplicates.is_empty() {
            let mut found = self.inner.messages.find(doc! {"_id": {"$in": duplicates}}).await?;
            while let Some(message) = found.try_next().await? {
                originals.insert(message.id.clone(), message.into_stored());
            }
        }
        // A duplicate's delivery records, if this commit wrote them (its first commit did not get
        // that far), carry this commit's seq, not the original's. Nothing needs them equal:
        // claims name records by key, and a backlog page's cursor is its records' seq. (They were
        // once rewritten here, one `update_many` per duplicate: on FerretDB each a scan of the
        // deliveries, so a batch of re-read records took longer than `storage_timeout`, and every
        // retry did it all again, stopping a Kafka partition for good.)
        let outcomes: Vec<CommitOutcome> = documents
            .into_iter()
            .zip(written)
            .map(|(document, written)| match written {
                Written::Stored => CommitOutcome::Stored { message: document.into_stored(), duplicate: false },
                Written::Duplicate => match originals.remove(&document.id) {
                    Some(message) => CommitOutcome::Stored { message, duplicate: true },
                    None => CommitOutcome::Failed(format!(
                        "message {} reported stored but not found; send again",
                        document.id
                    )),
                },
                Written::Rejected(reason) => CommitOutcome::Rejected(reason),
                Written::Failed(reason) => CommitOutcome::Failed(reason),
            })
            .collect();
        // Delivery records of messages not stored: removed, so nothing waits on a message that
        // does not exist. (If this fails, the batch is retried or answered unavailable; stray
        // records are skipped by backlog reads and fixed by the resend.)
        let strays: Vec<String> = batch
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| !matches!(outcome, CommitOutcome::Stored { .. }))
            .flat_map(|(message, _)| {
                let recipients = members.get(&message.conversation).map(Vec::as_slice).unwrap_or_default();
                recipients.iter().map(|recipient| delivery_key(&message.id, recipient)).collect::<Vec<_>>()
            })
            .collect();
        if !strays.is_empty() {
            self.inner.deliveries.delete_many(doc! {"_id": {"$in": strays}, "state": PENDING}).await?;
        }
        Ok(outcomes)
    }

    /// One unordered `insert_many`, then rounds of retrying only documents refused with a
    /// transient error. Outcomes in document order.
    async fn insert_messages(&self, documents: &[MessageDoc]) -> Result<Vec<Written>, StorageError> {
        let mut outcomes: Vec<Option<Written>> = vec![None; documents.len()];
        let mut pending: Vec<usize> = (0..documents.len()).collect();
        let mut round = 0;
        while !pending.is_empty() {
            round += 1;
            let attempt: Vec<&MessageDoc> = pending.iter().map(|slot| &documents[*slot]).collect();
            let errors = match self.inner.messages.insert_many(attempt).ordered(false).await {
                Ok(_) => Vec::new(),
                Err(error) => match *error.kind {
                    ErrorKind::InsertMany(ref failure) => {
                        if let Some(concern) = &failure.write_concern_error {
                            // Written, but not as durably as acks promise: the batch is retried
                            // (each message then comes back as a duplicate) or answered
                            // unavailable, never acked on this answer.
                            return Err(StorageError::Remote(format!(
                                "mongodb write concern not satisfied: {} ({})",
                                concern.message, concern.code
                            )));
                        }
                        failure.write_errors.clone().unwrap_or_default()
                    }
                    _ => return Err(error.into()),
                },
            };
            let mut refused: HashMap<usize, mongodb::error::IndexedWriteError> =
                errors.into_iter().map(|error| (error.index, error)).collect();
            let mut retry = Vec::new();
            for (position, slot) in pending.drain(..).enumerate() {
                let outcome = match refused.remove(&position) {
                    None => Written::Stored,
                    Some(error) if error.code == DUPLICATE_KEY => Written::Duplicate,
                    Some(error) if PERMANENT_WRITE_ERRORS.contains(&error.code) => {
                        Written::Rejected(format!("mongodb refused the document: {} ({})", error.message, error.code))
                    }
                    Some(error) if round >= ITEM_RETRY_ROUNDS => {
                        Written::Failed(format!("mongodb: {} ({})", error.message, error.code))
                    }
                    Some(error) => {
                        tracing::warn!(code = error.code, message = %error.message, "mongodb refused one document; retrying it");
                        retry.push(slot);
                        continue;
                    }
                };
                outcomes[slot] = Some(outcome);
            }
            if !retry.is_empty() {
                let delay = Duration::from_millis(rand::random::<u64>() % (20 << round));
                tokio::time::sleep(delay).await;
            }
            pending = retry;
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Written::Failed("no outcome for this document".into())))
            .collect())
    }

    /// Member lists of `conversations`.
    async fn members_of(&self, conversations: Vec<&String>) -> Result<HashMap<String, Vec<String>>, StorageError> {
        let mut found = self.inner.conversations.find(doc! {"_id": {"$in": conversations}}).await?;
        let mut members = HashMap::new();
        while let Some(conversation) = found.try_next().await? {
            members.insert(conversation.id, conversation.members);
        }
        Ok(members)
    }

    /// One pending delivery per member other than the sender; records that exist already (a
    /// retried batch, a resend) are left as they are.
    async fn insert_deliveries(
        &self,
        documents: &[MessageDoc],
        members: &HashMap<String, Vec<String>>,
    ) -> Result<(), StorageError> {
        let records: Vec<DeliveryDoc> = documents
            .iter()
            .flat_map(|message| {
                let recipients = members.get(&message.conversation).map(Vec::as_slice).unwrap_or_default();
                recipients.iter().filter(|recipient| **recipient != message.sender).map(|recipient| DeliveryDoc {
                    id: delivery_key(&message.id, recipient),
                    recipient: recipient.clone(),
                    message_id: message.id.clone(),
                    seq: message.seq,
                    state: PENDING,
                    claimed_at: None,
                    attempts: 0,
                })
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        match self.inner.deliveries.insert_many(records).ordered(false).await {
            Ok(_) => Ok(()),
            Err(error) => match *error.kind {
                ErrorKind::InsertMany(ref failure)
                    if failure.write_concern_error.is_none()
                        && failure.write_errors.iter().flatten().all(|error| error.code == DUPLICATE_KEY) =>
                {
                    Ok(())
                }
                _ => Err(error.into()),
            },
        }
    }

    /// Moves each conversation's `activity` and `latest` to its newest stored message, unless a
    /// newer one is recorded already (another batch, another process).
    async fn record_activity(&self, documents: &[MessageDoc]) -> Result<(), StorageError> {
        let mut newest: BTreeMap<&str, &MessageDoc> = BTreeMap::new();
        for document in documents {
            let slot = newest.entry(&document.conversation).or_insert(document);
            if (document.created_at, document.seq) > (slot.created_at, slot.seq) {
                *slot = document;
            }
        }
        if newest.is_empty() {
            return Ok(());
        }
        // One update per conversation, a few at a time. Not one `update` command with a
        // statement each: FerretDB 1.24 hangs (every connection to PostgreSQL left idle, the
        // server wedged) on such a command with tens of statements.
        let updates = newest.into_values().map(|message| {
            let at = message.created_at;
            self.inner
                .conversations
                .update_one(
                    doc! {"_id": &message.conversation, "activity": {"$lte": at}},
                    doc! {"$set": {"activity": at, "latest": &message.id}},
                )
                .into_future()
        });
        let mut running = futures_util::stream::iter(updates).buffer_unordered(ACTIVITY_UPDATES_IN_FLIGHT);
        while let Some(result) = running.next().await {
            result?;
        }
        Ok(())
    }

    pub async fn message(&self, id: String) -> Result<Option<StoredMessage>, StorageError> {
        self.timed(async { Ok(self.inner.messages.find_one(doc! {"_id": id}).await?.map(MessageDoc::into_stored)) })
            .await
    }

    pub async fn history(
        &self,
        conversation: String,
        before: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<StoredMessage>>, StorageError> {
        self.timed(async {
            let before = match before {
                None => None,
                Some(id) => match self.inner.messages.find_one(doc! {"_id": &id, "conversation": &conversation}).await?
                {
                    Some(message) => Some((message.created_at, message.id)),
                    None => return Ok(None),
                },
            };
            let (filter, sort) = history_query(&conversation, before);
            let messages: Vec<MessageDoc> = self.page(&self.inner.messages, filter, sort, limit).await?;
            Ok(Some(messages.into_iter().map(MessageDoc::into_stored).collect()))
        })
        .await
    }

    pub async fn search_watermark(&self, name: &'static str) -> Result<i64, StorageError> {
        self.timed(async { Ok(self.inner.progress.find_one(doc! {"_id": name}).await?.map_or(0, |p| p.seq)) }).await
    }

    pub async fn set_search_watermark(&self, name: &'static str, seq: i64) -> Result<(), StorageError> {
        self.timed(async {
            self.inner.progress.update_one(doc! {"_id": name}, doc! {"$max": {"seq": seq}}).upsert(true).await?;
            Ok(())
        })
        .await
    }

    /// Messages after `seq` in seq order, among those stored at least `index_settle` ago.
    pub async fn messages_after(&self, seq: i64, limit: u32) -> Result<Vec<StoredMessage>, StorageError> {
        let horizon = SeqClock::floor_of(crate::storage::now_ms() - self.inner.settle.as_millis() as i64);
        self.timed(async {
            let messages: Vec<MessageDoc> = self
                .page(&self.inner.messages, doc! {"seq": {"$gt": seq, "$lt": horizon}}, doc! {"seq": 1}, limit)
                .await?;
            let mut messages: Vec<StoredMessage> = messages.into_iter().map(MessageDoc::into_stored).collect();
            // Two processes may (rarely) stamp one seq; a full page must not end inside a run of
            // equal seqs, or the next page (seq > last) would skip the rest of the run.
            if messages.len() == limit as usize {
                if let Some(last) = messages.last().map(|message| message.seq) {
                    if messages.first().is_some_and(|first| first.seq != last) {
                        messages.retain(|message| message.seq != last);
                    }
                }
            }
            Ok(messages)
        })
        .await
    }

    /// Messages not indexed yet (flagged at insert), in seq order: an external engine's feed.
    /// Complete whatever order writes land in: a message is found as soon as it is stored.
    pub async fn unindexed(&self, limit: u32) -> Result<Vec<StoredMessage>, StorageError> {
        self.timed(async {
            // Expected plan: IXSCAN search_pending_seq.
            let messages: Vec<MessageDoc> =
                self.page(&self.inner.messages, doc! {"search_pending": true}, doc! {"seq": 1}, limit).await?;
            Ok(messages.into_iter().map(MessageDoc::into_stored).collect())
        })
        .await
    }

    /// Clears the flag of messages indexed (or dead-lettered) by the external engine.
    pub async fn mark_indexed(&self, ids: Vec<String>) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.timed(async {
            self.inner
                .messages
                .update_many(doc! {"_id": {"$in": ids}}, doc! {"$unset": {"search_pending": ""}})
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn undelivered(
        &self,
        recipient: String,
        after_seq: i64,
        limit: u32,
        include_in_flight: bool,
    ) -> Result<BacklogPage, StorageError> {
        let states: Vec<i32> = if include_in_flight { vec![PENDING, IN_FLIGHT] } else { vec![PENDING] };
        self.timed(async {
            // Expected plan: IXSCAN recipient_state_seq (one range per state, merged on seq).
            let records: Vec<DeliveryDoc> = self
                .page(
                    &self.inner.deliveries,
                    doc! {"recipient": &recipient, "state": {"$in": states}, "seq": {"$gt": after_seq}},
                    doc! {"seq": 1},
                    limit,
                )
                .await?;
            // The page ends at its last record, not its last message: a record may precede its
            // message (written concurrently) or outlive it (a failed batch's stray); either is
            // skipped here, and the backlog goes on after it.
            let through = records.last().map_or(after_seq, |record| record.seq);
            let last = records.len() < limit as usize;
            if records.is_empty() {
                return Ok(BacklogPage { entries: Vec::new(), through, last });
            }
            let ids: Vec<&String> = records.iter().map(|record| &record.message_id).collect();
            let mut messages: HashMap<String, StoredMessage> = self
                .inner
                .messages
                .find(doc! {"_id": {"$in": ids}})
                .await?
                .try_collect::<Vec<MessageDoc>>()
                .await?
                .into_iter()
                .map(|message| (message.id.clone(), message.into_stored()))
                .collect();
            let entries = records
                .iter()
                .filter_map(|record| {
                    let message = messages.remove(&record.message_id)?;
                    Some(BacklogEntry { seq: record.seq, message })
                })
                .collect();
            Ok(BacklogPage { entries, through, last })
        })
        .await
    }

    /// Of `recipients`, those with a pending delivery stamped before `stored_before_ms` (a
    /// delivery's seq is its message's time stamp).
    pub async fn stale_pending(
        &self,
        recipients: Vec<String>,
        stored_before_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        let horizon = SeqClock::floor_of(stored_before_ms);
        let mut stale = Vec::new();
        for chunk in recipients.chunks(STALE_PENDING_CHUNK) {
            let found = self
                .timed(async {
                    // Expected plan: IXSCAN recipient_state_seq. No maxTimeMS: FerretDB's `distinct`
                    // refuses the field (the client-side deadline still applies).
                    let found = self
                        .inner
                        .deliveries
                        .distinct(
                            "recipient",
                            doc! {"recipient": {"$in": chunk}, "state": PENDING, "seq": {"$lt": horizon}},
                        )
                        .await?;
                    Ok(found)
                })
                .await?;
            stale.extend(found.into_iter().filter_map(|recipient| match recipient {
                Bson::String(recipient) => Some(recipient),
                _ => None,
            }));
        }
        Ok(stale)
    }

    pub async fn mark_in_flight(&self, claims: Vec<Claim>, now_ms: i64) -> Result<(), StorageError> {
        if claims.is_empty() {
            return Ok(());
        }
        // By key (message id and recipient), never by seq: a batch retried after a timeout may
        // leave its records with the first attempt's seq and its message with the second's.
        let keys: Vec<String> = claims.iter().map(|claim| delivery_key(&claim.message_id, &claim.recipient)).collect();
        let claimed_at = DateTime::from_millis(now_ms);
        self.timed(async {
            self.inner
                .deliveries
                .update_many(
                    doc! {"_id": {"$in": keys}, "state": {"$in": [PENDING, IN_FLIGHT]}},
                    doc! {"$set": {"state": IN_FLIGHT, "claimed_at": claimed_at}},
                )
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn mark_delivered(&self, confirmations: Vec<(String, String)>) -> Result<(), StorageError> {
        if confirmations.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> =
            confirmations.iter().map(|(recipient, message_id)| delivery_key(message_id, recipient)).collect();
        self.timed(async {
            self.inner
                .deliveries
                .update_many(
                    doc! {"_id": {"$in": keys}, "state": {"$in": [PENDING, IN_FLIGHT]}},
                    doc! {"$set": {"state": DELIVERED}},
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// One cleanup pass. Every change is conditional on the claim time read (the record is still
    /// the same claim): when another process requeued, re-claimed or confirmed it meanwhile, this
    /// pass leaves it alone. Each record is handled inside `contain_future`: a panic on one
    /// dead-letters that record alone.
    pub async fn requeue_stale(
        &self,
        stale_before_ms: i64,
        max_attempts: u32,
        limit: u32,
        now_ms: i64,
    ) -> Result<RequeueReport, StorageError> {
        let stale: Vec<DeliveryDoc> = self
            .timed(async {
                // Expected plan: IXSCAN state_claimed_at.
                self.page(
                    &self.inner.deliveries,
                    doc! {"state": IN_FLIGHT, "claimed_at": {"$lt": DateTime::from_millis(stale_before_ms)}},
                    doc! {"claimed_at": 1},
                    limit,
                )
                .await
            })
            .await?;
        let mut report = RequeueReport { examined: stale.len(), ..RequeueReport::default() };
        for record in stale {
            let attempts = u32::try_from(record.attempts).unwrap_or(0).saturating_add(1);
            let handled = crate::supervision::contain_future(self.requeue_one(&record, attempts, max_attempts, now_ms));
            let requeued = match self.timed(async { Ok(handled.await) }).await? {
                Ok(requeued) => requeued?,
                Err(panic) => {
                    crate::tasks::task_panicked("mongodb.cleanup", &panic);
                    let reason = format!("cleanup panicked on this record: {}", panic.message);
                    self.timed(self.dead_letter_delivery(&record, attempts, reason, now_ms)).await?;
                    Some(false)
                }
            };
            match requeued {
                Some(true) if !report.requeued.contains(&record.recipient) => report.requeued.push(record.recipient),
                Some(true) => {}
                Some(false) => report.dead_lettered += 1,
                None => {}
            }
        }
        Ok(report)
    }

    /// `Some(true)` requeued, `Some(false)` dead-lettered, `None` changed by someone else.
    async fn requeue_one(
        &self,
        record: &DeliveryDoc,
        attempts: u32,
        max_attempts: u32,
        now_ms: i64,
    ) -> Result<Option<bool>, StorageError> {
        if attempts >= max_attempts {
            let reason = format!("not confirmed after {attempts} delivery attempts");
            return Ok(self.dead_letter_delivery(record, attempts, reason, now_ms).await?.then_some(false));
        }
        let changed = self
            .inner
            .deliveries
            .update_one(
                doc! {"_id": &record.id, "state": IN_FLIGHT, "claimed_at": record.claimed_at},
                doc! {"$set": {"state": PENDING, "attempts": attempts as i32}, "$unset": {"claimed_at": ""}},
            )
            .await?;
        Ok((changed.modified_count == 1).then_some(true))
    }

    /// Writes the dead letter first (its id derived from the record and attempt, so two
    /// processes write one letter), then moves the record. `false` when the record had changed:
    /// the letter is removed again unless someone else dead-lettered the record too.
    async fn dead_letter_delivery(
        &self,
        record: &DeliveryDoc,
        attempts: u32,
        reason: String,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        const NAMESPACE: uuid::Uuid = uuid::uuid!("5f0d7d8e-2c1b-4f57-9a43-0e6b1d2c3f4a");
        let id = uuid::Uuid::new_v5(&NAMESPACE, format!("{}\n{attempts}", record.id).as_bytes()).to_string();
        let payload = serde_json::json!({"recipient": record.recipient, "message_id": record.message_id});
        let letter = NewDeadLetter { kind: DeadLetterKind::Delivery, reason, attempts, payload };
        match self.inner.dead_letters.insert_one(dead_letter_doc(id.clone(), &letter, now_ms)?).await {
            Ok(_) => {}
            Err(error) if is_duplicate(&error) => {}
            Err(error) => return Err(error.into()),
        }
        let changed = self
            .inner
            .deliveries
            .update_one(
                doc! {"_id": &record.id, "state": IN_FLIGHT, "claimed_at": record.claimed_at},
                doc! {"$set": {"state": DEAD_LETTERED, "attempts": attempts as i32}},
            )
            .await?;
        if changed.modified_count == 1 {
            return Ok(true);
        }
        let now = self.inner.deliveries.find_one(doc! {"_id": &record.id}).await?;
        if now.is_none_or(|now| now.state != DEAD_LETTERED) {
            self.inner.dead_letters.delete_one(doc! {"_id": id}).await?;
        }
        Ok(false)
    }

    pub async fn requeue_delivery(&self, recipient: String, message_id: String) -> Result<bool, StorageError> {
        self.timed(async {
            let changed = self
                .inner
                .deliveries
                .update_one(
                    doc! {"_id": delivery_key(&message_id, &recipient)},
                    doc! {"$set": {"state": PENDING, "attempts": 0}, "$unset": {"claimed_at": ""}},
                )
                .await?;
            Ok(changed.matched_count == 1)
        })
        .await
    }

    pub async fn add_dead_letter(&self, letter: NewDeadLetter, now_ms: i64) -> Result<String, StorageError> {
        let id = uuid::Uuid::now_v7().to_string();
        let document = dead_letter_doc(id.clone(), &letter, now_ms)?;
        self.timed(async {
            self.inner.dead_letters.insert_one(document).await?;
            Ok(id)
        })
        .await
    }

    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        self.timed(async {
            let letters: Vec<DeadLetterDoc> =
                self.page(&self.inner.dead_letters, doc! {}, doc! {"at": -1, "_id": -1}, limit).await?;
            Ok(letters.into_iter().map(DeadLetterDoc::into_letter).collect())
        })
        .await
    }

    pub async fn dead_letter(&self, id: String) -> Result<Option<DeadLetter>, StorageError> {
        self.timed(async {
            Ok(self.inner.dead_letters.find_one(doc! {"_id": id}).await?.map(DeadLetterDoc::into_letter))
        })
        .await
    }

    pub async fn remove_dead_letter(&self, id: String) -> Result<bool, StorageError> {
        self.timed(async { Ok(self.inner.dead_letters.delete_one(doc! {"_id": id}).await?.deleted_count == 1) }).await
    }

    pub async fn create_room(&self, name: String, now_ms: i64) -> Result<bool, StorageError> {
        let room = RoomDoc { name, created_at: DateTime::from_millis(now_ms) };
        self.timed(insert_new(&self.inner.rooms, room)).await
    }

    pub async fn delete_room(&self, name: String) -> Result<bool, StorageError> {
        self.timed(async { Ok(self.inner.rooms.delete_one(doc! {"_id": name}).await?.deleted_count == 1) }).await
    }

    pub async fn room_exists(&self, name: String) -> Result<bool, StorageError> {
        self.timed(async { Ok(self.inner.rooms.find_one(doc! {"_id": name}).await?.is_some()) }).await
    }

    pub async fn rooms(&self) -> Result<Vec<String>, StorageError> {
        self.timed(async {
            let rooms: Vec<RoomDoc> = self.inner.rooms.find(doc! {}).sort(doc! {"_id": 1}).await?.try_collect().await?;
            Ok(rooms.into_iter().map(|room| room.name).collect())
        })
        .await
    }
}

/// What `insert_messages` did with one document.
#[derive(Clone)]
enum Written {
    Stored,
    /// Already stored (by an earlier commit or a resend).
    Duplicate,
    Rejected(String),
    Failed(String),
}

/// The history page query: `conversation`'s messages older than `before` (time, id), newest
/// first. Expected plan on MongoDB: IXSCAN conversation_created_at_id with bounds on
/// conversation and created_at, no SORT stage, no COLLSCAN.
fn history_query(conversation: &str, before: Option<(DateTime, String)>) -> (Document, Document) {
    let mut filter = doc! {"conversation": conversation};
    if let Some((at, id)) = before {
        filter.insert("created_at", doc! {"$lte": at});
        filter.insert("$or", vec![doc! {"created_at": {"$lt": at}}, doc! {"_id": {"$lt": id}}]);
    }
    (filter, doc! {"created_at": -1, "_id": -1})
}

fn dead_letter_doc(id: String, letter: &NewDeadLetter, now_ms: i64) -> Result<DeadLetterDoc, StorageError> {
    let payload = mongodb::bson::to_bson(&letter.payload)
        .map_err(|error| StorageError::Remote(format!("dead letter payload as BSON: {error}")))?;
    Ok(DeadLetterDoc {
        id,
        kind: letter.kind.as_str().to_owned(),
        reason: letter.reason.clone(),
        attempts: i64::from(letter.attempts),
        payload,
        at: DateTime::from_millis(now_ms),
    })
}

/// Inserts `document`: `true` when inserted, `false` when its `_id` was taken.
async fn insert_new<T: Serialize + Send + Sync>(collection: &Collection<T>, document: T) -> Result<bool, StorageError> {
    match collection.insert_one(document).await {
        Ok(_) => Ok(true),
        Err(error) if is_duplicate(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

fn is_duplicate(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(error)) => error.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(failure) => {
            failure.write_errors.iter().flatten().any(|error| error.code == DUPLICATE_KEY)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_uris_are_redacted() {
        assert_eq!(
            redact_uri("mongodb://app:s3cret@db1:27017,db2/?replicaSet=r"),
            "mongodb://app:<redacted>@db1:27017,db2/?replicaSet=r"
        );
        assert_eq!(
            redact_uri("mongodb+srv://app:p%40ss@cluster.example.net/db"),
            "mongodb+srv://app:<redacted>@cluster.example.net/db"
        );
        assert_eq!(
            redact_uri("mongodb://127.0.0.1:27017/?directConnection=true"),
            "mongodb://127.0.0.1:27017/?directConnection=true"
        );
    }

    #[test]
    fn write_concerns_parse() {
        let config = MongoConfig::default();
        assert_eq!(config.write_concern().w, Some(Acknowledgment::Majority));
        assert_eq!(config.write_concern().journal, Some(true));
        let config = MongoConfig { write_concern: "2".into(), journal: false, ..MongoConfig::default() };
        assert_eq!(config.write_concern().w, Some(Acknowledgment::Nodes(2)));
        assert!(MongoConfig { uri: "http://x".into(), ..MongoConfig::default() }.validate().is_err());
        assert!(MongoConfig { database: "a.b".into(), ..MongoConfig::default() }.validate().is_err());
    }
}
