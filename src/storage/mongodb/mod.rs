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

mod config;
mod conversations;
mod deliveries;
mod documents;
mod messages;
mod rooms;
mod seq;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, CollectionOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::Serialize;

use crate::storage::{ChatBackend, StorageError, StorageKind};
pub use config::MongoConfig;
use documents::{
    ConversationDoc, DeadLetterDoc, DeliveryDoc, MessageDoc, ProgressDoc, RoomDoc, RoomLeaseDoc, UserDoc, INDEXES,
};
use messages::history_query;
pub use seq::SeqClock;

impl From<mongodb::error::Error> for StorageError {
    fn from(error: mongodb::error::Error) -> Self {
        StorageError::Remote(format!("mongodb: {error}"))
    }
}

/// MongoDB's duplicate-key error (FerretDB's too; neither names the index there).
pub(super) const DUPLICATE_KEY: i32 = 11000;

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
    room_leases: Collection<RoomLeaseDoc>,
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
            room_leases: database.collection_with_options("room_leases", writes.clone()),
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

    /// One page of `collection`: what matches `filter`, in `sort` order, at most `limit`. The
    /// server stops the query at the operation timeout (`maxTimeMS`): one the client gave up on
    /// must not go on running there (on FerretDB, abandoned scans piled up until PostgreSQL did
    /// nothing else).
    pub(super) async fn page<T>(
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

    /// Runs `operation` under `mongodb.operation_timeout`.
    pub(super) async fn timed<T>(
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
}

#[async_trait]
impl ChatBackend for MongoChat {
    fn kind(&self) -> StorageKind {
        StorageKind::Mongodb
    }

    /// One small upsert with the configured write concern (`probes` collection).
    async fn write_probe(&self) -> Result<(), StorageError> {
        let probes = self.inner.database.collection_with_options::<Document>("probes", self.inner.writes.clone());
        probes.update_one(doc! {"_id": "probe"}, doc! {"$set": {"at": DateTime::now()}}).upsert(true).await?;
        Ok(())
    }
}

/// Inserts `document`: `true` when inserted, `false` when its `_id` was taken.
pub(super) async fn insert_new<T: Serialize + Send + Sync>(
    collection: &Collection<T>,
    document: T,
) -> Result<bool, StorageError> {
    match collection.insert_one(document).await {
        Ok(_) => Ok(true),
        Err(error) if is_duplicate(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

pub(super) fn is_duplicate(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(error)) => error.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(failure) => {
            failure.write_errors.iter().flatten().any(|error| error.code == DUPLICATE_KEY)
        }
        _ => false,
    }
}
