//! Messages: the batch commit (messages, their deliveries and the conversations' latest
//! activity), history, and the search indexer's feed (by seq or by flag) and watermark.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::ErrorKind;

use super::documents::{delivery_key, DeliveryDoc, MessageDoc, PENDING};
use super::{MongoChat, SeqClock, DUPLICATE_KEY};
use crate::storage::{CommitOutcome, Inspect, MessageStore, NewMessage, StorageError, StoredMessage};

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

/// Rounds of retrying documents refused with a transient write error within one commit.
const ITEM_RETRY_ROUNDS: u32 = 3;

#[async_trait]
impl MessageStore for MongoChat {
    /// Commits a batch: one unordered `insert_many`, then the deliveries of every message stored
    /// (new or found already stored) and the conversations' latest message. Each message gets
    /// its own outcome; only a failure that leaves the whole batch unknown (network, timeout, the
    /// write concern not satisfied) fails the call, and the caller retries the batch.
    async fn commit_batch_inspected(
        &self,
        batch: Arc<[NewMessage]>,
        now_ms: i64,
        inspect: Inspect,
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

    async fn message(&self, id: String) -> Result<Option<StoredMessage>, StorageError> {
        self.timed(async { Ok(self.inner.messages.find_one(doc! {"_id": id}).await?.map(MessageDoc::into_stored)) })
            .await
    }

    async fn history(
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

    async fn search_watermark(&self, name: &'static str) -> Result<i64, StorageError> {
        self.timed(async { Ok(self.inner.progress.find_one(doc! {"_id": name}).await?.map_or(0, |p| p.seq)) }).await
    }

    async fn set_search_watermark(&self, name: &'static str, seq: i64) -> Result<(), StorageError> {
        self.timed(async {
            self.inner.progress.update_one(doc! {"_id": name}, doc! {"$max": {"seq": seq}}).upsert(true).await?;
            Ok(())
        })
        .await
    }

    /// Messages after `seq` in seq order, among those stored at least `index_settle` ago.
    async fn messages_after(&self, seq: i64, limit: u32) -> Result<Vec<StoredMessage>, StorageError> {
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
}

impl MongoChat {
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
        // Collected first: a stream over a mapping closure of borrowed documents is not provably
        // `Send` for every lifetime, which the store's boxed futures need.
        let updates: Vec<_> = newest
            .into_values()
            .map(|message| {
                let at = message.created_at;
                self.inner
                    .conversations
                    .update_one(
                        doc! {"_id": &message.conversation, "activity": {"$lte": at}},
                        doc! {"$set": {"activity": at, "latest": &message.id}},
                    )
                    .into_future()
            })
            .collect();
        let mut running = futures_util::stream::iter(updates).buffer_unordered(ACTIVITY_UPDATES_IN_FLIGHT);
        while let Some(result) = running.next().await {
            result?;
        }
        Ok(())
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
pub(super) fn history_query(conversation: &str, before: Option<(DateTime, String)>) -> (Document, Document) {
    let mut filter = doc! {"conversation": conversation};
    if let Some((at, id)) = before {
        filter.insert("created_at", doc! {"$lte": at});
        filter.insert("$or", vec![doc! {"created_at": {"$lt": at}}, doc! {"_id": {"$lt": id}}]);
    }
    (filter, doc! {"created_at": -1, "_id": -1})
}
