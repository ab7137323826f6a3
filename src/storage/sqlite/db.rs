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

use super::faults::Faults;
use crate::storage::StorageError;
use crate::supervision::contain;

type Job = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

/// How long a connection waits on a lock held by another connection before `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache per connection.
const CACHE_KIB: i64 = 32 * 1024;
/// How often the checkpointer looks at the WAL (a `stat`) and copies committed frames into the
/// database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// Longest a blocking checkpoint waits for readers to move to the newest snapshot (writers wait
/// meanwhile); past it, the checkpoint gives up and is tried again next interval.
const CHECKPOINT_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// How the WAL of a database is kept bounded.
///
/// Passive checkpoints (every `CHECKPOINT_INTERVAL`, never blocking anyone) copy frames into the
/// database file but cannot restart the log while reads and writes keep coming, so under
/// sustained load the WAL grew without bound (2 GiB in 20 s, measured). So: once the WAL passes
/// `checkpoint_bytes`, a RESTART checkpoint (writers wait while it copies the rest and until
/// readers are off the old frames, at most `CHECKPOINT_BUSY_TIMEOUT`) makes the next commit write
/// from the start of the file; `journal_size_limit` then truncates the file to `size_limit_bytes`;
/// and when the database has been idle for an interval the WAL is truncated to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPolicy {
    pub checkpoint_bytes: u64,
    pub size_limit_bytes: u64,
}

impl Default for WalPolicy {
    fn default() -> Self {
        Self { checkpoint_bytes: 16 << 20, size_limit_bytes: 64 << 20 }
    }
}

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
    /// Injected faults (`POST /admin/chaos/storage`).
    faults: Arc<Faults>,
}

impl Db {
    /// Opens (creating if needed) `path`, applies `migrations` (each one a batch of SQL run once,
    /// in order, tracked with `PRAGMA user_version`) and starts `readers` reader threads.
    pub fn open(
        name: &'static str,
        path: &Path,
        migrations: &[&str],
        readers: usize,
        wal: WalPolicy,
    ) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| StorageError::Open(format!("{}: {error}", parent.display())))?;
        }
        let mut writer = open_connection(path, false)?;
        migrate(&mut writer, migrations)?;
        // Write jobs often read before they write (in one transaction): take the write lock at
        // BEGIN, waiting on the busy handler, so no checkpoint can restart the log in between
        // (that made the first write fail at once with "database is locked").
        writer.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        // Checkpoints (copying the WAL into the database file) run on their own thread, so the
        // writer spends its time on commits; the writer no longer checkpoints by itself.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        // After a checkpoint restarted the log, the next commit truncates the file to this.
        writer.pragma_update(None, "journal_size_limit", i64::try_from(wal.size_limit_bytes).unwrap_or(i64::MAX))?;
        let (checkpoint_stop, checkpoint_stopped) = crossbeam_channel::bounded::<()>(0);
        let checkpointer = open_connection(path, false)?;
        checkpointer.busy_timeout(CHECKPOINT_BUSY_TIMEOUT)?;
        checkpointer.pragma_update(
            None,
            "journal_size_limit",
            i64::try_from(wal.size_limit_bytes).unwrap_or(i64::MAX),
        )?;
        let wal_path = wal_path(path);
        start_checkpointer(name, checkpointer, wal_path, wal, checkpoint_stopped)?;
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
                faults: Arc::default(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.inner.faults
    }

    /// Runs `job` on the writer thread (the only connection that writes).
    pub async fn write<T, F>(&self, job: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let faults = self.inner.faults.clone();
        self.run(&self.inner.writer, move |connection| {
            // An injected slow disk: the writer thread is busy for this long, as with a real one.
            let delay = faults.delay();
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            job(connection)
        })
        .await
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
            // The caller timed out and gave up (its sender was told `unavailable`): do not
            // spend the thread on work nobody waits for. Behind a slow disk such jobs would
            // otherwise pile up and keep the queue long after the disk recovered.
            if reply_tx.is_closed() {
                crate::telemetry::metrics().storage_jobs_abandoned.inc();
                return;
            }
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

/// `<db>-wal`, where SQLite keeps the write-ahead log.
fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// What the checkpointer does at one tick, given the WAL's size now and at the previous tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checkpoint {
    /// Copy what it can; blocks nobody.
    Passive,
    /// The log is large: copy everything and restart it (writers wait, bounded).
    Restart,
    /// Nothing was written since the last tick and a WAL is left: empty the file.
    Truncate,
}

fn choose_checkpoint(size: u64, previous: u64, policy: WalPolicy) -> Checkpoint {
    if size > 0 && size == previous {
        // Idle first: a restarted log keeps its size until the next commit, so a large idle WAL
        // would otherwise be restarted over and over and never shrink.
        Checkpoint::Truncate
    } else if size >= policy.checkpoint_bytes {
        Checkpoint::Restart
    } else {
        Checkpoint::Passive
    }
}

/// Keeps the WAL bounded (see [`WalPolicy`]) until the `Db` is dropped, and reports its size in
/// `rampart_sqlite_wal_bytes{db}` and the time writers waited in blocking checkpoints in
/// `rampart_sqlite_checkpoint_seconds{db}`.
fn start_checkpointer(
    name: &'static str,
    connection: Connection,
    wal: PathBuf,
    policy: WalPolicy,
    stop: Receiver<()>,
) -> Result<(), StorageError> {
    let metrics = crate::telemetry::metrics();
    let labels = crate::telemetry::DbLabels { db: name.to_owned() };
    std::thread::Builder::new()
        .name(format!("{name}.checkpoint"))
        .spawn(move || {
            let mut previous = 0;
            loop {
                if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
                    return;
                }
                let size = std::fs::metadata(&wal).map_or(0, |metadata| metadata.len());
                let mode = choose_checkpoint(size, previous, policy);
                let sql = match mode {
                    Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
                    Checkpoint::Restart => "PRAGMA wal_checkpoint(RESTART)",
                    Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
                };
                let started = std::time::Instant::now();
                let outcome = connection.query_row(sql, [], |row| row.get::<_, i64>(0));
                if mode != Checkpoint::Passive {
                    metrics.checkpoint_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                }
                match outcome {
                    // 1: busy (a reader kept an old snapshot past the busy timeout): next tick.
                    Ok(busy) if busy != 0 && mode == Checkpoint::Restart => {
                        tracing::debug!(db = name, wal_bytes = size, "WAL restart checkpoint busy; retrying");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(db = name, %error, "WAL checkpoint failed; retrying"),
                }
                previous = std::fs::metadata(&wal).map_or(0, |metadata| metadata.len());
                metrics.wal_bytes.get_or_create(&labels).set(i64::try_from(previous).unwrap_or(i64::MAX));
            }
        })
        .map(drop)
        .map_err(|error| StorageError::Open(format!("starting the {name} checkpointer: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_logs_restart_idle_logs_truncate_and_busy_ones_checkpoint_passively() {
        let policy = WalPolicy { checkpoint_bytes: 100, size_limit_bytes: 400 };
        assert_eq!(choose_checkpoint(150, 90, policy), Checkpoint::Restart);
        assert_eq!(choose_checkpoint(100, 0, policy), Checkpoint::Restart);
        assert_eq!(choose_checkpoint(50, 50, policy), Checkpoint::Truncate, "idle since the last tick");
        // Regression: a large idle log was restarted forever and never truncated.
        assert_eq!(choose_checkpoint(150, 150, policy), Checkpoint::Truncate);
        assert_eq!(choose_checkpoint(50, 20, policy), Checkpoint::Passive);
        assert_eq!(choose_checkpoint(0, 0, policy), Checkpoint::Passive, "nothing to truncate");
    }

    /// Regression: write jobs read, then write in one transaction (placing a room, claiming a
    /// delivery). A deferred transaction only takes the write lock at its first write, so a
    /// checkpoint restarting the log in between (the checkpointer truncates an idle WAL every
    /// 200 ms) left it a stale snapshot, and the write failed at once with "database is locked"
    /// (seen under CPU load). The writer's transactions now take the write lock when they begin.
    #[actix_rt::test]
    async fn a_checkpoint_between_a_write_jobs_read_and_its_write_does_not_fail_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let db = Db::open("test", &path, &["CREATE TABLE t (x INTEGER)"], 1, WalPolicy::default()).expect("open");
        db.write(|connection| {
            connection.execute("INSERT INTO t VALUES (1)", [])?;
            // Everything in the database file, as after the checkpointer's passive ticks.
            Ok(connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0)).map(drop)?)
        })
        .await
        .expect("seed");
        let written = db
            .write(move |connection| {
                let transaction = connection.transaction()?;
                let seen: i64 = transaction.query_row("SELECT count(*) FROM t", [], |row| row.get(0))?;
                // What the checkpointer does on an idle tick, from its own connection, with a
                // short wait of its own: it may not get the lock, but it must not break us.
                let checkpointer = open_connection(&path, false)?;
                checkpointer.busy_timeout(Duration::from_millis(50))?;
                let _ = checkpointer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
                transaction.execute("INSERT INTO t VALUES (?1)", [seen + 10])?;
                transaction.commit()?;
                Ok(seen)
            })
            .await;
        assert_eq!(written.expect("the write job commits"), 1);
    }
}
