//! `CleanupJob` (`/root/chat/cleanup`): every `delivery.cleanup_interval`, deliveries pushed but
//! not confirmed within `delivery.stale_after` go back to pending (and are pushed again to their
//! recipient if online), or to dead letters after `delivery.max_attempts`.
//!
//! Works in transactions of `delivery.cleanup_batch` records until none is left. A panic while
//! examining one record dead-letters that record alone; a failing or panicking query ends this
//! pass (logged) and the next pass runs on schedule. A panic of the actor itself restarts it,
//! and `started` sets the schedule up again.
//!
//! State: whether a pass is running (so passes never overlap). Nothing to lose on a crash.

use actix::prelude::*;

use super::delivery::{DeliveryHub, Redeliver};
use crate::chat::DeliveryConfig;
use crate::storage::ChatStore;
use crate::supervision::ActorHandle;

pub struct CleanupJob {
    store: ChatStore,
    delivery: ActorHandle<DeliveryHub>,
    config: DeliveryConfig,
    running: bool,
}

impl CleanupJob {
    pub fn new(store: ChatStore, delivery: ActorHandle<DeliveryHub>, config: DeliveryConfig) -> Self {
        Self { store, delivery, config, running: false }
    }

    fn pass(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        let store = self.store.clone();
        let config = self.config.clone();
        let delivery = self.delivery.clone();
        let work = async move {
            let stale_ms = i64::try_from(config.stale_after.as_millis()).unwrap_or(i64::MAX);
            loop {
                let now = crate::storage::now_ms();
                let report = store
                    .requeue_stale(now.saturating_sub(stale_ms), config.max_attempts, config.cleanup_batch, now)
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
                        tracing::warn!(%error, "delivery did not take requeued recipients; they get them on reconnect");
                    }
                }
                if report.examined < config.cleanup_batch as usize {
                    return Ok::<_, crate::storage::StorageError>(());
                }
            }
        };
        ctx.spawn(work.into_actor(self).map(|result, job, _| {
            job.running = false;
            if let Err(error) = result {
                tracing::error!(%error, "delivery cleanup pass failed; the next one runs on schedule");
            }
        }));
    }
}

impl Actor for CleanupJob {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.cleanup_interval, |job, ctx| job.pass(ctx));
    }
}

crate::supervised!(CleanupJob);
