//! `Validator` (`/root/chat/validator`): the pipeline's first stage.
//!
//! Owns: the decision whether a message may be stored — its sender is a user, the sender is a
//! member of the conversation — before it reaches the batch writer (or, with the Kafka transport,
//! the producer). A sender that is not a
//! user yet is retried with backoff for `pipeline.unknown_sender_wait` (another service may be
//! creating it) before `unknown_sender` and a dead letter.
//!
//! State: none worth keeping; the caches live in the shared `Directory`. A restart drops
//! lookups in flight, whose senders then get `unavailable` (not acked, so they send again).

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::batch_writer::{BatchWriter, Commit};
use super::{Directory, SendError, Submission};
use crate::chat::PipelineConfig;
use crate::storage::{ChatStore, DeadLetterKind, NewDeadLetter};
use crate::supervision::{ActorHandle, SupervisedMessage};

/// First wait between lookups of an unknown sender; doubles up to `UNKNOWN_SENDER_MAX_STEP`.
const UNKNOWN_SENDER_FIRST_STEP: Duration = Duration::from_millis(25);
const UNKNOWN_SENDER_MAX_STEP: Duration = Duration::from_millis(250);

/// Where accepted messages go (`transport.kind`).
#[derive(Clone)]
pub enum Next {
    /// Embedded: straight to the batch writer.
    BatchWriter(ActorHandle<BatchWriter>),
    /// Kafka: to the producer; the writer consumer hands them to a batch writer later.
    #[cfg(feature = "kafka")]
    Kafka(ActorHandle<crate::transport::kafka::Producer>),
}

/// Check a message and pass it on to the next stage (`Next`).
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
        let sent = match &self.next {
            Next::BatchWriter(writer) => writer.try_send(Commit(submission)),
            #[cfg(feature = "kafka")]
            Next::Kafka(producer) => producer.try_send(crate::transport::kafka::Produce(submission)),
        };
        if let Err(error) = sent {
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
