//! The control line from a supervisor to one child's runner (restart, stop, kill).
//!
//! Owns: a tiny single-producer, single-consumer queue tuned for the runner's hot path. A
//! runner checks it on every poll, i.e. for every message its actor handles, so checking must
//! cost one atomic load: the waker is registered again only when the task's waker changes, and
//! the queue's lock is taken only when something is pending. (tokio's mpsc re-registers the
//! waker with atomic read-modify-writes on every poll, which showed up as a measurable share
//! of a round trip in `cargo bench -p rampart-bench`.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::runner::Control;

struct Shared {
    /// True while the queue is non-empty or the sender is gone. Written under `queue`'s lock.
    pending: AtomicBool,
    queue: Mutex<Queue>,
    waker: Mutex<Option<Waker>>,
}

struct Queue {
    items: VecDeque<Control>,
    sender_gone: bool,
    receiver_gone: bool,
}

/// Held by the supervisor's slot for the child. Dropping it tells the runner to end.
pub(crate) struct ControlSender {
    shared: Arc<Shared>,
}

/// Held by the runner.
pub(crate) struct ControlReceiver {
    shared: Arc<Shared>,
    registered: Option<Waker>,
}

pub(crate) fn control_channel() -> (ControlSender, ControlReceiver) {
    let shared = Arc::new(Shared {
        pending: AtomicBool::new(false),
        queue: Mutex::new(Queue { items: VecDeque::new(), sender_gone: false, receiver_gone: false }),
        waker: Mutex::new(None),
    });
    (ControlSender { shared: shared.clone() }, ControlReceiver { shared, registered: None })
}

impl Shared {
    fn wake(&self) {
        let waker = self.waker.lock().clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl ControlSender {
    /// Queues `control` and wakes the runner. Fails when the runner has ended.
    pub(crate) fn send(&self, control: Control) -> Result<(), Control> {
        {
            let mut queue = self.shared.queue.lock();
            if queue.receiver_gone {
                return Err(control);
            }
            queue.items.push_back(control);
            self.shared.pending.store(true, Ordering::SeqCst);
        }
        self.shared.wake();
        Ok(())
    }
}

impl Drop for ControlSender {
    fn drop(&mut self) {
        {
            let mut queue = self.shared.queue.lock();
            queue.sender_gone = true;
            self.shared.pending.store(true, Ordering::SeqCst);
        }
        self.shared.wake();
    }
}

impl ControlReceiver {
    /// `Ready(Some)` for the next control, `Ready(None)` once the sender is gone and the queue is
    /// drained, `Pending` otherwise (the task is woken on the next send).
    #[inline]
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Control>> {
        if !self.registered.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            *self.shared.waker.lock() = Some(waker.clone());
            self.registered = Some(waker);
        }
        if !self.shared.pending.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        let mut queue = self.shared.queue.lock();
        if let Some(control) = queue.items.pop_front() {
            if queue.items.is_empty() && !queue.sender_gone {
                self.shared.pending.store(false, Ordering::SeqCst);
            }
            return Poll::Ready(Some(control));
        }
        if queue.sender_gone {
            return Poll::Ready(None);
        }
        self.shared.pending.store(false, Ordering::SeqCst);
        Poll::Pending
    }
}

impl Drop for ControlReceiver {
    fn drop(&mut self) {
        self.shared.queue.lock().receiver_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn delivers_in_order_wakes_and_reports_closure() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let (sender, mut receiver) = control_channel();
        assert!(receiver.poll_recv(&mut cx).is_pending());
        sender.send(Control::Restart).unwrap();
        sender.send(Control::Stop).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert!(matches!(receiver.poll_recv(&mut cx), Poll::Ready(Some(Control::Restart))));
        assert!(matches!(receiver.poll_recv(&mut cx), Poll::Ready(Some(Control::Stop))));
        assert!(receiver.poll_recv(&mut cx).is_pending());
        drop(sender);
        assert_eq!(counter.0.load(Ordering::SeqCst), 3);
        assert!(matches!(receiver.poll_recv(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone() {
        let (sender, receiver) = control_channel();
        drop(receiver);
        assert!(sender.send(Control::Kill).is_err());
    }
}
