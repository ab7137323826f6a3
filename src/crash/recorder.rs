//! The crash recorder actor and the index it maintains.
//!
//! Owns: `<data_dir>/crashes/` (one JSON file per crash, at most `crash.keep`, oldest pruned) and
//! the in-memory index of the same records (`CrashStore`), loaded from those files at start so
//! crashes survive a restart of the process. Restart type: permanent, on its own arbiter thread;
//! symbolizing a backtrace and writing files happen on the blocking pool, one record at a time. State lost on a restart: nothing — the
//! queue and the store outlive the actor; the record being written when it panicked is lost.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::{queue, CrashRecord};

/// A crash as stored on disk and served by `/admin/crashes/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredCrash {
    pub id: String,
    /// RFC 3339.
    pub at: String,
    /// `actor`, `http`, `task` or `thread`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handling: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub message: String,
    pub location: Option<String>,
    pub thread: Option<String>,
    pub backtrace: String,
    pub recent_actions: serde_json::Value,
}

impl StoredCrash {
    fn render(record: &CrashRecord) -> Self {
        Self {
            id: record.id.clone(),
            at: crate::rfc3339::format(record.at),
            source: format!("{:?}", record.source),
            actor: record.actor.clone(),
            route: record.route.clone(),
            method: record.method.clone(),
            task: record.task.clone(),
            handling: record.handling.clone(),
            request_id: record.request_id.clone(),
            trace_id: record.trace_id.clone(),
            message: record.message.clone(),
            location: record.location.clone(),
            thread: record.thread.clone(),
            // Symbolizing happens here, on the recorder's thread, never in the panic hook.
            backtrace: record.backtrace.to_string(),
            recent_actions: serde_json::to_value(&*record.recent_actions).unwrap_or_default(),
        }
    }

    /// The listing form: what happened where, without backtrace and actions.
    pub fn summary(&self) -> serde_json::Value {
        let mut summary = serde_json::json!({
            "id": self.id,
            "at": self.at,
            "source": self.source,
            "message": self.message,
            "location": self.location,
        });
        for (key, value) in [("actor", &self.actor), ("route", &self.route), ("task", &self.task)] {
            if let Some(value) = value {
                summary[key] = serde_json::Value::String(value.clone());
            }
        }
        summary
    }
}

/// The newest `keep` crashes, newest last. Read by the admin API, written by the recorder.
pub struct CrashStore {
    keep: usize,
    crashes: RwLock<VecDeque<Arc<StoredCrash>>>,
}

impl CrashStore {
    pub fn new(keep: usize) -> Arc<Self> {
        Arc::new(Self { keep: keep.max(1), crashes: RwLock::new(VecDeque::new()) })
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Arc<StoredCrash>> {
        self.crashes.read().iter().rev().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<StoredCrash>> {
        self.crashes.read().iter().find(|crash| crash.id == id).cloned()
    }

    fn push(&self, crash: StoredCrash) {
        let mut crashes = self.crashes.write();
        crashes.push_back(Arc::new(crash));
        while crashes.len() > self.keep {
            crashes.pop_front();
        }
    }

    fn replace_all(&self, mut loaded: Vec<StoredCrash>) {
        // UUIDv7 ids sort by time.
        loaded.sort_by(|a, b| a.id.cmp(&b.id));
        let skip = loaded.len().saturating_sub(self.keep);
        *self.crashes.write() = loaded.into_iter().skip(skip).map(Arc::new).collect();
    }
}

pub struct CrashRecorder {
    store: Arc<CrashStore>,
    dir: PathBuf,
    /// A record is being written on the blocking pool.
    writing: bool,
}

impl CrashRecorder {
    /// Records go to `<data_dir>/crashes`.
    pub fn new(store: Arc<CrashStore>, data_dir: &Path) -> Self {
        Self { store, dir: data_dir.join("crashes"), writing: false }
    }

    fn load(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let loaded = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "json"))
            .filter_map(|entry| {
                let text = std::fs::read(entry.path()).ok()?;
                match serde_json::from_slice::<StoredCrash>(&text) {
                    Ok(crash) => Some(crash),
                    Err(error) => {
                        tracing::warn!(file = %entry.path().display(), %error, "unreadable crash record skipped");
                        None
                    }
                }
            })
            .collect();
        self.store.replace_all(loaded);
    }

    /// Renders, writes and indexes one record, here and now (the actor does the first two on
    /// the blocking pool: see [`CrashRecorder::drain`]).
    #[cfg(test)]
    fn record(&mut self, record: &CrashRecord) {
        let (crash, written) = write(&self.dir, self.store.keep, record);
        self.stored(crash, written);
    }

    fn stored(&self, crash: StoredCrash, written: std::io::Result<()>) {
        if let Err(error) = written {
            tracing::error!(dir = %self.dir.display(), %error, crash_id = %crash.id, "could not write crash record; kept in memory only");
        }
        crate::telemetry::metrics().crash_records.inc();
        tracing::info!(crash_id = %crash.id, source = %crash.source, "crash record written");
        self.store.push(crash);
    }

    /// Records what is queued, one at a time. Symbolizing a backtrace (the first one parses the
    /// binary's debug info) and fsyncing a file block for milliseconds to seconds; done inside
    /// the actor's poll, a storm of panics on a loaded machine blocked the recorder's thread
    /// past the stall threshold. So that work runs on the runtime's blocking pool and the actor
    /// waits for it without blocking its thread (its mailbox waits too: records stay in order
    /// and shutdown finishes the record in flight).
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.writing {
            return;
        }
        let Some(record) = queue().try_pop() else { return };
        self.writing = true;
        let (dir, keep) = (self.dir.clone(), self.store.keep);
        let work = tokio::task::spawn_blocking(move || write(&dir, keep, &record));
        ctx.wait(work.into_actor(self).map(|outcome, recorder, ctx| {
            recorder.writing = false;
            match outcome {
                Ok((crash, written)) => recorder.stored(crash, written),
                // The panic was reported by the hook (source `thread`); let the supervisor
                // restart the recorder as for any panic of its own.
                Err(error) => match error.try_into_panic() {
                    Ok(payload) => std::panic::resume_unwind(payload),
                    Err(error) => tracing::error!(%error, "crash record lost: its writer was cancelled"),
                },
            }
            recorder.drain(ctx);
        }));
    }
}

/// Renders `record` (symbolizing its backtrace) and writes it under `dir`, keeping `keep` files.
fn write(dir: &Path, keep: usize, record: &CrashRecord) -> (StoredCrash, std::io::Result<()>) {
    let crash = StoredCrash::render(record);
    let written = persist(dir, keep, &crash);
    (crash, written)
}

fn persist(dir: &Path, keep: usize, crash: &StoredCrash) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.json", crash.id));
    let temporary = dir.join(format!(".{}.json.tmp", crash.id));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&serde_json::to_vec_pretty(crash).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    prune(dir, keep)
}

fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| name.to_str().is_some_and(|name| name.ends_with(".json") && !name.starts_with('.')))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in &names[..excess] {
        std::fs::remove_file(dir.join(name))?;
    }
    Ok(())
}

impl Actor for CrashRecorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.load();
        ctx.add_stream(queue().wakeups());
        self.drain(ctx);
    }
}

impl StreamHandler<()> for CrashRecorder {
    fn handle(&mut self, (): (), ctx: &mut Self::Context) {
        self.drain(ctx);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::CapturedPanic;
    use crate::telemetry::PanicSource;

    #[test]
    fn records_are_written_pruned_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = CrashStore::new(2);
        let mut recorder = CrashRecorder::new(store.clone(), dir.path());
        let mut ids = Vec::new();
        for n in 0..3 {
            let mut record = CrashRecord::new(PanicSource::task, &CapturedPanic::without_panic(format!("crash {n}")));
            record.task = Some("test".into());
            ids.push(record.id.clone());
            recorder.record(&record);
        }
        let listed: Vec<_> = store.list().iter().map(|crash| crash.id.clone()).collect();
        assert_eq!(listed, [ids[2].clone(), ids[1].clone()], "newest first, at most keep");
        let files = std::fs::read_dir(dir.path().join("crashes")).unwrap().count();
        assert_eq!(files, 2, "oldest file pruned");

        let reloaded = CrashStore::new(2);
        CrashRecorder::new(reloaded.clone(), dir.path()).load();
        assert_eq!(reloaded.get(&ids[2]).unwrap().message, "crash 2");
        assert!(reloaded.get(&ids[0]).is_none());
        assert_eq!(reloaded.get(&ids[1]).unwrap().summary()["task"], "test");
    }
}
