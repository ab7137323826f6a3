//! `Db`: one SQLite database file served by a dedicated writer thread and a small reader pool.
//!
//! Owns: the connections and the threads that use them. Callers hand in closures and await the
//! result; no SQLite call ever runs on an actix arbiter thread.
//!
//! Must never: let a panic in a job kill its thread (it is contained, reported as a crash record
//! and returned as `StorageError::Panicked`), or hold a job while its caller has gone away
//! (the reply is simply dropped).
//!
//! Lifecycle: the threads end when the last `Db` clone is dropped (their job channels close).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::StorageError;
use crate::supervision::contain;

type Job = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

/// How long a connection waits on a lock held by another connection before `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache per connection.
const CACHE_KIB: i64 = 32 * 1024;
/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// A database file. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Name used in logs and crash records (`storage.writer`, `search.writer`, ...).
    name: &'static str,
    writer: Sender<Job>,
    readers: Sender<Job>,
    /// Never sent on; dropping it (with the last `Db` clone) ends the checkpointer.
    _checkpoint_stop: Sender<()>,
}

impl Db {
    /// Opens (creating if needed) `path`, applies `migrations` (each one a batch of SQL run once,
    /// in order, tracked with `PRAGMA user_version`) and starts `readers` reader threads.
    pub fn open(name: &'static str, path: &Path, migrations: &[&str], readers: usize) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| StorageError::Open(format!("{}: {error}", parent.display())))?;
        }
        let mut writer = open_connection(path, false)?;
        migrate(&mut writer, migrations)?;
        // Checkpoints (copying the WAL into the database file) run on their own thread, so the
        // writer spends its time on commits; the writer no longer checkpoints by itself.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (checkpoint_stop, checkpoint_stopped) = crossbeam_channel::bounded::<()>(0);
        start_checkpointer(name, open_connection(path, false)?, checkpoint_stopped)?;
        let (writer_tx, writer_rx) = crossbeam_channel::unbounded::<Job>();
        start_thread(format!("{name}.writer"), name, writer, writer_rx)?;
        let (readers_tx, readers_rx) = crossbeam_channel::unbounded::<Job>();
        for index in 0..readers.max(1) {
            let connection = open_connection(path, true)?;
            start_thread(format!("{name}.reader.{index}"), name, connection, readers_rx.clone())?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                name,
                writer: writer_tx,
                readers: readers_tx,
                _checkpoint_stop: checkpoint_stop,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `job` on the writer thread (the only connection that writes).
    pub async fn write<T, F>(&self, job: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        self.run(&self.inner.writer, job).await
    }

    /// Runs `job` on one of the reader threads (read-only connections).
    pub async fn read<T, F>(&self, job: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        self.run(&self.inner.readers, job).await
    }

    async fn run<T, F>(&self, queue: &Sender<Job>, job: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let name = self.inner.name;
        let boxed: Job = Box::new(move |connection| {
            let outcome = match contain(|| job(connection)) {
                Ok(result) => result,
                Err(panic) => {
                    crate::tasks::task_panicked(name, &panic);
                    Err(StorageError::Panicked(panic.message))
                }
            };
            // The caller may have timed out and gone; then nobody wants the result.
            let _ = reply_tx.send(outcome);
        });
        queue.send(boxed).map_err(|_| StorageError::Closed)?;
        reply_rx.await.map_err(|_| StorageError::Closed)?
    }
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StorageError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    if !read_only {
        // WAL: readers never block the writer. synchronous=FULL: every commit is fsynced to the
        // WAL before it returns, so an ack survives power loss, not only a process crash.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
    }
    // Negative: KiB. Index pages of recent rows stay hot.
    connection.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(connection)
}

fn migrate(connection: &mut Connection, migrations: &[&str]) -> Result<(), StorageError> {
    let current: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = migrations.len() as i64;
    if current > known {
        return Err(StorageError::Open(format!(
            "database schema version {current} is newer than this binary knows ({known}); refusing to run an older rampart on it"
        )));
    }
    for (index, sql) in migrations.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", version)?;
        transaction.commit()?;
        tracing::info!(version, "database migrated");
    }
    Ok(())
}

fn start_thread(
    thread_name: String,
    name: &'static str,
    mut connection: Connection,
    jobs: Receiver<Job>,
) -> Result<(), StorageError> {
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            for job in jobs {
                job(&mut connection);
            }
            tracing::debug!(db = name, "database thread stopped");
        })
        .map(drop)
        .map_err(|error| StorageError::Open(format!("starting a {name} thread: {error}")))
}

/// Runs a passive checkpoint every `CHECKPOINT_INTERVAL` until the `Db` is dropped. Passive: it
/// never blocks the writer or readers; what it cannot copy now it copies next time.
fn start_checkpointer(name: &'static str, connection: Connection, stop: Receiver<()>) -> Result<(), StorageError> {
    std::thread::Builder::new()
        .name(format!("{name}.checkpoint"))
        .spawn(move || loop {
            if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
                return;
            }
            let checkpoint = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0));
            if let Err(error) = checkpoint {
                tracing::warn!(db = name, %error, "WAL checkpoint failed; retrying");
            }
        })
        .map(drop)
        .map_err(|error| StorageError::Open(format!("starting the {name} checkpointer: {error}")))
}
