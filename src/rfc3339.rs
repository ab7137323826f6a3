//! RFC 3339 timestamps, the one time format rampart's APIs speak.

use std::time::SystemTime;

/// `2026-11-21T23:27:07.123Z`.
pub fn format(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// For `#[serde(serialize_with = "crate::rfc3339::serialize")]`.
pub fn serialize<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*at))
}
