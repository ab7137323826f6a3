//! `CleanupJob` (`/root/chat/cleanup`): every `delivery.cleanup_interval`,
//! - deliveries pushed but not confirmed within `delivery.stale_after` go back to pending (and
//!   are pushed again to their recipient if online), or to dead letters after
//!   `delivery.max_attempts`;
//! - the delivery backstop: users with a live connection to this process who have pending
//!   deliveries of messages stored more than `delivery.stale_after` ago are caught up. Their
//!   live push was lost somewhere between commit and connection (a crash, a full mailbox, a lost
//!   Kafka feed event, another process storing the message without a feed); this bounds the
//!   delay to `stale_after` plus one interval.
//!
//! Works in transactions of `delivery.cleanup_batch` records until none is left. A panic while
//! examining one record dead-letters that record alone; a failing or panicking query ends this
//! pass (logged) and the next pass runs on schedule. A panic of the actor itself restarts it,
//! and `started` sets the schedule up again.
//!
//! State: whether a pass is running (so passes never overlap). Nothing to lose on a crash.

use std::sync::Arc;

use actix::prelude::*;

use super::delivery::{DeliveryHub, Redeliver};
use super::presence::Presence;
use crate::chat::DeliveryConfig;
use crate::storage::{ChatStore, StorageError};
use crate::supervision::ActorHandle;

pub struct CleanupJob {
    store: ChatStore,
    delivery: ActorHandle<DeliveryHub>,
    presence: Arc<Presence>,
    config: DeliveryConfig,
    running: bool,
}

impl CleanupJob {
    pub fn new(
        store: ChatStore,
        delivery: ActorHandle<DeliveryHub>,
        presence: Arc<Presence>,
        config: DeliveryConfig,
    ) -> Self {
        Self { store, delivery, presence, config, running: false }
    }

    fn pass(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        let (store, config, delivery, presence) =
            (self.store.clone(), self.config.clone(), self.delivery.clone(), self.presence.clone());
        let work = async move {
            requeue_stale(&store, &config, &delivery).await?;
            backstop(&store, &config, &delivery, &presence).await
        };
        ctx.spawn(work.into_actor(self).map(|result, job, _| {
            job.running = false;
            if let Err(error) = result {
                tracing::error!(%error, "delivery cleanup pass failed; the next one runs on schedule");
            }
        }));
    }
}

fn stale_ms(config: &DeliveryConfig) -> i64 {
    i64::try_from(config.stale_after.as_millis()).unwrap_or(i64::MAX)
}

/// Claims older than `stale_after` back to pending (or dead letters); their recipients are
/// caught up.
async fn requeue_stale(
    store: &ChatStore,
    config: &DeliveryConfig,
    delivery: &ActorHandle<DeliveryHub>,
) -> Result<(), StorageError> {
    loop {
        let now = crate::storage::now_ms();
        let report = store
            .requeue_stale(now.saturating_sub(stale_ms(config)), config.max_attempts, config.cleanup_batch, now)
            .await?;
        let metrics = crate::telemetry::metrics();
        metrics.deliveries_requeued.inc_by(report.requeued.len() as u64);
        for _ in 0..report.dead_lettered {
            crate::telemetry::dead_lettered("delivery");
        }
        if !report.requeued.is_empty() || report.dead_lettered > 0 {
            tracing::info!(
                recipients = report.requeued.len(),
                dead_lettered = report.dead_lettered,
                "cleanup requeued stale deliveries"
            );
        }
        if !report.requeued.is_empty() {
            if let Err(error) = delivery.try_send(Redeliver(report.requeued)) {
                tracing::warn!(%error, "delivery did not take requeued recipients; the next pass finds them");
            }
        }
        if report.examined < config.cleanup_batch as usize {
            return Ok(());
        }
    }
}

/// Users live here with pending deliveries of messages stored over `stale_after` ago: their
/// push was lost; catch them up.
async fn backstop(
    store: &ChatStore,
    config: &DeliveryConfig,
    delivery: &ActorHandle<DeliveryHub>,
    presence: &Presence,
) -> Result<(), StorageError> {
    let live = presence.live_users();
    if live.is_empty() {
        return Ok(());
    }
    let cutoff = crate::storage::now_ms().saturating_sub(stale_ms(config));
    let missed = store.stale_pending(live, cutoff).await?;
    if missed.is_empty() {
        return Ok(());
    }
    tracing::info!(
        recipients = missed.len(),
        "connected users have deliveries that were never pushed; catching them up"
    );
    if let Err(error) = delivery.try_send(Redeliver(missed)) {
        tracing::warn!(%error, "delivery did not take the backstop's recipients; the next pass finds them");
    }
    Ok(())
}

impl Actor for CleanupJob {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.cleanup_interval, |job, ctx| job.pass(ctx));
    }
}

crate::supervised!(CleanupJob);
