//! Storage fault injection (`chaos.enabled` only, through `POST /admin/chaos/storage`).
//!
//! Owns: the faults an operator or a test asked the embedded store to suffer: an I/O error
//! (`EIO`, SQLite's `SQLITE_IOERR`) or a full disk (`ENOSPC`, `SQLITE_FULL`) in the middle of a
//! message batch, for the next N batches or until cleared, and a slow disk (a delay before every
//! write job on the writer thread). A failing batch has already written half of its rows when
//! the error comes, so the rollback path is the one a real mid-transaction failure takes.
//!
//! A real full disk is tested too (`tests/it/disk_full.rs`, a 6 MB tmpfs); EIO cannot be made
//! on demand by an unprivileged process, hence this hook.
//!
//! Must never: fire when nothing was injected (one uncontended lock per batch otherwise).

use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The error a failing write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IoFault {
    /// An I/O error (SQLITE_IOERR).
    Eio,
    /// The disk is full (SQLITE_FULL).
    Enospc,
}

/// What to inject; replaces whatever was injected before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Fail message batches mid-transaction with this error.
    pub error: Option<IoFault>,
    /// How many batches fail; `None`: every batch until cleared.
    pub writes: Option<u32>,
    /// Delay before every write job, in milliseconds (a slow disk); at most `MAX_DELAY_MS`.
    pub delay_ms: u64,
}

/// The injected faults and what they did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FaultState {
    pub error: Option<IoFault>,
    /// Batches still to fail (absent: until cleared).
    pub remaining: Option<u32>,
    pub delay_ms: u64,
    /// Batches failed by injection since start.
    pub injected: u64,
}

/// Longest injectable delay: beyond it a test would only be measuring its own patience.
pub const MAX_DELAY_MS: u64 = 60_000;

#[derive(Default)]
pub struct Faults {
    state: Mutex<FaultState>,
}

impl Faults {
    /// Replaces the injected faults with `plan`.
    pub fn set(&self, plan: FaultPlan) -> Result<FaultState, String> {
        if plan.delay_ms > MAX_DELAY_MS {
            return Err(format!("delay_ms must be at most {MAX_DELAY_MS}"));
        }
        let mut state = self.state.lock();
        state.error = plan.error;
        // Without an error to inject there is nothing to count.
        state.remaining = plan.error.and(plan.writes);
        state.delay_ms = plan.delay_ms;
        Ok(state.clone())
    }

    pub fn clear(&self) -> FaultState {
        let mut state = self.state.lock();
        let injected = state.injected;
        *state = FaultState { injected, ..FaultState::default() };
        state.clone()
    }

    pub fn state(&self) -> FaultState {
        self.state.lock().clone()
    }

    /// The slow-disk delay before a write job.
    pub(super) fn delay(&self) -> Duration {
        Duration::from_millis(self.state.lock().delay_ms)
    }

    /// Called by a batch commit halfway through its rows: the injected error, if any is due.
    pub(super) fn fail_point(&self) -> Result<(), rusqlite::Error> {
        let mut state = self.state.lock();
        let Some(fault) = state.error else { return Ok(()) };
        match &mut state.remaining {
            Some(0) => return Ok(()),
            Some(remaining) => *remaining -= 1,
            None => {}
        }
        if state.remaining == Some(0) {
            state.error = None;
            state.remaining = None;
        }
        state.injected += 1;
        let (code, text) = match fault {
            IoFault::Eio => (rusqlite::ffi::SQLITE_IOERR, "disk I/O error (injected EIO)"),
            IoFault::Enospc => (rusqlite::ffi::SQLITE_FULL, "database or disk is full (injected ENOSPC)"),
        };
        Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(text.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_the_requested_number_of_batches_then_stops() {
        let faults = Faults::default();
        assert!(faults.fail_point().is_ok());
        faults.set(FaultPlan { error: Some(IoFault::Eio), writes: Some(2), delay_ms: 0 }).unwrap();
        let error = faults.fail_point().unwrap_err();
        assert!(error.to_string().contains("injected EIO"), "{error}");
        assert_eq!(error.sqlite_error_code(), Some(rusqlite::ErrorCode::SystemIoFailure));
        assert!(faults.fail_point().is_err());
        assert!(faults.fail_point().is_ok());
        assert_eq!(faults.state(), FaultState { injected: 2, ..FaultState::default() });
    }

    #[test]
    fn until_cleared_and_validated() {
        let faults = Faults::default();
        faults.set(FaultPlan { error: Some(IoFault::Enospc), writes: None, delay_ms: 5 }).unwrap();
        for _ in 0..3 {
            assert_eq!(faults.fail_point().unwrap_err().sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull));
        }
        assert_eq!(faults.delay(), Duration::from_millis(5));
        assert_eq!(faults.clear().injected, 3);
        assert!(faults.fail_point().is_ok());
        assert_eq!(faults.delay(), Duration::ZERO);
        assert!(faults.set(FaultPlan { delay_ms: MAX_DELAY_MS + 1, ..FaultPlan::default() }).is_err());
        assert_eq!(faults.set(FaultPlan { writes: Some(1), ..FaultPlan::default() }).unwrap().remaining, None);
    }
}
