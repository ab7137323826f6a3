//! `Indexer` (`/root/chat/indexer`): feeds the search index from committed messages.
//!
//! Owns: nothing durable — progress is the watermark (in the embedded index itself, or for an
//! external engine in the chat store), so after a crash or restart the indexer continues from
//! the last indexed message; indexing is by message id, so repeating a step is harmless. Poked
//! after each commit and polling every `search.poll_interval`; one step at a time.
//!
//! A message the engine refuses for good (a mapping error) is dead-lettered (kind `index`)
//! before the watermark moves past it; what is neither indexed nor refused for good (the engine
//! down, or busy past its retries) keeps the watermark where it is.
//!
//! Must never: slow down or fail ingestion. It reads committed messages from a reader
//! connection and writes only to the search engine (and its watermark); failures are logged,
//! counted and retried on the next poll, behind the `search` circuit breaker.

use std::sync::Arc;

use actix::prelude::*;

use crate::chat::SearchConfig;
use crate::resilience::{CircuitBreaker, Outcome};
use crate::storage::{ChatStore, DeadLetterKind, NewDeadLetter, SearchStore, StorageError};
use crate::supervision::SupervisedMessage;

/// New messages were committed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Poke;
impl SupervisedMessage for Poke {}

pub struct Indexer {
    store: ChatStore,
    search: SearchStore,
    config: SearchConfig,
    breaker: Arc<CircuitBreaker>,
    running: bool,
    /// Poked while running: run again right after.
    again: bool,
}

impl Indexer {
    pub fn new(store: ChatStore, search: SearchStore, config: SearchConfig, breaker: Arc<CircuitBreaker>) -> Self {
        Self { store, search, config, breaker, running: false, again: false }
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.again = true;
            return;
        }
        let Ok(permit) = self.breaker.try_acquire() else {
            return; // open: the next poll tries again
        };
        self.running = true;
        self.again = false;
        let (store, search, batch) = (self.store.clone(), self.search.clone(), self.config.index_batch);
        let catch_up = async move {
            loop {
                let messages = search.pending(&store, batch).await?;
                let count = messages.len();
                if count == 0 {
                    return Ok::<_, StorageError>(());
                }
                let outcome = search.index(messages.clone()).await?;
                crate::telemetry::metrics().search_indexed.inc_by(outcome.indexed as u64);
                for (message, reason) in outcome.rejected {
                    tracing::error!(id = %message.id, reason, "the search engine refused a message; dead-lettered");
                    let letter = NewDeadLetter {
                        kind: DeadLetterKind::Index,
                        reason: format!("the search engine refused it: {reason}"),
                        attempts: 1,
                        payload: serde_json::json!({"message_id": message.id}),
                    };
                    store.add_dead_letter(letter, crate::storage::now_ms()).await?;
                    crate::telemetry::dead_lettered("index");
                }
                if let Some(through) = outcome.through {
                    search.advance(through, &messages).await?;
                }
                if let Some(error) = outcome.incomplete {
                    return Err(error);
                }
                if count < batch as usize {
                    return Ok(());
                }
            }
        };
        ctx.spawn(catch_up.into_actor(self).map(move |result, indexer, ctx| {
            indexer.running = false;
            match result {
                Ok(()) => indexer.breaker.record(permit, Outcome::Success),
                Err(error) => {
                    indexer.breaker.record(permit, Outcome::Failure);
                    crate::telemetry::metrics().search_index_failures.inc();
                    tracing::warn!(%error, "indexing failed; retrying on the next poll");
                    return;
                }
            }
            if indexer.again {
                indexer.run(ctx);
            }
        }));
    }
}

impl Actor for Indexer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.run(ctx);
        ctx.run_interval(self.config.poll_interval, |indexer, ctx| indexer.run(ctx));
    }
}

crate::supervised!(Indexer);

impl Handler<Poke> for Indexer {
    type Result = ();

    fn handle(&mut self, _: Poke, ctx: &mut Self::Context) {
        self.run(ctx);
    }
}
