//! The identity provider's key set (JWKS), fetched over HTTP and cached.
//!
//! Owns: the cached keys (swapped whole on each successful fetch), the refresh rate limit, and
//! the `JwksRefresher` actor that refreshes on a schedule. A token with an unknown `kid` makes
//! its request trigger one refresh (at most one per `auth.jwks_min_refresh_interval`, shared by
//! every worker); that request waits for it at most `auth.jwks_fetch_timeout`, on its own HTTP
//! worker, never on an actor's thread. Must never: drop the last good keys because a fetch
//! failed or returned nothing usable (logged and counted in `rampart_jwks_refreshes_total`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::{Mutex, RwLock};

use super::keys::{parse_jwks, VerifyingKey};
use crate::telemetry::{metrics, OutcomeLabels};

/// Largest JWKS document read (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1 << 20;

pub struct Jwks {
    url: String,
    fetch_timeout: Duration,
    min_refresh_interval: Duration,
    /// The last good key set; replaced whole by a successful fetch.
    keys: RwLock<Arc<Vec<VerifyingKey>>>,
    /// When a fetch last started (successful or not): the rate limit for unknown-`kid` refreshes.
    last_attempt: Mutex<Option<Instant>>,
    /// Held while fetching, so concurrent requests share one fetch.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(url: String, fetch_timeout: Duration, min_refresh_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            url,
            fetch_timeout,
            min_refresh_interval,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The current key set.
    pub fn keys(&self) -> Arc<Vec<VerifyingKey>> {
        self.keys.read().clone()
    }

    fn knows(&self, kid: &str) -> bool {
        self.keys.read().iter().any(|key| key.kid.as_deref() == Some(kid))
    }

    /// Fetches the key set now (one fetch at a time); on failure the last good keys stay.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _fetching = self.fetching.lock().await;
        self.fetch_and_swap().await
    }

    /// A token names `kid`, which the cached set lacks: refresh once, unless a fetch started
    /// less than `min_refresh_interval` ago. Returns within `fetch_timeout` whatever happens.
    pub async fn refresh_for_unknown(&self, kid: &str) {
        let attempt = async {
            // Waits for a fetch in flight (the one at start, say), which may bring the key.
            let _fetching = self.fetching.lock().await;
            if self.knows(kid) || self.recently_attempted() {
                return;
            }
            let _ = self.fetch_and_swap().await;
        };
        if tokio::time::timeout(self.fetch_timeout, attempt).await.is_err() {
            tracing::warn!(url = %self.url, timeout_ms = self.fetch_timeout.as_millis() as u64, "JWKS refresh timed out; using the cached keys");
        }
    }

    fn recently_attempted(&self) -> bool {
        self.last_attempt.lock().is_some_and(|at| at.elapsed() < self.min_refresh_interval)
    }

    async fn fetch_and_swap(&self) -> Result<usize, String> {
        *self.last_attempt.lock() = Some(Instant::now());
        let outcome = match tokio::time::timeout(self.fetch_timeout, self.fetch()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {}ms", self.fetch_timeout.as_millis())),
        };
        match outcome {
            Ok(keys) => {
                let count = keys.len();
                *self.keys.write() = Arc::new(keys);
                metrics().jwks_refreshes.get_or_create(&OutcomeLabels::of("ok")).inc();
                metrics().jwks_keys.set(count as i64);
                tracing::info!(url = %self.url, keys = count, "JWKS fetched");
                Ok(count)
            }
            Err(error) => {
                metrics().jwks_refreshes.get_or_create(&OutcomeLabels::of("error")).inc();
                let kept = self.keys.read().len();
                tracing::warn!(url = %self.url, %error, kept_keys = kept, "JWKS fetch failed; keeping the last good keys");
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<VerifyingKey>, String> {
        let client = awc::Client::builder().timeout(self.fetch_timeout).finish();
        let mut response = client
            .get(&self.url)
            .insert_header(("Accept", "application/json"))
            .send()
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let body = response.body().limit(MAX_JWKS_BYTES).await.map_err(|error| format!("reading the body: {error}"))?;
        let (keys, skipped) = parse_jwks(&body)?;
        for why in skipped {
            tracing::warn!(url = %self.url, skipped = %why, "JWKS key skipped");
        }
        if keys.is_empty() {
            return Err("the key set has no usable signing key".into());
        }
        Ok(keys)
    }
}

/// Refreshes the key set at start and every `auth.jwks_refresh_interval` (so rotated-out keys
/// stop verifying). Restart type: permanent. State: none (the cache outlives it). A fetch in
/// flight when it crashes is dropped; the next tick fetches again.
pub struct JwksRefresher {
    jwks: Arc<Jwks>,
    interval: Duration,
}

impl JwksRefresher {
    pub fn new(jwks: Arc<Jwks>, interval: Duration) -> Self {
        Self { jwks, interval }
    }

    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let jwks = self.jwks.clone();
        ctx.spawn(
            async move {
                let _ = jwks.refresh().await;
            }
            .into_actor(self),
        );
    }
}

impl Actor for JwksRefresher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.refresh(ctx);
        ctx.run_interval(self.interval, |refresher, ctx| refresher.refresh(ctx));
    }
}

crate::supervised!(JwksRefresher);
