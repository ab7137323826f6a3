//! `WakeQueue`: the bounded hand-off from any thread to one supervised actor, used where the
//! producer must never block (log events, crash records, alerts).
//!
//! Owns: a bounded MPMC channel and a wake-up signal. The queue outlives the actor that drains
//! it, so a restarted consumer picks up what was queued while it was down.
//!
//! Must never: block or lock on the producer side. `try_push` is one `try_send` plus a
//! `Notify::notify_one` (which only locks when the consumer is parked, never while user code or
//! a panic hook holds anything of ours).

use crossbeam_channel::{Receiver, Sender};
use futures_util::Stream;
use tokio::sync::Notify;

pub struct WakeQueue<T> {
    sender: Sender<T>,
    receiver: Receiver<T>,
    wake: Notify,
}

impl<T> WakeQueue<T> {
    pub fn new(capacity: usize) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(capacity.max(1));
        Self { sender, receiver, wake: Notify::new() }
    }

    /// Enqueues and wakes the consumer; `false` (item dropped) when the queue is full.
    pub fn try_push(&self, item: T) -> bool {
        if self.sender.try_send(item).is_ok() {
            self.wake.notify_one();
            true
        } else {
            false
        }
    }

    pub fn try_pop(&self) -> Option<T> {
        self.receiver.try_recv().ok()
    }

    pub fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }

    /// One item per wake-up after a push, for a consumer's `ctx.add_stream` (it never ends).
    /// Wake-ups coalesce: drain until `try_pop` returns `None` on each.
    pub fn wakeups(&'static self) -> impl Stream<Item = ()> + 'static {
        futures_util::stream::unfold(self, |queue| async move {
            queue.wake.notified().await;
            Some(((), queue))
        })
    }
}
