//! One integration-test binary (linked once): scenario files by behaviour.

mod admin_api;
mod alerts;
mod crashes;
mod http_boundary;
mod lifecycle;
mod logging;
mod metrics;
mod supervision;
mod support;
