//! What the WebSocket endpoints (`/ws` chat sessions, `/rtc` SFU peers) share on the actor side:
//! the frames a socket's reader hands to the actor serving it, the frames waiting to be written
//! to it (`Outbox`, bounded in bytes per connection and for the whole process), the
//! per-connection rate limit and the per-user connection count.
//!
//! Owns: nothing of a socket itself (decoding, reassembly, writing, close codes: `http::socket`).

use std::time::Instant;

use actix::prelude::*;

use crate::supervision::SupervisedMessage;

mod outbox;
mod per_user;

pub use outbox::{Outbound, Outbox, OutboxBudget, OutboxReceiver, Paced};
pub use per_user::{PerUser, PerUserSlot};

/// A frame from the client, already reassembled and size-checked by the reader.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Inbound {
    Text(String),
    /// A binary message (unsupported: both protocols are JSON text).
    Binary,
}
impl SupervisedMessage for Inbound {}

/// The socket ended: stop for good.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Disconnected;
impl SupervisedMessage for Disconnected {}

/// Token bucket: `rate` tokens per second, at most `burst` saved up.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self { rate: f64::from(rate), burst: f64::from(burst), tokens: f64::from(burst), refilled: Instant::now() }
    }

    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
