//! rampart: a realtime backend where every component is a supervised actix actor.
//!
//! `main.rs` only parses the command line and calls [`app::run`]; everything else lives here so
//! tests start exactly the server the binary starts.

#![forbid(unsafe_code)]

pub mod supervision;
pub mod telemetry;
