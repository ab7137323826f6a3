//! `Validator` (`/root/chat/validator`): the pipeline's first stage.
//!
//! Owns: the decision whether a message may be stored — its sender is a user, the sender is a
//! member of the conversation — before it reaches the next stage (the batch writer, or a
//! transport's producer). A sender that is not a user yet is retried with backoff for `pipeline.unknown_sender_wait` (another service may be
//! creating it) before `unknown_sender` and a dead letter.
//!
//! State: none worth keeping; the caches live in the shared `Directory`. A restart drops
//! lookups in flight, whose senders then get `unavailable` (not acked, so they send again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::batch_writer::{BatchWriter, Commit};
use super::{Directory, SendError, Submission};
use crate::chat::PipelineConfig;
use crate::storage::{ChatStore, DeadLetterKind, NewDeadLetter};
use crate::supervision::{ActorHandle, CallError, SupervisedMessage};

/// First wait between lookups of an unknown sender; doubles up to `UNKNOWN_SENDER_MAX_STEP`.
const UNKNOWN_SENDER_FIRST_STEP: Duration = Duration::from_millis(25);
const UNKNOWN_SENDER_MAX_STEP: Duration = Duration::from_millis(250);

/// The stage accepted messages go to, handed to the validator by whoever wires the pipeline: the
/// batch writer when embedded, a transport's producer otherwise. It refuses without waiting (a
/// full mailbox); a refused submission is dropped, which answers its sender `unavailable`.
#[derive(Clone)]
pub struct Next(Arc<dyn Fn(Submission) -> Result<(), CallError> + Send + Sync>);

impl Next {
    pub fn new(forward: impl Fn(Submission) -> Result<(), CallError> + Send + Sync + 'static) -> Self {
        Self(Arc::new(forward))
    }

    /// Straight to the batch writer (the embedded transport).
    pub fn batch_writer(writer: ActorHandle<BatchWriter>) -> Self {
        Self::new(move |submission| writer.try_send(Commit(submission)))
    }
}

/// Check a message and pass it on to the next stage ([`Next`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Validate(pub Submission);

impl SupervisedMessage for Validate {
    fn key(&self) -> Option<String> {
        Some(self.0.message.id.clone())
    }
}

pub struct Validator {
    store: ChatStore,
    directory: std::sync::Arc<Directory>,
    next: Next,
    config: PipelineConfig,
}

impl Validator {
    pub fn new(store: ChatStore, directory: std::sync::Arc<Directory>, next: Next, config: PipelineConfig) -> Self {
        Self { store, directory, next, config }
    }
}

impl Actor for Validator {
    type Context = Context<Self>;
}

crate::supervised!(Validator);

/// What the lookups found.
enum Verdict {
    Accept,
    Refuse(SendError),
    UnknownSender,
}

impl Handler<Validate> for Validator {
    type Result = ();

    fn handle(&mut self, Validate(submission): Validate, ctx: &mut Self::Context) {
        let sender = submission.message.sender.clone();
        let conversation = submission.message.conversation.clone();
        // The hot path: both answers cached.
        if self.directory.cached_user(&sender) {
            if let Some(members) = self.directory.cached_members(&conversation) {
                if members.contains(&sender) {
                    self.forward_or_refuse(submission);
                } else {
                    submission.answer(Err(SendError::Forbidden));
                }
                return;
            }
        }
        let directory = self.directory.clone();
        let wait = self.config.unknown_sender_wait;
        let lookup = async move {
            let deadline = Instant::now() + wait;
            let mut step = UNKNOWN_SENDER_FIRST_STEP;
            loop {
                match directory.user_exists(&sender).await {
                    Ok(true) => break,
                    Ok(false) if Instant::now() + step <= deadline => {
                        tokio::time::sleep(step).await;
                        step = (step * 2).min(UNKNOWN_SENDER_MAX_STEP);
                    }
                    Ok(false) => return Verdict::UnknownSender,
                    Err(error) => return Verdict::Refuse(SendError::Unavailable(error.to_string())),
                }
            }
            match directory.is_member(&conversation, &sender).await {
                Ok(true) => Verdict::Accept,
                Ok(false) => Verdict::Refuse(SendError::Forbidden),
                Err(error) => Verdict::Refuse(SendError::Unavailable(error.to_string())),
            }
        };
        ctx.spawn(lookup.into_actor(self).map(move |verdict, validator, ctx| match verdict {
            Verdict::Accept => validator.forward_or_refuse(submission),
            Verdict::Refuse(error) => submission.answer(Err(error)),
            Verdict::UnknownSender => validator.reject_unknown_sender(submission, ctx),
        }));
    }
}

impl Validator {
    fn forward_or_refuse(&self, submission: Submission) {
        // A refused send drops the submission, which answers its sender `unavailable`.
        if let Err(error) = (self.next.0)(submission) {
            tracing::warn!(%error, "the next stage refused a message");
        }
    }

    fn reject_unknown_sender(&self, submission: Submission, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let sender = submission.message.sender.clone();
        let letter = NewDeadLetter {
            kind: DeadLetterKind::Message,
            reason: format!(
                "unknown sender {sender} (waited {})",
                humantime::format_duration(self.config.unknown_sender_wait)
            ),
            attempts: 1,
            payload: serde_json::to_value(&submission.message).unwrap_or_default(),
        };
        ctx.spawn(
            async move {
                match store.add_dead_letter(letter, crate::storage::now_ms()).await {
                    Ok(_) => crate::telemetry::dead_lettered("message"),
                    Err(error) => tracing::error!(%error, "could not record a dead letter"),
                }
                submission.answer(Err(SendError::UnknownSender(sender)));
            }
            .into_actor(self),
        );
    }
}
