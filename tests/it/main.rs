//! One integration-test binary (linked once): scenario files by behaviour.

mod admin_api;
mod alerts;
mod architecture;
mod auth;
mod backlog;
mod browser;
mod chat;
mod chat_api;
mod chat_client;
mod crashes;
mod deployment;
mod disk_full;
mod faults;
mod http_boundary;
#[cfg(feature = "kafka")]
mod kafka;
mod lifecycle;
mod limits;
mod live_delivery;
mod logging;
mod metrics;
mod mongodb;
mod openapi;
#[cfg(feature = "otel")]
mod otel;
mod placement;
mod prometheus_rules;
#[cfg(feature = "sfu")]
mod rtc_client;
mod search_engine;
#[cfg(feature = "sfu")]
mod sfu;
mod supervision;
mod support;
mod wal;
