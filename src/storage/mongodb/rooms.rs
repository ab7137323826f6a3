//! The SFU's operator rooms.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, DateTime};

use super::documents::RoomDoc;
use super::{insert_new, MongoChat};
use crate::storage::{RoomStore, StorageError};

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
}
