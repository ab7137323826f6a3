//! Per-recipient delivery records (keyed `<message id>:<recipient>`, claimed by conditional
//! updates) and the dead letters.

use std::collections::HashMap;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime};

use super::documents::{
    delivery_key, DeadLetterDoc, DeliveryDoc, MessageDoc, DEAD_LETTERED, DELIVERED, IN_FLIGHT, PENDING,
};
use super::{is_duplicate, MongoChat, SeqClock};
use crate::storage::{
    BacklogEntry, BacklogPage, Claim, DeadLetter, DeadLetterKind, DeadLetterStore, DeliveryStore, NewDeadLetter,
    RequeueReport, StorageError, StoredMessage,
};

/// Recipients per query of the delivery backstop (`stale_pending`).
const STALE_PENDING_CHUNK: usize = 500;

#[async_trait]
impl DeliveryStore for MongoChat {
    async fn undelivered(
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
    async fn stale_pending(&self, recipients: Vec<String>, stored_before_ms: i64) -> Result<Vec<String>, StorageError> {
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

    async fn mark_in_flight(&self, claims: Vec<Claim>, now_ms: i64) -> Result<(), StorageError> {
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

    async fn mark_delivered(&self, confirmations: Vec<(String, String)>) -> Result<(), StorageError> {
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
    async fn requeue_stale(
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

    async fn requeue_delivery(&self, recipient: String, message_id: String) -> Result<bool, StorageError> {
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
}

#[async_trait]
impl DeadLetterStore for MongoChat {
    async fn add_dead_letter(&self, letter: NewDeadLetter, now_ms: i64) -> Result<String, StorageError> {
        let id = uuid::Uuid::now_v7().to_string();
        let document = dead_letter_doc(id.clone(), &letter, now_ms)?;
        self.timed(async {
            self.inner.dead_letters.insert_one(document).await?;
            Ok(id)
        })
        .await
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        self.timed(async {
            let letters: Vec<DeadLetterDoc> =
                self.page(&self.inner.dead_letters, doc! {}, doc! {"at": -1, "_id": -1}, limit).await?;
            Ok(letters.into_iter().map(DeadLetterDoc::into_letter).collect())
        })
        .await
    }

    async fn dead_letter(&self, id: String) -> Result<Option<DeadLetter>, StorageError> {
        self.timed(async {
            Ok(self.inner.dead_letters.find_one(doc! {"_id": id}).await?.map(DeadLetterDoc::into_letter))
        })
        .await
    }

    async fn remove_dead_letter(&self, id: String) -> Result<bool, StorageError> {
        self.timed(async { Ok(self.inner.dead_letters.delete_one(doc! {"_id": id}).await?.deleted_count == 1) }).await
    }
}

impl MongoChat {
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
