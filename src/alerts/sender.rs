//! The alert sender actor: groups queued alerts and delivers notifications to the sinks.
//!
//! Owns: the grouping state and, per HTTP sink, an outbox (bounded by `alerts.outbox_capacity`),
//! a rate limit (at most one request per `alerts.min_interval`, 1 s — Slack's limit for incoming
//! webhooks), the `Retry-After` pause after a 429, and retries with backoff for failures (up to
//! `alerts.max_attempts`). Restart type: permanent, on its own arbiter. State lost on a restart:
//! open groups (a continuing storm is notified once more at once) and undelivered notifications.
//! At shutdown it flushes the groups' pending counts and keeps delivering until the outboxes are
//! empty or its shutdown timeout ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::json;

use super::AlertsConfig;
use super::{queue, Grouper, Level, Notification};
use crate::telemetry::{metrics, ReasonLabels, SinkLabels};

/// How often group windows are checked.
const TICK: Duration = Duration::from_millis(100);
/// Pause after a 429 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured (a larger one is capped, not trusted blindly).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Times one notification is put back after a 429 before it is dropped.
const MAX_THROTTLED: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkKind {
    Slack,
    Webhook,
}

impl SinkKind {
    fn label(self) -> &'static str {
        match self {
            SinkKind::Slack => "slack",
            SinkKind::Webhook => "webhook",
        }
    }

    fn body(self, notification: &Notification) -> serde_json::Value {
        match self {
            SinkKind::Slack => json!({ "text": slack_text(notification) }),
            SinkKind::Webhook => json!({ "service": "rampart", "alert": notification }),
        }
    }
}

fn slack_text(notification: &Notification) -> String {
    let level = notification.level.as_str().to_uppercase();
    let mut text = format!("[{level}] rampart: {}", notification.summary);
    if notification.total > 1 {
        text.push_str(&format!(
            " ({} occurrence{} since the last notice, {} since {})",
            notification.count,
            if notification.count == 1 { "" } else { "s" },
            notification.total,
            crate::rfc3339::format(notification.first_at)
        ));
    }
    text
}

struct Pending {
    notification: Arc<Notification>,
    attempts: u32,
    throttled: u32,
}

struct HttpSink {
    kind: SinkKind,
    url: String,
    outbox: VecDeque<Pending>,
    next_allowed: Instant,
    in_flight: bool,
}

pub struct AlertSender {
    config: AlertsConfig,
    grouper: Grouper,
    sinks: Vec<HttpSink>,
    client: Option<awc::Client>,
    stopping: bool,
}

impl AlertSender {
    pub fn new(config: AlertsConfig) -> Self {
        let now = Instant::now();
        let sinks = [(SinkKind::Slack, &config.slack_webhook_url), (SinkKind::Webhook, &config.webhook_url)]
            .into_iter()
            .filter(|(_, url)| !url.is_empty())
            .map(|(kind, url)| HttpSink {
                kind,
                url: url.clone(),
                outbox: VecDeque::new(),
                next_allowed: now,
                in_flight: false,
            })
            .collect();
        Self {
            grouper: Grouper::new(config.group_window, config.repeat_interval),
            config,
            sinks,
            client: None,
            stopping: false,
        }
    }

    fn take_alerts(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        while let Some(alert) = queue().try_pop() {
            match self.grouper.observe(alert, now) {
                Ok(Some(notification)) => self.dispatch(notification),
                Ok(None) => {}
                Err(alert) => {
                    dropped("too_many_groups");
                    tracing::warn!(fingerprint = %alert.fingerprint, "alert dropped: too many distinct alerts open");
                }
            }
        }
        self.pump(ctx);
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        for notification in self.grouper.due(Instant::now()) {
            self.dispatch(notification);
        }
        self.pump(ctx);
    }

    /// The log always gets it; each HTTP sink queues it.
    fn dispatch(&mut self, notification: Notification) {
        log_notification(&notification);
        metrics().alerts_sent.get_or_create(&SinkLabels { sink: "log".into() }).inc();
        let notification = Arc::new(notification);
        for sink in &mut self.sinks {
            if sink.outbox.len() >= self.config.outbox_capacity {
                dropped("outbox_full");
                continue;
            }
            sink.outbox.push_back(Pending { notification: notification.clone(), attempts: 0, throttled: 0 });
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let timeout = self.config.timeout;
        let client = self.client.get_or_insert_with(|| awc::Client::builder().timeout(timeout).finish()).clone();
        for index in 0..self.sinks.len() {
            let sink = &mut self.sinks[index];
            if sink.in_flight || now < sink.next_allowed {
                continue;
            }
            let Some(pending) = sink.outbox.pop_front() else { continue };
            sink.in_flight = true;
            let request = client.post(&sink.url).send_json(&sink.kind.body(&pending.notification));
            ctx.spawn(request.into_actor(self).map(move |result, sender, ctx| {
                let outcome = match result {
                    Ok(response) => Delivery::Status(response.status().as_u16(), retry_after(&response)),
                    Err(error) => Delivery::Failed(error.to_string()),
                };
                sender.delivered(index, pending, outcome, ctx);
            }));
        }
    }

    fn delivered(&mut self, index: usize, mut pending: Pending, outcome: Delivery, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let max_attempts = self.config.max_attempts;
        let min_interval = self.config.min_interval;
        let Some(sink) = self.sinks.get_mut(index) else { return };
        sink.in_flight = false;
        sink.next_allowed = now + min_interval;
        match outcome {
            Delivery::Status(status, _) if (200..300).contains(&status) => {
                metrics().alerts_sent.get_or_create(&SinkLabels { sink: sink.kind.label().into() }).inc();
            }
            Delivery::Status(429, retry_after) => {
                let pause = retry_after.unwrap_or(DEFAULT_RETRY_AFTER).min(MAX_RETRY_AFTER);
                sink.next_allowed = now + pause.max(min_interval);
                pending.throttled += 1;
                if pending.throttled > MAX_THROTTLED {
                    dropped("failed");
                } else {
                    tracing::warn!(
                        sink = sink.kind.label(),
                        pause_ms = pause.as_millis() as u64,
                        "alert sink throttled us (429); pausing"
                    );
                    sink.outbox.push_front(pending);
                }
            }
            outcome => {
                let reason = match outcome {
                    Delivery::Status(status, _) => format!("HTTP {status}"),
                    Delivery::Failed(error) => error,
                };
                pending.attempts += 1;
                if pending.attempts >= max_attempts {
                    dropped("failed");
                    tracing::warn!(sink = sink.kind.label(), %reason, attempts = pending.attempts, "alert delivery failed; dropped");
                } else {
                    // 1 s, 2 s, 4 s … between attempts, never faster than the rate limit.
                    let backoff = Duration::from_secs(1 << pending.attempts.min(6)).max(min_interval);
                    sink.next_allowed = now + backoff;
                    tracing::warn!(sink = sink.kind.label(), %reason, attempts = pending.attempts, "alert delivery failed; will retry");
                    sink.outbox.push_front(pending);
                }
            }
        }
        if self.stopping && self.idle() {
            ctx.stop();
        } else {
            self.pump(ctx);
        }
    }

    fn idle(&self) -> bool {
        self.sinks.iter().all(|sink| sink.outbox.is_empty() && !sink.in_flight)
    }
}

enum Delivery {
    Status(u16, Option<Duration>),
    Failed(String),
}

fn retry_after<S>(response: &awc::ClientResponse<S>) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn dropped(reason: &'static str) {
    metrics().alerts_dropped.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
}

fn log_notification(notification: &Notification) {
    let labels: serde_json::Map<String, serde_json::Value> =
        notification.labels.iter().map(|(key, value)| ((*key).to_owned(), value.clone().into())).collect();
    let labels = serde_json::Value::Object(labels);
    macro_rules! alert_event {
        ($level:ident) => {
            tracing::$level!(
                target: "rampart::alerts",
                alert_level = notification.level.as_str(),
                alert_source = notification.source,
                fingerprint = %notification.fingerprint,
                count = notification.count,
                total = notification.total,
                labels = %labels,
                "ALERT: {}",
                notification.summary
            )
        };
    }
    match notification.level {
        Level::Critical | Level::Error => alert_event!(error),
        Level::Warning => alert_event!(warn),
    }
}

impl Actor for AlertSender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.add_stream(queue().wakeups());
        ctx.run_interval(TICK, |sender, ctx| sender.tick(ctx));
        self.take_alerts(ctx);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if !self.stopping {
            self.stopping = true;
            self.take_alerts(ctx);
            for notification in self.grouper.flush() {
                self.dispatch(notification);
            }
            // Shutdown does not wait out a rate limit or a backoff.
            let now = Instant::now();
            for sink in &mut self.sinks {
                sink.next_allowed = sink.next_allowed.min(now);
            }
            self.pump(ctx);
        }
        if self.idle() {
            Running::Stop
        } else {
            Running::Continue
        }
    }
}

impl StreamHandler<()> for AlertSender {
    fn handle(&mut self, (): (), ctx: &mut Self::Context) {
        self.take_alerts(ctx);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    /// Slack is HTTPS: the TLS connector (rustls on ring) must build without a panic. Port 1 on
    /// loopback refuses the connection, so this never leaves the machine.
    #[actix_rt::test]
    async fn https_requests_fail_cleanly_rather_than_panic() {
        let client = awc::Client::builder().timeout(Duration::from_secs(2)).finish();
        let result = client.post("https://127.0.0.1:1/hook").send_json(&json!({"text": "x"})).await;
        assert!(result.is_err());
    }

    #[test]
    fn slack_text_carries_the_count() {
        let notification = Notification {
            level: Level::Critical,
            source: "panic",
            fingerprint: "f".into(),
            summary: "actor panic in /root/x".into(),
            labels: vec![],
            count: 999,
            total: 1000,
            first_at: SystemTime::UNIX_EPOCH,
            last_at: SystemTime::UNIX_EPOCH,
        };
        let text = slack_text(&notification);
        assert!(text.starts_with("[CRITICAL] rampart: actor panic in /root/x"), "{text}");
        assert!(text.contains("999 occurrences since the last notice, 1000 since 1970-01-01T00:00:00"), "{text}");
        let body = SinkKind::Webhook.body(&notification);
        assert_eq!(body["alert"]["count"], 999);
        assert_eq!(body["alert"]["level"], "critical");
    }
}
