//! One integration-test binary (linked once): scenario files by behaviour.

mod support;
mod supervision;
