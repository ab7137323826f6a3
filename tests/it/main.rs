//! One integration-test binary (linked once): scenario files by behaviour.

mod admin_api;
mod lifecycle;
mod metrics;
mod supervision;
mod support;
