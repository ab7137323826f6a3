//! `BatchWriter` (`/root/chat/batch_writer`): group commit of validated messages.
//!
//! Owns: closing batches (on `pipeline.batch_max_messages`, `batch_max_bytes` or
//! `batch_max_delay`), committing each in one transaction with retries (exponential backoff, full
//! jitter, a timeout per attempt), acking only after the commit returned, and handing new
//! messages to delivery and the indexer.
//!
//! The `Ledger` holds every message between arrival and answer, outside the actor's state, so a
//! restart loses none: the batch that was committing when the writer crashed is split in two and
//! each half committed on its own (bisection), recursively, until a message that fails alone is
//! moved to dead letters and its sender told `rejected`. Because ids are deterministic, a half
//! whose first commit did land is reported as duplicates and acked with the original rows.
//!
//! Must never: ack a message that is not committed, or answer one twice.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;
use rand::Rng as _;

use super::delivery::{self, DeliveryHub};
use super::indexer::{Indexer, Poke};
use super::{Ack, SendError, Submission, CHAOS_POISON_MARKER, CHAOS_STALL_MARKER, CHAOS_UNANNOUNCED_MARKER};
use crate::chat::PipelineConfig;
use crate::resilience::{CircuitBreaker, Outcome};
use crate::storage::{ChatStore, CommitOutcome, DeadLetterKind, Inspect, NewDeadLetter, NewMessage, StorageError};
use crate::supervision::{ActorHandle, ActorRecord, BackoffPolicy, SupervisedMessage};

/// Announces stored messages to every process (the Kafka transport's feed) instead of handing
/// them to this process's delivery hub.
pub type Announcer = Arc<dyn Fn(Vec<Arc<crate::storage::StoredMessage>>) + Send + Sync>;

/// Store this message (it passed validation); the reply goes through the submission.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Commit(pub Submission);

impl SupervisedMessage for Commit {
    fn key(&self) -> Option<String> {
        Some(self.0.message.id.clone())
    }
}

/// Start the next commit if none is running (sent to itself, untracked, so a panic while
/// preparing a batch is never blamed on whichever message happened to fill it).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Kick;

/// Messages between arrival and answer. Created once by `chat::start` (in `Stages`), shared by
/// every incarnation of the writer.
#[derive(Clone)]
pub struct Ledger {
    state: Arc<Mutex<LedgerState>>,
    /// The writer's registry record, for the reason of its last crash.
    record: Arc<OnceLock<Arc<ActorRecord>>>,
}

#[derive(Default)]
struct LedgerState {
    /// The batch being filled.
    open: Vec<Submission>,
    open_bytes: usize,
    /// The batch whose commit is in progress; still here after a crash.
    committing: Option<Vec<Submission>>,
    /// Halves of batches that failed, committed before anything new.
    suspects: VecDeque<Vec<Submission>>,
    /// Poison messages whose dead letter is being written; answered once it is.
    rejecting: Vec<(Submission, String)>,
}

impl Ledger {
    pub fn new() -> Self {
        Self { state: Arc::default(), record: Arc::default() }
    }

    pub fn attach(&self, record: Arc<ActorRecord>) {
        let _ = self.record.set(record);
    }

    fn last_failure(&self) -> String {
        self.record
            .get()
            .and_then(|record| record.last_failure())
            .map(|failure| failure.message)
            .unwrap_or_else(|| "the batch writer failed".into())
    }

    fn idle(&self) -> bool {
        let state = self.state.lock();
        state.open.is_empty() && state.committing.is_none() && state.suspects.is_empty() && state.rejecting.is_empty()
    }
}

pub struct BatchWriter {
    pub(super) store: ChatStore,
    pub(super) config: PipelineConfig,
    pub(super) breaker: Arc<CircuitBreaker>,
    pub(super) delivery: ActorHandle<DeliveryHub>,
    pub(super) indexer: ActorHandle<Indexer>,
    pub(super) ledger: Ledger,
    pub(super) admission: Arc<super::Admission>,
    /// `chaos.enabled`: bodies containing `CHAOS_POISON_MARKER` make the commit job panic.
    pub(super) chaos: bool,
    /// A message that failed this many times while committed alone is poison
    /// (`supervisor.quarantine_after`): a failure of a larger batch proves nothing about one
    /// message, and a single failure alone may be a coincidence (an operator's chaos panic).
    pub(super) poison_after: u32,
    /// Set when asked to stop: finish what the ledger holds, then stop.
    pub(super) stopping: bool,
    /// With the Kafka transport, new messages go to every process through this.
    pub(super) announce: Option<Announcer>,
    /// Bytes of announcements not yet handled by delivery (bounded; see `AnnounceBudget`).
    pub(super) announcements: Arc<delivery::AnnounceBudget>,
}

impl Actor for BatchWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let crashed = self.ledger.state.lock().committing.take();
        if let Some(batch) = crashed {
            let reason = self.ledger.last_failure();
            tracing::warn!(messages = batch.len(), reason, "batch writer restarted mid-commit; bisecting that batch");
            self.bisect(batch, reason, ctx);
        }
        // Dead letters the previous incarnation was writing when it failed.
        let rejecting: Vec<String> =
            self.ledger.state.lock().rejecting.iter().map(|(submission, _)| submission.message.id.clone()).collect();
        for id in rejecting {
            self.write_dead_letter(id, ctx);
        }
        self.kick(ctx);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if self.ledger.idle() {
            return Running::Stop;
        }
        // Answer what was accepted before going: commit it (bounded by the shutdown timeout).
        self.stopping = true;
        self.kick(ctx);
        Running::Continue
    }
}

crate::supervised!(BatchWriter);

impl Handler<Commit> for BatchWriter {
    type Result = ();

    fn handle(&mut self, Commit(submission): Commit, ctx: &mut Self::Context) {
        let (full, first) = {
            let mut state = self.ledger.state.lock();
            // Backpressure while storage is slow or retrying: refuse rather than grow.
            if state.open.len() >= self.config.queue_capacity {
                drop(state);
                submission.answer(Err(SendError::Unavailable("the pipeline is full; send it again".into())));
                return;
            }
            state.open_bytes += submission.message.body.len();
            state.open.push(submission);
            (
                state.open.len() >= self.config.batch_max_messages || state.open_bytes >= self.config.batch_max_bytes,
                state.open.len() == 1,
            )
        };
        if full {
            ctx.notify(Kick);
        } else if first {
            ctx.run_later(self.config.batch_max_delay, |writer, ctx| writer.kick(ctx));
        }
    }
}

impl Handler<Kick> for BatchWriter {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Self::Context) {
        self.kick(ctx);
    }
}

impl BatchWriter {
    /// Starts committing the next batch (suspects first), unless a commit is running.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        let messages: Arc<[NewMessage]> = {
            let mut state = self.ledger.state.lock();
            if state.committing.is_some() {
                return;
            }
            let batch = match state.suspects.pop_front() {
                Some(batch) => batch,
                None if !state.open.is_empty() => {
                    // Admitted before the admission limit came down, and waited too long since:
                    // answered `unavailable` rather than stored late (see `chat::admission`).
                    // Only admitted sends expire: records the Kafka writer hands over (and
                    // operator replays) hold no admission ticket and nobody waits on them.
                    let expired = |s: &Submission| s.ticket.is_some() && self.admission.expired(s.received.elapsed());
                    if expired(&state.open[0]) {
                        let keep = state.open.iter().position(|s| !expired(s));
                        let keep = keep.unwrap_or(state.open.len());
                        let expired: Vec<Submission> = state.open.drain(..keep).collect();
                        state.open_bytes -= expired.iter().map(|s| s.message.body.len()).sum::<usize>();
                        drop(state);
                        for submission in expired {
                            let waited = submission.received.elapsed();
                            submission.answer(Err(self.admission.expired_error(waited)));
                        }
                        ctx.notify(Kick);
                        return;
                    }
                    // Messages that arrived during the previous commit may exceed one batch:
                    // take at most batch_max_messages / batch_max_bytes, leave the rest open.
                    let (mut count, mut bytes) = (0, 0);
                    for submission in &state.open {
                        if count == self.config.batch_max_messages
                            || (count > 0 && bytes + submission.message.body.len() > self.config.batch_max_bytes)
                        {
                            break;
                        }
                        count += 1;
                        bytes += submission.message.body.len();
                    }
                    state.open_bytes -= bytes;
                    state.open.drain(..count).collect()
                }
                None => {
                    drop(state);
                    if self.stopping {
                        ctx.stop();
                    }
                    return;
                }
            };
            let messages = batch.iter().map(|submission| submission.message.clone()).collect();
            state.committing = Some(batch);
            messages
        };
        let attempt =
            commit_with_retries(self.store.clone(), self.breaker.clone(), self.config.clone(), messages, self.chaos);
        ctx.spawn(attempt.into_actor(self).map(|result, writer, ctx| writer.finish(result, ctx)));
    }

    fn finish(&mut self, result: Result<Committed, StorageError>, ctx: &mut Context<Self>) {
        let batch = self.ledger.state.lock().committing.take().unwrap_or_default();
        match result {
            Ok(Committed { outcomes, took, attempts }) => {
                let metrics = crate::telemetry::metrics();
                metrics.batch_size.observe(batch.len() as f64);
                metrics.commit_duration.observe(took.as_secs_f64());
                if let Some(oldest) = batch.iter().map(|submission| submission.received).min() {
                    self.admission.committed(oldest.elapsed(), batch.len());
                }
                let mut stored = 0u64;
                let mut announced = Vec::with_capacity(outcomes.len());
                let mut rejected = Vec::new();
                for (submission, outcome) in batch.into_iter().zip(outcomes) {
                    let (message, duplicate) = match outcome {
                        CommitOutcome::Stored { message, duplicate } => (message, duplicate),
                        CommitOutcome::Rejected(reason) => {
                            tracing::error!(id = %submission.message.id, reason, "the store refused a message; moving it to dead letters");
                            rejected.push((submission, reason));
                            continue;
                        }
                        CommitOutcome::Failed(reason) => {
                            submission.answer(Err(SendError::Unavailable(reason)));
                            continue;
                        }
                    };
                    let ack = Ack {
                        client_msg_id: submission.message.client_msg_id.clone(),
                        id: message.id.clone(),
                        created_at: crate::storage::ms_to_rfc3339(message.created_at_ms),
                    };
                    // A duplicate is announced when this writer may have stored it itself without
                    // announcing it: an earlier attempt of this batch that timed out (its write
                    // still landed), or a commit this message was in when the writer crashed.
                    // A client's resend of a message stored long ago is not pushed again.
                    let ours = !duplicate || attempts > 1 || submission.crashes > 0;
                    stored += u64::from(!duplicate);
                    submission.answer(Ok(ack));
                    let unannounced = self.chaos && message.body.contains(CHAOS_UNANNOUNCED_MARKER);
                    if ours && !unannounced {
                        announced.push(Arc::new(message));
                    }
                }
                for (submission, reason) in rejected {
                    let id = submission.message.id.clone();
                    self.ledger.state.lock().rejecting.push((submission, reason));
                    self.write_dead_letter(id, ctx);
                }
                metrics.messages_stored.inc_by(stored);
                if !announced.is_empty() {
                    // Delivery and indexing are best effort here: both recover from storage
                    // (pending deliveries pushed by the backstop, the search watermark) if these
                    // are lost.
                    if let Some(announce) = &self.announce {
                        announce(announced);
                    } else if let Some(committed) = self.announcements.committed(announced) {
                        if let Err(error) = self.delivery.try_send(committed) {
                            metrics.deliveries_unannounced.inc();
                            tracing::warn!(%error, "delivery did not take committed messages; the backstop pushes them");
                        }
                    }
                }
                if stored > 0 {
                    let _ = self.indexer.try_send(Poke);
                }
            }
            Err(StorageError::Panicked(reason) | StorageError::Stalled(reason)) => self.bisect(batch, reason, ctx),
            Err(error) => {
                tracing::error!(%error, messages = batch.len(), "batch not stored after all attempts");
                for submission in batch {
                    submission.answer(Err(SendError::Unavailable(error.to_string())));
                }
            }
        }
        self.kick(ctx);
    }

    /// Splits a failed batch in two suspects (committed next). A message that failed alone is
    /// retried alone until it has failed `poison_after` times, then dead-lettered.
    fn bisect(&mut self, mut batch: Vec<Submission>, reason: String, ctx: &mut Context<Self>) {
        let alone = batch.len() == 1;
        for submission in &mut batch {
            submission.crashes += 1;
            submission.crashes_alone += u32::from(alone);
        }
        if batch.len() > 1 {
            let second = batch.split_off(batch.len() / 2);
            let mut state = self.ledger.state.lock();
            state.suspects.push_front(second);
            state.suspects.push_front(batch);
            return;
        }
        let Some(submission) = batch.pop() else { return };
        if submission.crashes_alone < self.poison_after {
            self.ledger.state.lock().suspects.push_front(vec![submission]);
            return;
        }
        tracing::error!(id = %submission.message.id, reason, "poison message moved to dead letters");
        let id = submission.message.id.clone();
        self.ledger.state.lock().rejecting.push((submission, reason));
        self.write_dead_letter(id, ctx);
    }

    /// Writes the dead letter of the rejecting message `id`, then answers its sender. The
    /// message stays in the ledger until then, so a crash meanwhile only repeats the write.
    fn write_dead_letter(&mut self, id: String, ctx: &mut Context<Self>) {
        let letter = {
            let state = self.ledger.state.lock();
            let Some((submission, reason)) = state.rejecting.iter().find(|(s, _)| s.message.id == id) else { return };
            NewDeadLetter {
                kind: DeadLetterKind::Message,
                reason: format!("storing it failed: {reason}"),
                attempts: submission.crashes,
                payload: serde_json::to_value(&submission.message).unwrap_or_default(),
            }
        };
        let store = self.store.clone();
        let write = async move { store.add_dead_letter(letter, crate::storage::now_ms()).await };
        ctx.spawn(write.into_actor(self).map(move |written, writer, ctx| {
            let taken = {
                let mut state = writer.ledger.state.lock();
                let position = state.rejecting.iter().position(|(s, _)| s.message.id == id);
                position.map(|position| state.rejecting.swap_remove(position))
            };
            let Some((submission, reason)) = taken else { return };
            match written {
                Ok(_) => {
                    crate::telemetry::dead_lettered("message");
                    submission.answer(Err(SendError::Rejected(reason)));
                }
                Err(error) => {
                    tracing::error!(%error, "could not record a dead letter");
                    submission.answer(Err(SendError::Unavailable(error.to_string())));
                }
            }
            if writer.stopping && writer.ledger.idle() {
                ctx.stop();
            }
        }));
    }
}

/// Bounds of the probe that tells a slow store from a slow batch (a quarter of
/// `pipeline.storage_timeout` in between).
const PROBE_TIMEOUT_MIN: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(1);

/// A batch the store answered.
struct Committed {
    /// One per message, in batch order.
    outcomes: Vec<CommitOutcome>,
    /// The successful attempt's duration.
    took: Duration,
    /// Attempts it took (1: no retry).
    attempts: u32,
}

/// One batch, attempted up to `max_attempts` times. A panic of the storage job is not retried:
/// it is returned at once so the batch is bisected. Nor is a commit that outlived its deadline
/// while the store answered a probe in time (`StorageError::Stalled`): the batch, not the store,
/// is at fault, and retrying it whole could stop the pipeline (a Kafka partition) for good.
async fn commit_with_retries(
    store: ChatStore,
    breaker: Arc<CircuitBreaker>,
    config: PipelineConfig,
    messages: Arc<[NewMessage]>,
    chaos: bool,
) -> Result<Committed, StorageError> {
    let backoff = BackoffPolicy { base: config.retry_base, max: config.retry_max, reset_after: Duration::ZERO };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = match breaker.try_acquire() {
            Err(_) => Err(StorageError::CircuitOpen),
            Ok(permit) => {
                let started = Instant::now();
                let inspect: Inspect = Box::new(move |message: &NewMessage| {
                    if chaos && message.body.contains(CHAOS_POISON_MARKER) {
                        panic!("chaos: poison message {} while writing its batch", message.id);
                    }
                });
                let commit = store.commit_batch_inspected(messages.clone(), crate::storage::now_ms(), inspect);
                let stall = chaos && messages.iter().any(|message| message.body.contains(CHAOS_STALL_MARKER));
                let commit = async move {
                    if stall {
                        std::future::pending::<()>().await;
                    }
                    commit.await
                };
                let result = match tokio::time::timeout(config.storage_timeout, commit).await {
                    Ok(result) => result,
                    Err(_) => {
                        // Is the store slow, or only this batch? A tiny write answered in time
                        // says the store is healthy.
                        let probe_timeout = (config.storage_timeout / 4).clamp(PROBE_TIMEOUT_MIN, PROBE_TIMEOUT_MAX);
                        match store.probe(probe_timeout).await {
                            Ok(took) => Err(StorageError::Stalled(format!(
                                "the batch outlived its {:?} deadline while the store answered a probe in {took:?}",
                                config.storage_timeout
                            ))),
                            Err(_) => Err(StorageError::Timeout),
                        }
                    }
                };
                // A poison message or batch says nothing about the database's health.
                let outcome = match &result {
                    Ok(_) | Err(StorageError::Panicked(_) | StorageError::Stalled(_)) => Outcome::Success,
                    Err(_) => Outcome::Failure,
                };
                breaker.record(permit, outcome);
                result.map(|outcomes| Committed { outcomes, took: started.elapsed(), attempts: attempt })
            }
        };
        match result {
            Ok(done) => return Ok(done),
            Err(error @ StorageError::Panicked(_)) => return Err(error),
            Err(error @ StorageError::Stalled(_)) => {
                crate::telemetry::metrics().commit_failures.inc();
                tracing::warn!(%error, messages = messages.len(), "a batch stalled while the store is healthy; bisecting it");
                return Err(error);
            }
            Err(error) => {
                crate::telemetry::metrics().commit_failures.inc();
                if attempt >= config.max_attempts {
                    return Err(error);
                }
                let ceiling = backoff.ceiling(attempt + 1).max(config.retry_base);
                let delay = rand::thread_rng().gen_range(Duration::ZERO..=ceiling);
                tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, "batch commit failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
