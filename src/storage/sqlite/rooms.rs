//! The SFU's operator rooms.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension as _};

use super::chat::{exists, SqliteChat};
use crate::storage::{RoomLease, RoomStore, StorageError};

fn lease_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<RoomLease> {
    Ok(RoomLease {
        room: row.get(0)?,
        owner: row.get(1)?,
        address: row.get(2)?,
        token: row.get(3)?,
        expires_at_ms: row.get(4)?,
    })
}

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

    async fn place_room(&self, candidate: RoomLease, now_ms: i64) -> Result<RoomLease, StorageError> {
        self.db
            .write(move |connection| {
                // One writer thread and one transaction: nobody places in between.
                let transaction = connection.transaction()?;
                let running = transaction
                    .query_row(
                        "SELECT room, owner, address, token, expires_at FROM room_leases WHERE room = ?1",
                        [&candidate.room],
                        lease_of,
                    )
                    .optional()?;
                let lease = match running {
                    Some(mut running) if running.expires_at_ms > now_ms => {
                        if running.owner == candidate.owner {
                            running.expires_at_ms = running.expires_at_ms.max(candidate.expires_at_ms);
                            transaction.execute(
                                "UPDATE room_leases SET expires_at = ?2 WHERE room = ?1",
                                params![running.room, running.expires_at_ms],
                            )?;
                        }
                        running
                    }
                    _ => {
                        transaction.execute(
                            "INSERT OR REPLACE INTO room_leases (room, owner, address, token, expires_at)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![
                                candidate.room,
                                candidate.owner,
                                candidate.address,
                                candidate.token,
                                candidate.expires_at_ms
                            ],
                        )?;
                        candidate
                    }
                };
                transaction.commit()?;
                Ok(lease)
            })
            .await
    }

    async fn renew_room(&self, room: String, token: String, expires_at_ms: i64) -> Result<bool, StorageError> {
        self.db
            .write(move |connection| {
                let changed = connection.execute(
                    "UPDATE room_leases SET expires_at = ?3 WHERE room = ?1 AND token = ?2",
                    params![room, token, expires_at_ms],
                )?;
                Ok(changed == 1)
            })
            .await
    }

    async fn release_room(&self, room: String, token: String) -> Result<(), StorageError> {
        self.db
            .write(move |connection| {
                connection.execute("DELETE FROM room_leases WHERE room = ?1 AND token = ?2", params![room, token])?;
                Ok(())
            })
            .await
    }

    async fn room_leases(&self, now_ms: i64) -> Result<Vec<RoomLease>, StorageError> {
        self.db
            .read(move |connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT room, owner, address, token, expires_at FROM room_leases WHERE expires_at > ?1 ORDER BY room",
                )?;
                let leases = statement.query_map([now_ms], lease_of)?.collect::<Result<Vec<_>, _>>()?;
                Ok(leases)
            })
            .await
    }
}
