//! Owned tasks: the only way rampart spawns a future outside an actor.
//!
//! Owns: nothing beyond the tasks it hands out. A task is owned by its [`OwnedTask`] handle:
//! dropping the handle cancels it, so nothing runs detached ("fire and forget" is what lost
//! panics in the system rampart replaces). A panic inside the task is contained, counted in
//! `rampart_panics_total{source="task"}`, logged, turned into a crash record with the task's
//! name, and returned to whoever awaits the handle as [`TaskFailed::Panicked`]. `JoinError`s
//! that are panics (a panic the containment could not catch, e.g. while dropping the output)
//! are recorded the same way.
//!
//! Enforced by clippy (`clippy.toml` disallows the runtime's `spawn` functions elsewhere).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::crash::CapturedPanic;
use crate::crash::CrashRecord;
use crate::supervision::contain_future;
use crate::telemetry::{metrics, PanicSource, SourceLabels};

/// Why an owned task produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailed {
    #[error("task {task} panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("task {task} was cancelled")]
    Cancelled { task: &'static str },
}

/// Handle to a running task; await it for the output. Dropping it cancels the task.
#[must_use = "dropping an OwnedTask cancels it"]
pub struct OwnedTask<T> {
    name: &'static str,
    handle: actix_rt::task::JoinHandle<Result<T, CapturedPanic>>,
}

/// Spawns `future` on the current (actix/tokio) runtime as a task owned by the returned handle.
pub fn spawn_owned<F>(name: &'static str, future: F) -> OwnedTask<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    #[allow(clippy::disallowed_methods, reason = "the one sanctioned spawn: contained and owned")]
    let handle = actix_rt::spawn(async move {
        let outcome = contain_future(future).await;
        if let Err(panic) = &outcome {
            task_panicked(name, panic);
        }
        outcome
    });
    OwnedTask { name, handle }
}

/// Like [`spawn_owned`], on another runtime (the SFU's media runtime): `future` must be `Send`.
pub fn spawn_owned_on<F>(runtime: &tokio::runtime::Handle, name: &'static str, future: F) -> OwnedTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = runtime.spawn(async move {
        let outcome = contain_future(future).await;
        if let Err(panic) = &outcome {
            task_panicked(name, panic);
        }
        outcome
    });
    OwnedTask { name, handle }
}

pub(crate) fn task_panicked(name: &'static str, panic: &CapturedPanic) {
    metrics().panics.get_or_create(&SourceLabels::of(PanicSource::task)).inc();
    tracing::error!(
        task = name,
        panic = %panic.message,
        location = panic.location.as_deref().unwrap_or("-"),
        "owned task panicked"
    );
    let mut crash = CrashRecord::new(PanicSource::task, panic);
    crash.task = Some(name.to_owned());
    crate::alerts::report_crash(crash);
}

impl<T> OwnedTask<T> {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Cancels the task; awaiting the handle afterwards yields `TaskFailed::Cancelled`.
    pub fn abort(&self) {
        self.handle.abort();
    }
}

impl<T> Future for OwnedTask<T> {
    type Output = Result<T, TaskFailed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let task = self.name;
        Pin::new(&mut self.handle).poll(cx).map(|joined| match joined {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(panic)) => Err(TaskFailed::Panicked { task, message: panic.message }),
            Err(error) if error.is_panic() => {
                let message = crate::supervision::panic_payload_text(error.into_panic().as_ref());
                let panic = CapturedPanic::without_panic(message.clone());
                task_panicked(task, &panic);
                Err(TaskFailed::Panicked { task, message })
            }
            Err(_) => Err(TaskFailed::Cancelled { task }),
        })
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_panicking_task_reports_instead_of_vanishing() {
        crate::supervision::install_panic_hook();
        let before = metrics().panics.get_or_create(&SourceLabels::of(PanicSource::task)).get();
        let task = spawn_owned("test.panics", async { panic!("task boom") });
        let outcome: Result<(), TaskFailed> = task.await;
        assert_eq!(outcome, Err(TaskFailed::Panicked { task: "test.panics", message: "task boom".into() }));
        let after = metrics().panics.get_or_create(&SourceLabels::of(PanicSource::task)).get();
        assert!(after > before);
    }

    #[actix_rt::test]
    async fn output_and_cancellation() {
        assert_eq!(spawn_owned("test.value", async { 7 }).await, Ok(7));
        let task = spawn_owned("test.forever", std::future::pending::<()>());
        task.abort();
        assert_eq!(task.await, Err(TaskFailed::Cancelled { task: "test.forever" }));
    }
}
