//! The SFU's operator rooms.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, DateTime};

use super::documents::{RoomDoc, RoomLeaseDoc};
use super::{insert_new, MongoChat};
use crate::storage::{RoomLease, RoomStore, StorageError};

/// Rounds of read-then-write a placement tries before giving up: each lost round means another
/// instance changed the lease in between, which settles within a round or two.
const PLACEMENT_ROUNDS: usize = 8;

impl From<RoomLeaseDoc> for RoomLease {
    fn from(doc: RoomLeaseDoc) -> Self {
        Self { room: doc.room, owner: doc.owner, address: doc.address, token: doc.token, expires_at_ms: doc.expires_at }
    }
}

impl From<&RoomLease> for RoomLeaseDoc {
    fn from(lease: &RoomLease) -> Self {
        Self {
            room: lease.room.clone(),
            owner: lease.owner.clone(),
            address: lease.address.clone(),
            token: lease.token.clone(),
            expires_at: lease.expires_at_ms,
        }
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

    /// Read, then one conditional write; a write that loses to another instance starts over.
    /// The unique `_id` decides every race: a free room goes to the first insert, an expired
    /// lease to the first delete that names its token (then the first insert).
    async fn place_room(&self, candidate: RoomLease, now_ms: i64) -> Result<RoomLease, StorageError> {
        self.timed(async {
            let leases = &self.inner.room_leases;
            for _ in 0..PLACEMENT_ROUNDS {
                match leases.find_one(doc! {"_id": &candidate.room}).await? {
                    None => {
                        if insert_new(leases, RoomLeaseDoc::from(&candidate)).await? {
                            return Ok(candidate);
                        }
                    }
                    Some(running) if running.expires_at > now_ms && running.owner == candidate.owner => {
                        let expires_at = running.expires_at.max(candidate.expires_at_ms);
                        let extended = leases
                            .update_one(
                                doc! {"_id": &running.room, "token": &running.token},
                                doc! {"$set": {"expires_at": expires_at}},
                            )
                            .await?;
                        if extended.matched_count == 1 {
                            return Ok(RoomLease { expires_at_ms: expires_at, ..running.into() });
                        }
                    }
                    Some(running) if running.expires_at > now_ms => return Ok(running.into()),
                    Some(expired) => {
                        leases
                            .delete_one(
                                doc! {"_id": &expired.room, "token": &expired.token, "expires_at": {"$lte": now_ms}},
                            )
                            .await?;
                        // Deleted by this instance or another: the next round inserts or finds.
                    }
                }
            }
            Err(StorageError::Remote(format!("placing room {} lost {PLACEMENT_ROUNDS} races in a row", candidate.room)))
        })
        .await
    }

    async fn renew_room(&self, room: String, token: String, expires_at_ms: i64) -> Result<bool, StorageError> {
        self.timed(async {
            let renewed = self
                .inner
                .room_leases
                .update_one(doc! {"_id": room, "token": token}, doc! {"$set": {"expires_at": expires_at_ms}})
                .await?;
            Ok(renewed.matched_count == 1)
        })
        .await
    }

    async fn release_room(&self, room: String, token: String) -> Result<(), StorageError> {
        self.timed(async {
            self.inner.room_leases.delete_one(doc! {"_id": room, "token": token}).await?;
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
                .sort(doc! {"_id": 1})
                .await?
                .try_collect()
                .await?;
            Ok(leases.into_iter().map(RoomLease::from).collect())
        })
        .await
    }
}
