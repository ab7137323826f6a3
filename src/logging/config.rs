//! The `[log]` section: what is logged, in which format, and where.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `log.filter`'s default: info, except webrtc-rs's crates (the SFU), which log every ICE and
/// connection state change of every peer at info, and warn about routine events (ICE checks
/// before the first candidate, every retransmitted SRTP packet, DTLS without a server name); and
/// the TURN server's per-request errors, which are what any client on the internet can cause
/// (a wrong password, an expired credential, a malformed request: logged at `error` by the
/// `turn` crate), counted instead in `rampart_turn_*` metrics.
pub const DEFAULT_LOG_FILTER: &str = "info,rtc=warn,rtc::peer_connection::handler=error,rtc_ice=error,rtc_dtls=error,\
     rtc_sctp=warn,rtc_srtp=warn,rtc_interceptor=warn,webrtc=warn,turn::server=off,turn::allocation=warn";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `pretty` when stdout is a terminal, `json` otherwise (a pipe, a file, a log shipper).
    Auto,
    Json,
    Pretty,
}

impl LogFormat {
    /// `Json` or `Pretty`: `Auto` decided by whether stdout is a terminal right now.
    pub fn resolve(self) -> Self {
        match self {
            LogFormat::Auto if std::io::IsTerminal::is_terminal(&std::io::stdout()) => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            chosen => chosen,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Which events to log, in `RUST_LOG` syntax (`info`, `rampart=debug,actix_web=warn`).
    pub filter: String,
    /// `auto` (pretty at a terminal, JSON otherwise), `json` (one object per line) or `pretty`.
    pub format: LogFormat,
    /// Also append to this file (rotated by size); unset: stdout only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Rotate the file when the next line would take it past this size.
    pub max_bytes: u64,
    /// Rotated files kept (`<file>.1` newest … `<file>.<keep>` oldest).
    pub keep: u32,
    /// Events waiting for the writer; beyond this, new events are dropped and counted.
    pub queue_capacity: usize,
    /// How often a line reports events dropped since the last report (only when there were any).
    #[serde(with = "humantime_serde")]
    pub drop_report_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: DEFAULT_LOG_FILTER.into(),
            format: LogFormat::Auto,
            file: None,
            max_bytes: 100 * 1024 * 1024,
            keep: 5,
            queue_capacity: 16384,
            drop_report_interval: Duration::from_secs(10),
        }
    }
}
