//! `Session` (`/root/chat/sessions/ws-<n>`): one per WebSocket connection, transient.
//!
//! Owns: the client's protocol state — rate limit, consecutive-error count, heartbeat — and the
//! handling of each text frame (`send`, `delivered`, `ping`). The socket itself is not its state:
//! the `/ws` handler's reader task feeds frames in as messages and the connection's `Outbox`
//! carries frames out, so a session that panics is restarted with fresh state behind the same
//! open socket (the frame being handled gets an `internal` error; acks of messages already
//! passed on still arrive, because the pipeline writes them to the connection directly).
//!
//! Ends when the socket closes (`Disconnected`), on heartbeat timeout, after too many invalid
//! frames (1008), or at shutdown (close 1001).

use std::sync::Arc;

use actix::prelude::*;

use super::delivery::{Confirm, DeliveryHub};
use super::presence::Connection;
use super::protocol::{self, ClientFrame, FrameError, ServerFrame};
use super::validator::{Validate, Validator};
use super::{Reply, Submission};
use crate::chat::WsConfig;
use crate::socket::Outbound;
use crate::socket::RateLimiter;
pub use crate::socket::{Disconnected, Inbound};
use crate::supervision::ActorHandle;

/// What every session needs; built once by the `/ws` handler's caller.
pub struct SessionDeps {
    pub validator: ActorHandle<Validator>,
    pub delivery: ActorHandle<DeliveryHub>,
    pub admission: Arc<super::Admission>,
    pub config: WsConfig,
}

pub struct Session {
    connection: Arc<Connection>,
    deps: Arc<SessionDeps>,
    limiter: RateLimiter,
    consecutive_errors: u32,
}

impl Session {
    pub fn new(connection: Arc<Connection>, deps: Arc<SessionDeps>) -> Self {
        let limiter = RateLimiter::new(deps.config.rate_limit_per_sec, deps.config.burst);
        Self { connection, deps, limiter, consecutive_errors: 0 }
    }

    fn reject(&mut self, error: FrameError, ctx: &mut Context<Self>) {
        self.connection.outbox.text(protocol::error_frame(&error));
        self.consecutive_errors += 1;
        if self.consecutive_errors >= self.deps.config.max_consecutive_errors {
            self.connection.outbox.close(1008, "too many invalid frames");
            ctx.stop();
        }
    }

    fn send(&mut self, conversation: String, client_msg_id: String, body: String) {
        if !self.limiter.try_take() {
            let mut error = FrameError::new("rate_limited", "too many messages; slow down");
            error.client_msg_id = Some(client_msg_id);
            crate::telemetry::message_rejected("rate_limited");
            self.connection.outbox.text(protocol::error_frame(&error));
            return;
        }
        // Overloaded: refuse before the message costs anything downstream.
        let ticket = match self.deps.admission.admit() {
            Ok(ticket) => ticket,
            Err(refused) => {
                let mut error = FrameError::new(refused.code(), refused.to_string());
                error.client_msg_id = Some(client_msg_id);
                crate::telemetry::message_rejected(refused.code());
                self.connection.outbox.text(protocol::error_frame(&error));
                return;
            }
        };
        let sender = self.connection.user.clone();
        let message = super::new_message(sender, conversation, client_msg_id, body);
        let submission =
            Submission::with_reply(message, Reply::Connection(self.connection.clone())).with_ticket(ticket);
        if let Err(error) = self.deps.validator.try_send(Validate(submission)) {
            // The dropped submission already told the client `unavailable`.
            tracing::debug!(%error, "validator refused a message");
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let timeout = self.deps.config.client_timeout;
        ctx.run_interval(self.deps.config.heartbeat_interval, move |session, ctx| {
            if session.connection.last_seen.lock().elapsed() > timeout {
                tracing::info!(user = %session.connection.user, "websocket heartbeat timed out");
                session.connection.outbox.close(1001, "heartbeat timeout");
                ctx.stop();
            } else {
                session.connection.outbox.push(Outbound::Ping);
            }
        });
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        // A no-op when the socket already closed; at shutdown this is the client's 1001.
        self.connection.outbox.close(1001, "server going away");
        Running::Stop
    }
}

crate::supervised!(Session);

impl Handler<Inbound> for Session {
    type Result = ();

    fn handle(&mut self, inbound: Inbound, ctx: &mut Self::Context) {
        let text = match inbound {
            Inbound::Text(text) => text,
            Inbound::Binary => {
                let error =
                    FrameError::new("unsupported_frame", "binary frames are not supported; send JSON text frames");
                return self.reject(error, ctx);
            }
        };
        match protocol::parse(&text) {
            Err(error) => self.reject(error, ctx),
            Ok(frame) => {
                self.consecutive_errors = 0;
                match frame {
                    ClientFrame::Ping => {
                        self.connection.outbox.text(ServerFrame::Pong.to_json());
                    }
                    ClientFrame::Delivered { id } => {
                        let confirm = Confirm { user: self.connection.user.clone(), id };
                        if let Err(error) = self.deps.delivery.try_send(confirm) {
                            tracing::warn!(%error, "delivery did not take a confirmation; the message will come again");
                        }
                    }
                    ClientFrame::Send { conversation, client_msg_id, body } => {
                        self.send(conversation, client_msg_id, body)
                    }
                }
            }
        }
    }
}

impl Handler<Disconnected> for Session {
    type Result = ();

    fn handle(&mut self, _: Disconnected, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
