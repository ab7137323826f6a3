//! The SFU's operator rooms.

use async_trait::async_trait;
use rusqlite::params;

use super::chat::{exists, SqliteChat};
use crate::storage::{RoomStore, StorageError};

#[async_trait]
impl RoomStore for SqliteChat {
    async fn create_room(&self, name: String, now_ms: i64) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| {
                let inserted = connection.execute(
                    "INSERT INTO rooms (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![name, now_ms],
                )?;
                Ok(inserted == 1)
            })
            .await
    }

    async fn delete_room(&self, name: String) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| Ok(connection.execute("DELETE FROM rooms WHERE name = ?1", [&name])? == 1))
            .await
    }

    async fn room_exists(&self, name: String) -> Result<bool, StorageError> {
        self.db.read(move |connection| Ok(exists(connection, "SELECT 1 FROM rooms WHERE name = ?1", &name)?)).await
    }

    async fn rooms(&self) -> Result<Vec<String>, StorageError> {
        self.db
            .read(|connection| {
                let mut statement = connection.prepare_cached("SELECT name FROM rooms ORDER BY name")?;
                let names = statement.query_map([], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?;
                Ok(names)
            })
            .await
    }
}
