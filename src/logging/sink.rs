//! Where log lines end up: stdout and, when `log.file` is set, a size-rotated file.
//!
//! Owns: the open file, its size, rotation (`app.log` → `app.log.1` → … → `app.log.<keep>`), and
//! recovery from a failing destination. A destination that fails (disk full, stdout closed) is
//! skipped and reopened after a growing pause (1 s doubling to 30 s), so one broken destination
//! never stops the other and never turns into a restart loop. Failures are counted in
//! `rampart_log_sink_errors_total{sink}` and reported once per failure streak on stderr.
//!
//! Blocking I/O: only ever called on the log writer's own arbiter thread (or at process exit).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::LogConfig;
use crate::telemetry::{metrics, SinkLabels};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Pause-and-retry state of one destination.
#[derive(Debug, Default)]
struct Health {
    retry_at: Option<Instant>,
    pause: Duration,
}

impl Health {
    fn usable(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    /// Records a failure; returns true when it starts a new failure streak (worth reporting).
    fn failed(&mut self, now: Instant) -> bool {
        let first = self.retry_at.is_none();
        self.pause = if first { FIRST_RETRY } else { (self.pause * 2).min(MAX_RETRY) };
        self.retry_at = Some(now + self.pause);
        first
    }

    fn succeeded(&mut self) {
        self.retry_at = None;
        self.pause = Duration::ZERO;
    }
}

/// stdout plus the optional rotated file.
pub struct LogSink {
    stdout: io::Stdout,
    stdout_health: Health,
    file: Option<RotatingFile>,
    file_health: Health,
}

impl LogSink {
    /// Opens the destinations `config` names. A file that cannot be opened now is retried later.
    pub fn open(config: &LogConfig) -> Self {
        let file = config
            .file
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty())
            .map(|path| RotatingFile::new(path.clone(), config.max_bytes, config.keep));
        Self { stdout: io::stdout(), stdout_health: Health::default(), file, file_health: Health::default() }
    }

    /// Writes a batch of whole lines to every usable destination; returns false if any failed.
    pub fn write_batch(&mut self, batch: &[u8]) -> bool {
        let now = Instant::now();
        let mut ok = true;
        if self.stdout_health.usable(now) {
            let mut out = self.stdout.lock();
            match out.write_all(batch).and_then(|()| out.flush()) {
                Ok(()) => self.stdout_health.succeeded(),
                Err(error) => {
                    ok = false;
                    report_failure("stdout", &error, self.stdout_health.failed(now));
                }
            }
        }
        if let Some(file) = self.file.as_mut() {
            if self.file_health.usable(now) {
                match file.write_lines(batch) {
                    Ok(()) => self.file_health.succeeded(),
                    Err(error) => {
                        ok = false;
                        file.close();
                        report_failure("file", &error, self.file_health.failed(now));
                    }
                }
            }
        }
        ok
    }

    pub fn flush(&mut self) {
        let _ = self.stdout.lock().flush();
        if let Some(file) = self.file.as_mut() {
            let _ = file.flush();
        }
    }
}

fn report_failure(sink: &'static str, error: &io::Error, first_of_streak: bool) {
    metrics().log_sink_errors.get_or_create(&SinkLabels { sink: sink.into() }).inc();
    if first_of_streak {
        // Not through `tracing`: the log path is what is failing. stderr is the last resort.
        let _ = writeln!(io::stderr(), "rampart: log {sink} failed ({error}); retrying with backoff");
    }
}

/// An append-only file rotated by size: when the next line would take it past `max_bytes`, the
/// file is renamed to `<name>.1` (older ones shift up, beyond `keep` they are deleted) and a new
/// one is started.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> Self {
        Self { path, max_bytes: max_bytes.max(1), keep, file: None, size: 0 }
    }

    fn ensure_open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(parent) = self.path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        // Just ensured.
        self.file.as_mut().ok_or_else(|| io::Error::other("log file not open"))
    }

    /// Appends whole lines, rotating between lines when the size limit would be crossed.
    pub fn write_lines(&mut self, batch: &[u8]) -> io::Result<()> {
        let mut rest = batch;
        while !rest.is_empty() {
            self.ensure_open()?;
            let room = self.max_bytes.saturating_sub(self.size);
            let chunk = fitting_prefix(rest, room);
            let chunk = if chunk.is_empty() {
                if self.size > 0 {
                    self.rotate()?;
                    continue;
                }
                // A single line longer than max_bytes in an empty file: write it whole.
                first_line(rest)
            } else {
                chunk
            };
            self.ensure_open()?.write_all(chunk)?;
            self.size += chunk.len() as u64;
            rest = &rest[chunk.len()..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush()?;
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                rename_if_exists(&numbered(&self.path, n), &numbered(&self.path, n + 1))?;
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        self.size = 0;
        Ok(())
    }

    fn close(&mut self) {
        self.file = None;
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

/// The longest run of whole lines at the start of `batch` that fits in `room` bytes.
fn fitting_prefix(batch: &[u8], room: u64) -> &[u8] {
    let mut end = 0;
    for (index, byte) in batch.iter().enumerate() {
        if *byte == b'\n' {
            if (index + 1) as u64 > room {
                break;
            }
            end = index + 1;
        }
    }
    if end == 0 && batch.last() != Some(&b'\n') && batch.len() as u64 <= room {
        return batch; // an unterminated tail that fits
    }
    &batch[..end]
}

fn first_line(batch: &[u8]) -> &[u8] {
    batch.iter().position(|byte| *byte == b'\n').map_or(batch, |end| &batch[..=end])
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn rotates_between_lines_and_keeps_the_configured_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("rampart.log");
        let mut file = RotatingFile::new(path.clone(), 10, 2);
        for line in ["aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n"] {
            file.write_lines(line.as_bytes()).unwrap();
        }
        file.flush().unwrap();
        assert_eq!(read(&path), "eeee\n");
        assert_eq!(read(&numbered(&path, 1)), "cccc\ndddd\n");
        assert_eq!(read(&numbered(&path, 2)), "aaaa\nbbbb\n");
        assert!(!numbered(&path, 3).exists(), "only `keep` rotated files remain");
    }

    #[test]
    fn a_batch_is_split_at_line_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.log");
        let mut file = RotatingFile::new(path.clone(), 12, 1);
        file.write_lines(b"one\ntwo\nthree\nfour\n").unwrap();
        file.flush().unwrap();
        assert_eq!(read(&numbered(&path, 1)), "one\ntwo\n");
        assert_eq!(read(&path), "three\nfour\n");
    }

    #[test]
    fn an_oversized_line_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.log");
        let mut file = RotatingFile::new(path.clone(), 4, 1);
        file.write_lines(b"0123456789\nab\n").unwrap();
        file.flush().unwrap();
        assert_eq!(read(&numbered(&path, 1)), "0123456789\n");
        assert_eq!(read(&path), "ab\n");
    }

    #[test]
    fn a_failing_file_is_retried_after_a_growing_pause() {
        let mut health = Health::default();
        let now = Instant::now();
        assert!(health.failed(now), "first failure starts a streak");
        assert!(!health.usable(now));
        assert!(health.usable(now + FIRST_RETRY));
        assert!(!health.failed(now), "second failure continues it");
        assert_eq!(health.pause, FIRST_RETRY * 2);
        health.succeeded();
        assert!(health.usable(now));
    }
}
