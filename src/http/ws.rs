//! `GET /ws`: the WebSocket transport of protocol v1.
//!
//! Owns: the handshake (actix-web-actors), frame decoding and reassembly, the size limit
//! (`ws.max_frame_bytes` → close 1009), control frames, and the two halves of each socket:
//! - the reader task decodes client frames and hands text to the connection's `Session` actor,
//!   one at a time (so a slow session pushes back on the socket, not on memory);
//! - the response body drains the connection's `Outbox` into encoded frames.
//!
//! Ownership: the response body owns the reader task; the reader owns the presence
//! registration and the link that stops the session. When the socket ends, whichever side
//! notices first ends, and dropping it unwinds the rest: presence entry removed, session
//! stopped. Nothing here is a supervised actor: sockets cannot be restarted, sessions can.

use std::sync::Arc;
use std::time::Instant;

use actix::Handler;
use actix_codec::{Decoder as _, Encoder as _};
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, Item, Message, ProtocolError};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use super::chat::authenticate;
use super::error::ApiError;
use super::AppState;
use crate::chat::presence::{Connection, Outbound, Outbox, OutboxReceiver};
use crate::chat::protocol::{error_frame, FrameError};
use crate::chat::session::Session;
use crate::socket::{Disconnected, Inbound};
use crate::supervision::{ActorHandle, CallError, ChildSpec, RestartType, SupervisedActor, Tracked};
use crate::tasks::OwnedTask;

/// The client side of a socket as the reader sees it: where replies go, when a frame last came.
pub(super) trait Socket {
    fn outbox(&self) -> &Outbox;
    fn touch(&self);
}

impl Socket for Connection {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn touch(&self) {
        *self.last_seen.lock() = Instant::now();
    }
}

/// The WebSocket of protocol v1 (see README): authenticate with `Authorization: Bearer` or
/// `?token=` (browsers), then upgrade.
#[utoipa::path(
    get, path = "/ws", tag = "chat", operation_id = "chat_websocket",
    security(("user_jwt" = [])),
    params(("token" = Option<String>, Query, description = "The JWT, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol v1"),
        (status = 400, description = "Not a WebSocket handshake", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 503, description = "Not accepting connections (shutting down, delivery unavailable)", body = super::error::ErrorBody),
    )
)]
pub async fn upgrade(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let chat = state.chat.clone();
    let user = authenticate(&request, &chat, true).await?;
    let mut response = actix_web_actors::ws::handshake(&request)
        .map_err(|error| ApiError::BadRequest(format!("not a WebSocket handshake: {error}")))?;
    let config = &chat.config.ws;
    let (outbox, outbox_receiver) = Outbox::new(config.outbound_capacity);
    let guard = chat.presence.connect(user.clone(), outbox);
    let connection = guard.connection.clone();
    let factory_connection = connection.clone();
    let deps = chat.session_deps.clone();
    let session = chat
        .sessions
        .spawn(
            ChildSpec::new(format!("ws-{}", connection.id), move || {
                Session::new(factory_connection.clone(), deps.clone())
            })
            .restart(RestartType::Transient),
        )
        .map_err(|error| ApiError::Unavailable(format!("not accepting connections: {error}")))?;
    if let Err(error) = chat.delivery.try_send(crate::chat::Attach(connection.clone())) {
        // Without a sync the client would miss its backlog: refuse rather than half-serve.
        return Err(ApiError::Unavailable(format!("delivery is not available: {error}")));
    }
    crate::action!("ws", "connected", user = user);
    let reader = crate::tasks::spawn_owned(
        "ws.reader",
        read_frames(payload, connection, guard, ActorLink(session), config.max_frame_bytes),
    );
    Ok(response.streaming(outbound(outbox_receiver, reader)))
}

/// Stops the actor serving a socket when the reader ends or is dropped.
pub(super) struct ActorLink<A: SupervisedActor + Handler<Tracked<Disconnected>>>(pub(super) ActorHandle<A>);

impl<A: SupervisedActor + Handler<Tracked<Disconnected>>> Drop for ActorLink<A> {
    fn drop(&mut self) {
        let _ = self.0.do_send(Disconnected);
    }
}

/// The response body: outbox frames, encoded, until a close frame was written.
pub(super) fn outbound(
    receiver: OutboxReceiver,
    reader: OwnedTask<()>,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    futures_util::stream::unfold(Some((receiver, Codec::new(), reader)), |state| async move {
        let (mut receiver, mut codec, reader) = state?;
        let frame = receiver.next().await?;
        let (message, last) = match frame {
            Outbound::Text(text) => (Message::Text(text.into()), false),
            Outbound::Ping => (Message::Ping(Bytes::new()), false),
            Outbound::Pong(payload) => (Message::Pong(payload), false),
            Outbound::Close(code, reason) => {
                (Message::Close(Some(CloseReason { code: CloseCode::from(code), description: Some(reason) })), true)
            }
        };
        let mut buffer = BytesMut::new();
        if codec.encode(message, &mut buffer).is_err() {
            return None;
        }
        let next = if last { None } else { Some((receiver, codec, reader)) };
        Some((Ok(buffer.freeze()), next))
    })
}

/// Decodes client frames until the socket closes or breaks the protocol, handing each complete
/// message to the actor serving the socket, one at a time. `guard` lives as long as the reader
/// (the chat's presence registration).
pub(super) async fn read_frames<S, G, A>(
    mut payload: web::Payload,
    connection: Arc<S>,
    guard: G,
    session: ActorLink<A>,
    max_frame_bytes: usize,
) where
    S: Socket,
    A: SupervisedActor + Handler<Tracked<Inbound>> + Handler<Tracked<Disconnected>>,
{
    let _guard = guard;
    let mut codec = Codec::new().max_size(max_frame_bytes);
    let mut buffer = BytesMut::new();
    // A fragmented message being reassembled: (is text, bytes so far).
    let mut fragments: Option<(bool, BytesMut)> = None;
    loop {
        loop {
            let frame = match codec.decode(&mut buffer) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(ProtocolError::Overflow) => {
                    return too_large(&*connection, max_frame_bytes);
                }
                Err(error) => {
                    connection.outbox().close(1002, &format!("protocol error: {error}"));
                    return;
                }
            };
            connection.touch();
            let complete = match frame {
                Frame::Text(bytes) => Some((true, bytes)),
                Frame::Binary(bytes) => Some((false, bytes)),
                Frame::Continuation(item) => match (item, fragments.take()) {
                    (Item::FirstText(bytes), None) => {
                        fragments = Some((true, BytesMut::from(&bytes[..])));
                        None
                    }
                    (Item::FirstBinary(bytes), None) => {
                        fragments = Some((false, BytesMut::from(&bytes[..])));
                        None
                    }
                    (Item::Continue(bytes), Some((text, mut so_far))) => {
                        so_far.extend_from_slice(&bytes);
                        if so_far.len() > max_frame_bytes {
                            return too_large(&*connection, max_frame_bytes);
                        }
                        fragments = Some((text, so_far));
                        None
                    }
                    (Item::Last(bytes), Some((text, mut so_far))) => {
                        so_far.extend_from_slice(&bytes);
                        if so_far.len() > max_frame_bytes {
                            return too_large(&*connection, max_frame_bytes);
                        }
                        Some((text, so_far.freeze()))
                    }
                    _ => {
                        connection.outbox().close(1002, "protocol error: unexpected continuation frame");
                        return;
                    }
                },
                Frame::Ping(bytes) => {
                    connection.outbox().push(Outbound::Pong(bytes));
                    None
                }
                Frame::Pong(_) => None,
                Frame::Close(reason) => {
                    let code = reason.map_or(1000, |reason| u16::from(reason.code));
                    // Echo the client's code (1005 "no status" cannot be sent back: use 1000).
                    connection.outbox().close(if code == 1005 { 1000 } else { code }, "");
                    return;
                }
            };
            let Some((is_text, bytes)) = complete else { continue };
            let inbound = if is_text {
                match String::from_utf8(bytes.to_vec()) {
                    Ok(text) => Inbound::Text(text),
                    Err(_) => {
                        connection.outbox().close(1007, "text frame is not valid UTF-8");
                        return;
                    }
                }
            } else {
                Inbound::Binary
            };
            match session.0.send(inbound).await {
                Ok(()) => {}
                Err(CallError::Stopped { .. }) => return,
                Err(error) => {
                    let code = if matches!(error, CallError::Failed { .. }) { "internal" } else { "unavailable" };
                    let error = FrameError::new(
                        code,
                        "the session failed while handling this frame and was restarted; \
                         if it was a send, send it again (resends are idempotent)",
                    );
                    connection.outbox().text(error_frame(&error));
                }
            }
        }
        match payload.next().await {
            Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
            Some(Err(_)) | None => return,
        }
    }
}

fn too_large(connection: &impl Socket, max_frame_bytes: usize) {
    let error = FrameError::new("too_large", format!("frame larger than {max_frame_bytes} bytes"));
    connection.outbox().text(error_frame(&error));
    connection.outbox().close(1009, "message too big");
}
