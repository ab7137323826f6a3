//! The stable handle to a supervised actor, and the message tracking behind it.
//!
//! Owns: `ActorHandle` (what other actors and HTTP handlers hold; it survives every restart of the
//! actor because the mailbox does), `Tracked` (the envelope that tells the supervision layer which
//! message is in flight), `CallError`, and the `supervised!` macro that wires an actor in.
//!
//! Must never: catch panics (the runner does that, once, at the mailbox boundary) or block.

use std::any::type_name;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use actix::dev::{MessageResponse, OneshotSender, Request, ToEnvelope};
use actix::{Actor, Addr, Context, Handler, MailboxError, Message};
use pin_project_lite::pin_project;

use super::quarantine::{QuarantineEvent, QuarantineRecord};
use super::registry::{ActorRecord, ActorStatus};
use super::runner;

/// A message that may be sent through an [`ActorHandle`].
///
/// `key` names the *logical* message (a batch id, a client message id): when the same key crashes
/// an actor `supervisor.quarantine_after` times, later deliveries of it are quarantined instead.
/// Messages without a key are never quarantined. `Debug` is what the quarantine sink stores.
pub trait SupervisedMessage: Message + Debug + Send + 'static {
    fn key(&self) -> Option<String> {
        None
    }
}

/// A message on its way through the supervision layer. Built only by [`ActorHandle`].
pub struct Tracked<M> {
    pub(crate) message: M,
    /// Only for keyed messages, which may be quarantined. Unkeyed messages (the hot path) carry
    /// nothing and cost nothing extra.
    pub(crate) keyed: Option<Arc<KeyedDelivery>>,
    /// The sender's span, so the handling span continues its trace (only while exporting).
    #[cfg(feature = "otel")]
    pub(crate) parent: Option<tracing::Span>,
}

/// What `dispatch` needs to quarantine a keyed message, shared with the sender.
pub(crate) struct KeyedDelivery {
    pub(crate) key: String,
    pub(crate) record: Arc<ActorRecord>,
    /// Set by `dispatch` when it diverts the message, so the sender can tell "quarantined" from
    /// "crashed" without racing the supervisor.
    pub(crate) diverted: AtomicBool,
}

impl<M> Tracked<M> {
    pub(crate) fn new(message: M, key: Option<String>, record: &Arc<ActorRecord>) -> Self {
        let keyed =
            key.map(|key| Arc::new(KeyedDelivery { key, record: record.clone(), diverted: AtomicBool::new(false) }));
        Self {
            message,
            keyed,
            #[cfg(feature = "otel")]
            parent: crate::telemetry::tracing_exported().then(tracing::Span::current),
        }
    }
}

impl<M: Message> Message for Tracked<M> {
    type Result = M::Result;
}

/// The handler's own response, or nothing when the message was diverted to quarantine (the
/// caller then sees `CallError::Quarantined`).
pub enum TrackedResponse<R> {
    Handled(R),
    Diverted,
}

impl<A, M, R> MessageResponse<A, Tracked<M>> for TrackedResponse<R>
where
    A: Actor,
    M: Message,
    R: MessageResponse<A, M>,
{
    fn handle(self, ctx: &mut A::Context, tx: Option<OneshotSender<M::Result>>) {
        match self {
            TrackedResponse::Handled(response) => response.handle(ctx, tx),
            // Dropping `tx` tells the caller no reply is coming.
            TrackedResponse::Diverted => drop(tx),
        }
    }
}

/// Makes the receiving actor panic inside its own handler (the chaos endpoint, tests).
#[derive(Debug, Clone, Copy)]
pub struct ChaosPanic;

impl Message for ChaosPanic {
    type Result = ();
}

impl SupervisedMessage for ChaosPanic {}

/// An actor that can run under a supervisor. Implemented by [`supervised!`](crate::supervised),
/// never by hand: the macro also provides the fresh-state hook restarts rely on.
pub trait SupervisedActor: Actor<Context = Context<Self>> + actix::Supervised + Handler<Tracked<ChaosPanic>> {}

/// Wires an actor into the supervision layer: fresh state on restart, message tracking for the
/// restart journal and quarantine, and the chaos panic handler.
///
/// ```
/// struct Counter { n: u64 }
/// impl actix::Actor for Counter { type Context = actix::Context<Self>; }
/// rampart::supervised!(Counter);
/// ```
#[macro_export]
macro_rules! supervised {
    ($actor:ty) => {
        impl ::actix::Supervised for $actor {
            fn restarting(&mut self, _ctx: &mut <Self as ::actix::Actor>::Context) {
                $crate::supervision::install_fresh_state(self);
            }
        }

        impl ::actix::Handler<$crate::supervision::ChaosPanic> for $actor {
            type Result = ();

            fn handle(&mut self, _msg: $crate::supervision::ChaosPanic, _ctx: &mut Self::Context) {
                panic!("chaos: panic requested by an operator or a test");
            }
        }

        impl<M> ::actix::Handler<$crate::supervision::Tracked<M>> for $actor
        where
            M: $crate::supervision::SupervisedMessage,
            $actor: ::actix::Handler<M>,
        {
            type Result = $crate::supervision::TrackedResponse<<$actor as ::actix::Handler<M>>::Result>;

            fn handle(&mut self, msg: $crate::supervision::Tracked<M>, ctx: &mut Self::Context) -> Self::Result {
                $crate::supervision::dispatch(self, msg, ctx)
            }
        }

        impl $crate::supervision::SupervisedActor for $actor {}
    };
}

/// Delivers one tracked message: counts it off the backlog, diverts it if its key is quarantined,
/// and records it as in flight while the handler's synchronous part runs.
#[doc(hidden)]
#[inline]
pub fn dispatch<A, M>(
    actor: &mut A,
    tracked: Tracked<M>,
    ctx: &mut Context<A>,
) -> TrackedResponse<<A as Handler<M>>::Result>
where
    A: Actor<Context = Context<A>> + Handler<M>,
    M: SupervisedMessage,
{
    #[cfg(feature = "otel")]
    let Tracked { message, keyed, parent } = tracked;
    #[cfg(not(feature = "otel"))]
    let Tracked { message, keyed } = tracked;
    let message_type = type_name::<M>();
    #[cfg(feature = "otel")]
    let _span = parent.map(|parent| {
        let actor = crate::supervision::short_type_name(type_name::<A>());
        let message = crate::supervision::short_type_name(message_type);
        tracing::info_span!(parent: &parent, "actor.handle", actor, message).entered()
    });
    let key = match keyed {
        None => None,
        Some(keyed) => {
            if keyed.record.quarantine.contains(message_type, &keyed.key) {
                runner::count_dispatched();
                divert(&keyed.record, message_type, &keyed.key, &message);
                keyed.diverted.store(true, Ordering::Release);
                return TrackedResponse::Diverted;
            }
            Some(keyed.key.clone())
        }
    };
    runner::begin_dispatch(message_type, key);
    let response = <A as Handler<M>>::handle(actor, message, ctx);
    // Not reached when the handler panics: the runner then finds the message still in flight.
    runner::end_dispatch();
    TrackedResponse::Handled(response)
}

fn divert<M: Debug>(record: &ActorRecord, message_type: &'static str, key: &str, message: &M) {
    /// Payloads are kept for operators to read, not to replay byte for byte: bound them.
    const MAX_PAYLOAD_CHARS: usize = 4096;
    let mut payload = format!("{message:?}");
    if payload.len() > MAX_PAYLOAD_CHARS {
        let mut cut = MAX_PAYLOAD_CHARS;
        while !payload.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.truncate(cut);
        payload.push('…');
    }
    record.sink.accept(QuarantineRecord {
        actor: record.path.clone(),
        message_type: super::short_type_name(message_type).to_owned(),
        key: key.to_owned(),
        at: SystemTime::now(),
        event: QuarantineEvent::Diverted { payload },
    });
}

pin_project! {
    /// The reply to [`ActorHandle::send`]. A hand-written future rather than an `async` block:
    /// actix's request future is large, and every extra move of it showed up in the round-trip
    /// benchmark.
    #[must_use = "the reply is lost unless the request is awaited"]
    pub struct SendRequest<'a, A, M>
    where
        A: Actor,
        M: Message,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
        M: Send,
        M: 'static,
        M::Result: Send,
    {
        #[pin]
        request: Option<Request<A, Tracked<M>>>,
        refused: Option<Box<CallError>>,
        keyed: Option<Arc<KeyedDelivery>>,
        record: &'a ActorRecord,
    }
}

impl<A, M> Future for SendRequest<'_, A, M>
where
    A: Actor + Handler<Tracked<M>>,
    A::Context: ToEnvelope<A, Tracked<M>>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Output = Result<M::Result, CallError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(error) = this.refused.take() {
            return Poll::Ready(Err(*error));
        }
        match this.request.as_pin_mut() {
            Some(request) => {
                request.poll(cx).map(|reply| reply.map_err(|error| classify(this.record, this.keyed.as_deref(), error)))
            }
            None => Poll::Ready(Err(CallError::Stopped { actor: this.record.path.clone() })),
        }
    }
}

/// Why a call through an [`ActorHandle`] produced no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The actor failed (panicked) while this request was in flight. It is being restarted;
    /// the request was not completed and may be retried.
    #[error("actor {actor} failed while handling the request")]
    Failed { actor: String },
    /// The actor is stopped for good (shutdown, or a temporary child that ended).
    #[error("actor {actor} is stopped")]
    Stopped { actor: String },
    /// The message's key is quarantined for this actor; it was handed to the quarantine sink.
    #[error("message {key} is quarantined by actor {actor}")]
    Quarantined { actor: String, key: String },
    /// `try_send` found the mailbox full.
    #[error("mailbox of actor {actor} is full")]
    MailboxFull { actor: String },
    /// No reply within the caller's deadline.
    #[error("actor {actor} did not reply in time")]
    Timeout { actor: String },
}

/// The stable address of a supervised actor. Cheap to clone; keeps working across restarts.
pub struct ActorHandle<A: Actor> {
    pub(crate) addr: Addr<A>,
    pub(crate) record: Arc<ActorRecord>,
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        Self { addr: self.addr.clone(), record: self.record.clone() }
    }
}

impl<A: Actor> Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorHandle").field("path", &self.record.path).finish()
    }
}

impl<A: SupervisedActor> ActorHandle<A> {
    /// The actor's path in the tree, e.g. `/root/system_monitor`.
    pub fn path(&self) -> &str {
        &self.record.path
    }

    /// The raw actix address. Messages sent through it bypass tracking: a panic they cause is
    /// still contained and restarts the actor, but the journal cannot name the message and
    /// keyed messages cannot be quarantined. For `Recipient`s and actix APIs that need an `Addr`.
    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    /// Its registry record (status, restart count, last failure).
    pub fn record(&self) -> &Arc<ActorRecord> {
        &self.record
    }

    /// Sends a request and returns a future of the reply. The message is queued *now*, before
    /// the future is first polled (like actix's `Addr::send`), so requests issued one after the
    /// other are delivered in that order. Waits while the mailbox is full; fails with
    /// `CallError::Failed` if the actor panics while handling it. The future borrows the handle:
    /// clone the handle to move a pending request into a spawned task.
    #[inline]
    pub fn send<M>(&self, message: M) -> SendRequest<'_, A, M>
    where
        M: SupervisedMessage,
        M::Result: Send,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        match self.track(message) {
            Err(error) => {
                SendRequest { request: None, refused: Some(Box::new(error)), keyed: None, record: &self.record }
            }
            Ok(tracked) => {
                self.record.sent.fetch_add(1, Ordering::Relaxed);
                let keyed = tracked.keyed.clone();
                SendRequest { request: Some(self.addr.send(tracked)), refused: None, keyed, record: &self.record }
            }
        }
    }

    /// Like [`send`](Self::send) with a deadline for the reply.
    pub async fn send_timeout<M>(&self, message: M, timeout: std::time::Duration) -> Result<M::Result, CallError>
    where
        M: SupervisedMessage,
        M::Result: Send,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        tokio::time::timeout(timeout, self.send(message))
            .await
            .map_err(|_| CallError::Timeout { actor: self.record.path.clone() })?
    }

    /// Sends without waiting for a reply, ignoring mailbox capacity.
    pub fn do_send<M>(&self, message: M) -> Result<(), CallError>
    where
        M: SupervisedMessage,
        M::Result: Send,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        let tracked = self.track(message)?;
        if !self.addr.connected() {
            return Err(CallError::Stopped { actor: self.record.path.clone() });
        }
        self.record.sent.fetch_add(1, Ordering::Relaxed);
        self.addr.do_send(tracked);
        Ok(())
    }

    /// Sends without waiting; fails at once when the mailbox is full.
    pub fn try_send<M>(&self, message: M) -> Result<(), CallError>
    where
        M: SupervisedMessage,
        M::Result: Send,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        self.addr
            .try_send(self.track(message)?)
            .map(|()| {
                self.record.sent.fetch_add(1, Ordering::Relaxed);
            })
            .map_err(|error| match error {
                actix::prelude::SendError::Full(_) => CallError::MailboxFull { actor: self.record.path.clone() },
                actix::prelude::SendError::Closed(_) => CallError::Stopped { actor: self.record.path.clone() },
            })
    }

    /// Wraps `message` for delivery, or refuses it (handing it to the quarantine sink) when its
    /// key is quarantined for this actor.
    #[inline]
    fn track<M: SupervisedMessage>(&self, message: M) -> Result<Tracked<M>, CallError> {
        let key = message.key();
        if let Some(key) = key.as_deref() {
            let message_type = type_name::<M>();
            if self.record.quarantine.contains(message_type, key) {
                divert(&self.record, message_type, key, &message);
                return Err(CallError::Quarantined { actor: self.record.path.clone(), key: key.to_owned() });
            }
        }
        Ok(Tracked::new(message, key, &self.record))
    }
}

fn classify(record: &ActorRecord, keyed: Option<&KeyedDelivery>, error: MailboxError) -> CallError {
    let actor = record.path.clone();
    match (error, keyed) {
        (MailboxError::Timeout, _) => CallError::Timeout { actor },
        (MailboxError::Closed, Some(keyed)) if keyed.diverted.load(Ordering::Acquire) => {
            CallError::Quarantined { actor, key: keyed.key.clone() }
        }
        (MailboxError::Closed, _) if record.status() == ActorStatus::Stopped => CallError::Stopped { actor },
        (MailboxError::Closed, _) => CallError::Failed { actor },
    }
}
