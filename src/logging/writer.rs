//! The log-writer actor: drains the log queue into the sink.
//!
//! Owns: the open sink (stdout + rotated file). Restart type: permanent, on its own arbiter
//! thread, because writing blocks when stdout is a full pipe or the disk is slow, and that must
//! stall nobody but the writer. State lost on a restart: the batch being written when it panicked
//! (at most `BATCH_LINES` lines); queued lines stay in the queue, which outlives the actor, and the
//! fresh incarnation drains them at once.
//!
//! Reports drops: every `log.drop_report_interval`, if events were dropped since the last report,
//! one line saying how many is written straight to the sink (not through the full queue).

use actix::prelude::*;

use super::{LogConfig, LogFormat};
use super::{LogPipe, LogSink};

/// Lines written per turn; after that the actor yields to its mailbox (chaos, stop) and goes on.
const BATCH_LINES: usize = 1024;

pub struct LogWriter {
    pipe: &'static LogPipe,
    config: LogConfig,
    sink: LogSink,
    batch: Vec<u8>,
}

impl LogWriter {
    pub fn new(pipe: &'static LogPipe, config: LogConfig) -> Self {
        let sink = LogSink::open(&config);
        Self { pipe, config, sink, batch: Vec::new() }
    }

    /// Writes one batch; returns whether more is queued.
    fn write_some(&mut self) -> bool {
        self.batch.clear();
        if self.pipe.drain_into(&mut self.batch, BATCH_LINES) > 0 {
            self.sink.write_batch(&self.batch);
        }
        // Do not keep a huge buffer alive after a burst.
        if self.batch.capacity() > 1 << 20 {
            self.batch = Vec::new();
        }
        !self.pipe.is_empty()
    }

    fn report_drops(&mut self) {
        let (dropped, total) = self.pipe.unreported_drops();
        if dropped == 0 {
            return;
        }
        let line = drop_report_line(self.config.format, dropped, total);
        self.sink.write_batch(line.as_bytes());
    }
}

fn drop_report_line(format: LogFormat, dropped: u64, total: u64) -> String {
    let timestamp = crate::rfc3339::format(std::time::SystemTime::now());
    let message = "log queue full: events dropped";
    match format.resolve() {
        LogFormat::Auto | LogFormat::Json => {
            let line = serde_json::json!({
                "timestamp": timestamp,
                "level": "WARN",
                "target": "rampart::logging",
                "message": message,
                "dropped": dropped,
                "dropped_total": total,
            });
            format!("{line}\n")
        }
        LogFormat::Pretty => {
            format!("{timestamp}  WARN rampart::logging: {message} dropped={dropped} dropped_total={total}\n")
        }
    }
}

/// "Write what is queued" — sent to itself to keep draining after a full batch.
#[derive(Message)]
#[rtype(result = "()")]
struct Drain;

impl Actor for LogWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.add_stream(self.pipe.wakeups());
        ctx.run_interval(self.config.drop_report_interval, |writer, _| writer.report_drops());
        // Whatever queued up before this incarnation started (start-up, or while restarting).
        ctx.notify(Drain);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Shutdown: write what is queued now (bounded, so a flood cannot hold the exit hostage).
        for _ in 0..64 {
            if !self.write_some() {
                break;
            }
        }
        self.report_drops();
        self.sink.flush();
    }
}

impl StreamHandler<()> for LogWriter {
    fn handle(&mut self, (): (), ctx: &mut Self::Context) {
        if self.write_some() {
            ctx.notify(Drain);
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The wake-up stream never ends; nothing to do if it somehow did (Drain keeps working).
    }
}

impl Handler<Drain> for LogWriter {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) {
        if self.write_some() {
            ctx.notify(Drain);
        }
    }
}

crate::supervised!(LogWriter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reports_are_one_line_in_either_format() {
        let json = drop_report_line(LogFormat::Json, 3, 10);
        let parsed: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(parsed["dropped"], 3);
        assert_eq!(parsed["dropped_total"], 10);
        assert_eq!(parsed["level"], "WARN");
        let pretty = drop_report_line(LogFormat::Pretty, 3, 10);
        assert!(pretty.ends_with("dropped=3 dropped_total=10\n"), "{pretty}");
        assert_eq!(pretty.matches('\n').count(), 1);
    }
}
