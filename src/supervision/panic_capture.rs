//! The process-wide panic hook and the containment boundary that uses it.
//!
//! Owns: the only `std::panic::set_hook` call in rampart, and the thread-local slot where the hook
//! leaves what it saw (message, `file:line`, backtrace) for the boundary that caught the unwind.
//!
//! Must never: block, allocate unboundedly, or take a lock another thread may hold — the hook runs
//! on the panicking thread, possibly while that thread holds arbitrary locks. Symbolizing the
//! backtrace is deferred to whoever renders it (the admin API), never done here.

use std::any::Any;
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use crate::crash::{CapturedPanic, CrashRecord};
use crate::telemetry::{PanicSource, SourceLabels};

thread_local! {
    /// Depth of containment boundaries on this thread's stack; the hook stays silent (the boundary
    /// reports) while it is above zero and defers to the default hook otherwise.
    static CONTAINMENT_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Written by the hook, taken by the boundary right after `catch_unwind` returns.
    static LAST_PANIC: RefCell<Option<CapturedPanic>> = const { RefCell::new(None) };
}

/// Installs rampart's panic hook once per process. Later calls are no-ops.
///
/// Panics outside a containment boundary still reach the previous (default) hook, so nothing
/// is hidden; panics inside one are reported by the supervisor instead of printed to stderr.
pub fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        #[allow(clippy::disallowed_methods, reason = "the one panic hook")]
        panic::set_hook(Box::new(move |info| {
            if CONTAINMENT_DEPTH.with(Cell::get) > 0 {
                let captured = capture(info);
                // `try_borrow_mut` rather than `borrow_mut`: a panic raised while the slot is
                // borrowed must not become a double panic (which would abort the process).
                LAST_PANIC.with(|slot| {
                    if let Ok(mut slot) = slot.try_borrow_mut() {
                        *slot = Some(captured);
                    }
                });
            } else {
                // No boundary will report this one (a plain thread, or code outside any actor,
                // handler or owned task): record it here, then let the default hook print it.
                let captured = capture(info);
                crate::alerts::report_crash(CrashRecord::new(PanicSource::thread, &captured));
                crate::telemetry::metrics().panics.get_or_create(&SourceLabels::of(PanicSource::thread)).inc();
                previous(info);
            }
        }));
    });
}

fn capture(info: &PanicHookInfo<'_>) -> CapturedPanic {
    CapturedPanic {
        message: payload_text(info.payload()),
        location: info.location().map(|location| format!("{}:{}", location.file(), location.line())),
        thread: std::thread::current().name().map(str::to_owned),
        backtrace: Arc::new(Backtrace::force_capture()),
        recent_actions: crate::crash::actions::snapshot().into(),
        trace_id: crate::telemetry::current_trace_id(),
    }
}

/// Renders a panic payload as text.
pub fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

/// Runs `f`, containing any panic it raises. This is the one catch in rampart's supervision
/// layer; component authors never write their own.
#[inline]
pub fn contain<R>(f: impl FnOnce() -> R) -> Result<R, CapturedPanic> {
    CONTAINMENT_DEPTH.with(|depth| depth.set(depth.get() + 1));
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINMENT_DEPTH.with(|depth| depth.set(depth.get() - 1));
    outcome.map_err(|payload| {
        let captured = LAST_PANIC.with(|slot| slot.try_borrow_mut().ok().and_then(|mut s| s.take()));
        let captured = captured.unwrap_or_else(|| CapturedPanic {
            // The hook was not ours (someone replaced it) or could not record: fall back to
            // the payload, which still carries the message.
            message: payload_text(payload.as_ref()),
            location: None,
            thread: std::thread::current().name().map(str::to_owned),
            backtrace: Arc::new(Backtrace::disabled()),
            recent_actions: crate::crash::actions::snapshot().into(),
            trace_id: None,
        });
        // Dropping a payload runs arbitrary Drop code; contain that too so it cannot unwind
        // out of the boundary.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        captured
    })
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs inside [`contain`]; see [`contain_future`].
    pub struct Contained<F> {
        #[pin]
        inner: F,
    }
}

/// Runs `future`, containing a panic raised while polling it: resolves to `Err` with what the
/// hook captured instead of unwinding into the executor. For boundaries that are not actors
/// (HTTP handlers, owned tasks).
pub fn contain_future<F: Future>(future: F) -> Contained<F> {
    Contained { inner: future }
}

impl<F: Future> Future for Contained<F> {
    type Output = Result<F::Output, CapturedPanic>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        match contain(|| inner.as_mut().poll(cx)) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contain_reports_message_and_location() {
        install_panic_hook();
        let caught = contain(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(caught.message, "boom 7");
        let location = caught.location.unwrap();
        assert!(location.starts_with("src/supervision/panic_capture.rs:"), "{location}");
    }

    #[test]
    fn contain_passes_values_through() {
        install_panic_hook();
        assert_eq!(contain(|| 41 + 1).unwrap(), 42);
    }

    #[test]
    fn nested_boundaries_keep_counting() {
        install_panic_hook();
        let outer = contain(|| {
            let inner = contain(|| panic!("inner"));
            assert_eq!(inner.unwrap_err().message, "inner");
            panic!("outer")
        });
        assert_eq!(outer.unwrap_err().message, "outer");
    }
}
