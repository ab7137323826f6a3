//! Supervision: the tree of supervisors that keeps every rampart component alive.
//!
//! Owns: panic containment at the mailbox boundary (`runner`), restart decisions (`supervisor`),
//! the stable handles everyone else holds (`handle`), and what operators read about it all
//! (`registry`, `journal`, `quarantine`, `watchdog`).
//!
//! Architecture Invariant: no code outside this module catches a panic. Component authors write
//! plain actix actors plus one `supervised!(Type)` line; they never wrap handlers.
//!
//! Architecture Invariant: this module knows nothing of HTTP, storage or any component; the
//! admin API reads it through `Registry`, `RestartJournal` and `QuarantineStore`.

mod backoff;
mod config;
mod control;
pub mod events;
mod handle;
mod journal;
mod panic_capture;
mod quarantine;
mod registry;
mod runner;
mod spec;
mod supervisor;
mod tree;
mod watchdog;

pub use backoff::{BackoffDecision, BackoffPolicy, BackoffState};
pub use config::SupervisionConfig;
pub use handle::{
    dispatch, ActorHandle, CallError, ChaosPanic, SendRequest, SupervisedActor, SupervisedMessage, Tracked,
    TrackedResponse,
};
pub use journal::{FailureCause, JournalDecision, JournalEntry, RestartJournal};
pub use panic_capture::{contain, contain_future, install_panic_hook, payload_text as panic_payload_text, Contained};
pub use quarantine::{QuarantineEvent, QuarantineRecord, QuarantineSink, QuarantineStore};
pub use registry::{ActorKind, ActorRecord, ActorStatus, FailureSummary, GroupSummary, ListingRow, Registry};
pub use runner::{install_fresh_state, InFlight};
pub use spec::{ChildSpec, Factory, RestartType, Strategy, SupervisorSpec};
pub use supervisor::{SpawnError, SupervisionContext, Supervisor};
pub use tree::{SupervisionTree, SupervisorHandle};
pub use watchdog::Watchdog;

/// `rampart::system_monitor::Sample` → `Sample`; generic arguments are shortened the same way.
pub fn short_type_name(full: &str) -> &str {
    // Only `::` before the first `<` separates modules; later ones belong to generic arguments.
    let head = &full[..full.find('<').unwrap_or(full.len())];
    head.rfind("::").map_or(full, |cut| &full[cut + 2..])
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn short_type_names() {
        assert_eq!(short_type_name("rampart::system_monitor::Sample"), "Sample");
        assert_eq!(short_type_name("Sample"), "Sample");
        assert_eq!(short_type_name("a::Wrapper<b::Inner>"), "Wrapper<b::Inner>");
    }
}
