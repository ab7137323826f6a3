//! Process logging: `tracing` events are formatted on the caller's thread, handed to a bounded
//! non-blocking queue, and written by the supervised log-writer actor (`writer.rs`) to stdout and
//! an optional size-rotated file (`sink.rs`).
//!
//! Owns: the global subscriber, the queue between every thread that logs and the writer, and the
//! count of events dropped because the queue was full.
//!
//! Must never: block or panic the thread that logs. A log call formats into memory and makes one
//! `try_send`; when the queue is full the event is dropped and counted, never waited for. No lock
//! is taken on the logging path, so a panic raised while logging (and the panic hook logging about
//! it) cannot deadlock; `tracing` itself drops events raised re-entrantly from inside this layer.

mod config;
mod sink;
mod writer;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

pub use config::{LogConfig, LogFormat, DEFAULT_LOG_FILTER};
pub use sink::{LogSink, RotatingFile};
pub use writer::LogWriter;

use crate::queue::WakeQueue;

/// The queue between the threads that log and the writer actor. One per process, `'static`
/// so it outlives every writer incarnation.
pub struct LogPipe {
    queue: WakeQueue<Vec<u8>>,
    /// Events dropped because the queue was full.
    dropped: AtomicU64,
    /// `dropped` at the writer's last report, so a restart neither repeats nor skips a report.
    reported: AtomicU64,
}

impl LogPipe {
    pub fn new(capacity: usize) -> Self {
        Self { queue: WakeQueue::new(capacity), dropped: AtomicU64::new(0), reported: AtomicU64::new(0) }
    }

    /// Enqueues one formatted line; never blocks. Returns false (and counts) when it was dropped.
    pub fn push(&self, line: Vec<u8>) -> bool {
        let queued = self.queue.try_push(line);
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::metrics().log_dropped.inc();
        }
        queued
    }

    /// Takes up to `max` queued lines, appending them to `out`; returns how many.
    pub fn drain_into(&self, out: &mut Vec<u8>, max: usize) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(line) = self.queue.try_pop() else { break };
            out.extend_from_slice(&line);
            taken += 1;
        }
        taken
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Total events dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Drops since the previous call, and the total: what the periodic report says.
    pub fn unreported_drops(&self) -> (u64, u64) {
        let total = self.dropped();
        let reported = self.reported.swap(total, Ordering::Relaxed);
        (total.saturating_sub(reported), total)
    }

    pub(crate) fn wakeups(&'static self) -> impl futures_util::Stream<Item = ()> + 'static {
        self.queue.wakeups()
    }
}

/// `MakeWriter` for the fmt layer: each event's formatted text becomes one queued line.
#[derive(Clone)]
pub struct QueueMakeWriter {
    pipe: &'static LogPipe,
}

impl QueueMakeWriter {
    pub fn new(pipe: &'static LogPipe) -> Self {
        Self { pipe }
    }
}

/// Collects one event's text; enqueues it when dropped (the fmt layer writes each event once,
/// but collecting keeps an event whole even if a formatter wrote it in pieces).
pub struct QueueWriter {
    pipe: &'static LogPipe,
    line: Vec<u8>,
}

impl io::Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueueWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.pipe.push(std::mem::take(&mut self.line));
        }
    }
}

impl<'a> MakeWriter<'a> for QueueMakeWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        QueueWriter { pipe: self.pipe, line: Vec::new() }
    }
}

static PIPE: OnceLock<LogPipe> = OnceLock::new();

/// The process's log queue, once [`init`] ran.
pub fn pipe() -> Option<&'static LogPipe> {
    PIPE.get()
}

/// Installs the global subscriber: `log.filter`, `log.format`, events into the log queue. Call
/// once, before anything logs; events queue up until the writer actor starts (see `app::run`).
pub fn init(config: &LogConfig) -> Result<(), String> {
    if PIPE.set(LogPipe::new(config.queue_capacity)).is_err() {
        return Err("logging is already initialized".to_owned());
    }
    let subscriber = subscriber(config, pipe().ok_or("log pipe missing")?)?;
    // `try_init` also routes the `log` crate's records (actix-server's) into the subscriber.
    subscriber.try_init().map_err(|error| error.to_string())
}

/// The subscriber `init` installs, writing into `pipe` (public for the logging benchmark). With
/// the `otel` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set it also exports spans, and JSON lines
/// carry their current span (with its `trace_id`).
pub fn subscriber(config: &LogConfig, pipe: &'static LogPipe) -> Result<Box<dyn Subscriber + Send + Sync>, String> {
    let filter = EnvFilter::try_new(&config.filter).map_err(|error| format!("log.filter: {error}"))?;
    let writer = QueueMakeWriter::new(pipe);
    let registry = tracing_subscriber::registry().with(filter);
    #[cfg(feature = "otel")]
    let registry = {
        let (layer, guard) = crate::telemetry::otel::layer()?.unzip();
        *OTEL_GUARD.lock() = guard;
        registry.with(layer)
    };
    let with_span = crate::telemetry::tracing_exported();
    Ok(if config.format.resolve() == LogFormat::Pretty {
        Box::new(registry.with(tracing_subscriber::fmt::layer().with_writer(writer)))
    } else {
        Box::new(registry.with(json_layer(writer, with_span)))
    })
}

/// The JSON line format: one flat object per event (`timestamp`, `level`, `message`, fields,
/// `target`, `threadName`), plus the current span when `with_span`.
pub fn json_layer<S, W>(writer: W, with_span: bool) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(with_span)
        .with_span_list(false)
        .with_thread_names(true)
        .with_writer(writer)
}

#[cfg(feature = "otel")]
static OTEL_GUARD: parking_lot::Mutex<Option<crate::telemetry::otel::OtelGuard>> = parking_lot::Mutex::new(None);

/// End of the process: writes what is still queued (see [`flush_remaining`]) and flushes
/// exported spans.
pub fn shutdown(config: &LogConfig) {
    flush_remaining(config);
    #[cfg(feature = "otel")]
    drop(OTEL_GUARD.lock().take());
}

/// Writes whatever is still queued straight to the sink, on the calling thread. For the very end
/// of the process (after the writer actor stopped) and for runs that failed before it started.
pub fn flush_remaining(config: &LogConfig) {
    let Some(pipe) = pipe() else { return };
    let mut sink = LogSink::open(config);
    let mut batch = Vec::new();
    while pipe.drain_into(&mut batch, 1024) > 0 {
        sink.write_batch(&batch);
        batch.clear();
    }
    sink.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let pipe = LogPipe::new(2);
        assert!(pipe.push(b"a\n".to_vec()));
        assert!(pipe.push(b"b\n".to_vec()));
        assert!(!pipe.push(b"c\n".to_vec()));
        assert_eq!(pipe.dropped(), 1);
        let mut out = Vec::new();
        assert_eq!(pipe.drain_into(&mut out, 10), 2);
        assert_eq!(out, b"a\nb\n");
        assert!(pipe.push(b"d\n".to_vec()), "space again after draining");
        assert_eq!(pipe.unreported_drops(), (1, 1));
        assert_eq!(pipe.unreported_drops(), (0, 1), "each drop is reported once");
    }

    #[test]
    fn one_event_is_one_line_even_when_written_in_pieces() {
        use std::io::Write;
        let pipe: &'static LogPipe = Box::leak(Box::new(LogPipe::new(4)));
        {
            let mut writer = QueueMakeWriter::new(pipe).make_writer();
            writer.write_all(b"{\"a\":").unwrap();
            writer.write_all(b"1}\n").unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(pipe.drain_into(&mut out, 10), 1);
        assert_eq!(out, b"{\"a\":1}\n");
    }
}
