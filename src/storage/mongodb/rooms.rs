//! The SFU's operator rooms.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, DateTime};

use super::documents::{RoomDoc, RoomLeaseDoc};
use super::{insert_new, MongoChat};
use crate::storage::{RoomLease, RoomStore, StorageError};

/// Rounds of read-then-write a placement tries before giving up: each lost round means another
/// instance placed the room in between, which settles within a round or two.
const PLACEMENT_ROUNDS: usize = 8;

impl From<RoomLeaseDoc> for RoomLease {
    fn from(doc: RoomLeaseDoc) -> Self {
        Self { room: doc.room, owner: doc.owner, address: doc.address, token: doc.token, expires_at_ms: doc.expires_at }
    }
}

impl RoomLeaseDoc {
    fn new(lease: &RoomLease, epoch: i64) -> Self {
        Self {
            key: format!("{}#{epoch}", lease.room),
            room: lease.room.clone(),
            epoch,
            owner: lease.owner.clone(),
            address: lease.address.clone(),
            token: lease.token.clone(),
            expires_at: lease.expires_at_ms,
        }
    }
}

impl MongoChat {
    /// The room's current placement: its highest epoch, expired or not.
    async fn current_lease(&self, room: &str) -> Result<Option<RoomLeaseDoc>, mongodb::error::Error> {
        self.inner.room_leases.find_one(doc! {"room": room}).sort(doc! {"epoch": -1}).await
    }
}

#[async_trait]
impl RoomStore for MongoChat {
    async fn create_room(&self, name: String, now_ms: i64) -> Result<bool, StorageError> {
        let room = RoomDoc { name, created_at: DateTime::from_millis(now_ms) };
        self.timed(insert_new(&self.inner.rooms, room)).await
    }

    async fn delete_room(&self, name: String) -> Result<bool, StorageError> {
        self.timed(async { Ok(self.inner.rooms.delete_one(doc! {"_id": name}).await?.deleted_count == 1) }).await
    }

    async fn room_exists(&self, name: String) -> Result<bool, StorageError> {
        self.timed(async { Ok(self.inner.rooms.find_one(doc! {"_id": name}).await?.is_some()) }).await
    }

    async fn rooms(&self) -> Result<Vec<String>, StorageError> {
        self.timed(async {
            let rooms: Vec<RoomDoc> = self.inner.rooms.find(doc! {}).sort(doc! {"_id": 1}).await?.try_collect().await?;
            Ok(rooms.into_iter().map(|room| room.name).collect())
        })
        .await
    }

    /// Read the room's highest epoch, then one write: the owner of a running lease extends its
    /// own document; anyone else gets the running lease; an expired (or released) epoch is
    /// followed by inserting the next one, which the unique `_id` gives to one placer only. No
    /// document is ever written by two instances, so FerretDB's non-atomic read-then-write
    /// updates cannot undo a takeover.
    async fn place_room(&self, candidate: RoomLease, now_ms: i64) -> Result<RoomLease, StorageError> {
        self.timed(async {
            let leases = &self.inner.room_leases;
            for _ in 0..PLACEMENT_ROUNDS {
                let epoch = match self.current_lease(&candidate.room).await? {
                    Some(running) if running.expires_at > now_ms && running.owner == candidate.owner => {
                        let expires_at = running.expires_at.max(candidate.expires_at_ms);
                        let extended = leases
                            .update_one(
                                doc! {"_id": &running.key, "token": &running.token},
                                doc! {"$set": {"expires_at": expires_at}},
                            )
                            .await?;
                        if extended.matched_count == 1 {
                            return Ok(RoomLease { expires_at_ms: expires_at, ..running.into() });
                        }
                        continue;
                    }
                    Some(running) if running.expires_at > now_ms => return Ok(running.into()),
                    Some(expired) => expired.epoch + 1,
                    None => 1,
                };
                if insert_new(leases, RoomLeaseDoc::new(&candidate, epoch)).await? {
                    // The epochs before are history: tidy them (never the current one).
                    if let Err(error) =
                        leases.delete_many(doc! {"room": &candidate.room, "epoch": {"$lt": epoch}}).await
                    {
                        tracing::debug!(%error, room = %candidate.room, "could not tidy a room's old placements");
                    }
                    return Ok(candidate);
                }
                // Another placer took this epoch: the next round finds its lease.
            }
            Err(StorageError::Remote(format!("placing room {} lost {PLACEMENT_ROUNDS} races in a row", candidate.room)))
        })
        .await
    }

    /// Extends the lease if it is still the room's current placement (a later epoch means it
    /// was taken over, even if the write to the old document went through).
    async fn renew_room(&self, room: String, token: String, expires_at_ms: i64) -> Result<bool, StorageError> {
        self.timed(async {
            let renewed = self
                .inner
                .room_leases
                .update_one(doc! {"room": &room, "token": &token}, doc! {"$set": {"expires_at": expires_at_ms}})
                .await?;
            if renewed.matched_count != 1 {
                return Ok(false);
            }
            Ok(self.current_lease(&room).await?.is_some_and(|current| current.token == token))
        })
        .await
    }

    /// Expires the lease now; the document stays as the room's latest epoch, so the next
    /// placement takes the epoch after it and no key is ever used twice.
    async fn release_room(&self, room: String, token: String) -> Result<(), StorageError> {
        self.timed(async {
            self.inner
                .room_leases
                .update_one(doc! {"room": room, "token": token}, doc! {"$set": {"expires_at": 0_i64}})
                .await?;
            Ok(())
        })
        .await
    }

    async fn room_leases(&self, now_ms: i64) -> Result<Vec<RoomLease>, StorageError> {
        self.timed(async {
            let leases: Vec<RoomLeaseDoc> = self
                .inner
                .room_leases
                .find(doc! {"expires_at": {"$gt": now_ms}})
                .sort(doc! {"room": 1, "epoch": -1})
                .await?
                .try_collect()
                .await?;
            // A room's highest running epoch is its placement.
            let mut current: Vec<RoomLease> = Vec::with_capacity(leases.len());
            for lease in leases {
                if current.last().is_none_or(|last| last.room != lease.room) {
                    current.push(lease.into());
                }
            }
            Ok(current)
        })
        .await
    }
}
