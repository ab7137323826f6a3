//! rampart: a realtime backend where every component is a supervised actix actor.
//!
//! `main.rs` only parses the command line and calls [`app::run`]; everything else lives here so
//! tests start exactly the server the binary starts.

#![forbid(unsafe_code)]

/// jemalloc serves every allocation of whatever links rampart (Cargo.toml says why); its
/// statistics give the live heap the system monitor reports.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod alerts;
pub mod app;
pub mod auth;
pub mod chat;
pub mod cli;
pub mod config;
pub mod crash;
pub mod http;
pub mod logging;
pub mod queue;
pub mod resilience;
pub mod rfc3339;
pub mod secret_file;
pub mod sfu;
pub mod socket;
pub mod storage;
pub mod supervision;
pub mod system_monitor;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod transport;
