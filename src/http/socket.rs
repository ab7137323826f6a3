//! The WebSocket connections of `/ws` and `/rtc` on the upgraded TCP stream itself.
//!
//! Owns: serving each socket once its handshake was answered `101` — actix-http hands the
//! upgraded connection to `upgrade::serve`, which gives it to the handler's `SocketPlan` — with
//! two halves:
//! - the reader task decodes client frames (actix-http's codec, `ws.max_frame_bytes` → close
//!   1009), reassembles fragments, answers pings and hands each complete message to the actor
//!   serving the socket, one at a time (so a slow actor pushes back on the socket, not memory);
//! - the writer drains the connection's `Outbox` into encoded frames, several per flush.
//!
//! Because the socket is ours and not a streaming HTTP response, closing means closing: after
//! the client's Close frame is echoed the TCP connection is shut down at once (RFC 6455
//! §7.1.1: the server closes first), after a server-initiated close it waits at most
//! `CLOSE_WAIT` for the client's reply, and a client that reads nothing is dropped
//! `CLOSE_GRACE` after its outbox was closed or cut (its queued frames were freed at the cut).
//!
//! Ownership: the writer (the upgrade's future) owns the reader task; the reader owns the
//! registration `guard` and the link that stops the actor. When the socket ends, whichever side
//! notices first ends, and dropping it unwinds the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Handler;
use actix_codec::Framed;
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, Item, Message, ProtocolError};
use actix_rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};

use crate::chat::protocol::{error_frame, FrameError};
use crate::socket::{Disconnected, Inbound, Outbound, Outbox, OutboxReceiver};
use crate::supervision::{ActorHandle, CallError, SupervisedActor, Tracked};
use crate::tasks::OwnedTask;

/// After a server-initiated close, how long the client has to answer with its own Close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// After the outbox closed or was cut, how long a write may stay stuck on a client that does not
/// read before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Frames encoded before one flush, at most.
const FRAMES_PER_FLUSH: usize = 64;

/// A WebSocket over the upgraded TCP connection.
pub(super) type WsFramed = Framed<TcpStream, Codec>;

/// The client side of a socket as the reader sees it: where replies go, when a frame last came.
pub(super) trait Socket {
    fn outbox(&self) -> &Outbox;
    fn touch(&self);
}

impl Socket for crate::chat::presence::Connection {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn touch(&self) {
        *self.last_seen.lock() = Instant::now();
    }
}

/// Stops the actor serving a socket when the reader ends or is dropped.
pub(super) struct ActorLink<A: SupervisedActor + Handler<Tracked<Disconnected>>>(pub(super) ActorHandle<A>);

impl<A: SupervisedActor + Handler<Tracked<Disconnected>>> Drop for ActorLink<A> {
    fn drop(&mut self) {
        let _ = self.0.do_send(Disconnected);
    }
}

/// Serves one socket until it closes: the reader as an owned task, the writer here. `guard`
/// lives as long as the reader (a registration to undo when the socket ends).
pub(super) async fn serve<S, G, A>(
    framed: WsFramed,
    socket: Arc<S>,
    receiver: OutboxReceiver,
    guard: G,
    actor: ActorLink<A>,
    max_frame_bytes: usize,
) where
    S: Socket + 'static,
    G: 'static,
    A: SupervisedActor + Handler<Tracked<Inbound>> + Handler<Tracked<Disconnected>>,
{
    let (sink, stream) = framed.split();
    let reader = crate::tasks::spawn_owned("ws.reader", read_frames(stream, socket, guard, actor, max_frame_bytes));
    write_frames(sink, receiver, reader).await;
}

type WsSink = futures_util::stream::SplitSink<WsFramed, Message>;
type WsStream = futures_util::stream::SplitStream<WsFramed>;

fn message_of(frame: Outbound) -> (Message, bool) {
    match frame {
        Outbound::Text(text) => (Message::Text(text.into()), false),
        Outbound::Ping => (Message::Ping(Bytes::new()), false),
        Outbound::Pong(payload) => (Message::Pong(payload), false),
        Outbound::Close(code, reason) => {
            (Message::Close(Some(CloseReason { code: CloseCode::from(code), description: Some(reason) })), true)
        }
    }
}

/// Writes outbox frames until the close frame is written (or the client is gone), then shuts
/// the connection down.
async fn write_frames(mut sink: WsSink, mut receiver: OutboxReceiver, mut reader: OwnedTask<()>) {
    loop {
        let Some(first) = receiver.next().await else { break };
        // Whatever else is queued goes out with it, in one flush.
        let mut batch = vec![message_of(first)];
        while batch.len() < FRAMES_PER_FLUSH && !batch.last().is_some_and(|(_, last)| *last) {
            let Some(frame) = receiver.try_next() else { break };
            batch.push(message_of(frame));
        }
        let closing = batch.last().is_some_and(|(_, last)| *last);
        let write = async {
            for (message, _) in batch {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        // A client that reads nothing must not keep the connection once it is closed or cut.
        let give_up = async {
            receiver.closing().await;
            tokio::time::sleep(CLOSE_GRACE).await;
        };
        tokio::select! {
            written = write => if written.is_err() { return },
            () = give_up => return,
        }
        if closing {
            break;
        }
    }
    // Closed by the client (the reader echoed its Close and ended) or gone: shut down at once.
    // Closed by the server: the client's Close reply ends the reader; wait for it, briefly.
    if !reader.is_finished() {
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut reader).await;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
}

/// Decodes client frames until the socket closes or breaks the protocol, handing each complete
/// message to the actor serving the socket, one at a time.
async fn read_frames<S, G, A>(
    mut stream: WsStream,
    connection: Arc<S>,
    guard: G,
    session: ActorLink<A>,
    max_frame_bytes: usize,
) where
    S: Socket,
    A: SupervisedActor + Handler<Tracked<Inbound>> + Handler<Tracked<Disconnected>>,
{
    let _guard = guard;
    // A fragmented message being reassembled: (is text, bytes so far).
    let mut fragments: Option<(bool, BytesMut)> = None;
    while let Some(decoded) = stream.next().await {
        let frame = match decoded {
            Ok(frame) => frame,
            Err(ProtocolError::Overflow) => return too_large(&*connection, max_frame_bytes),
            Err(ProtocolError::Io(_)) => return,
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
}

fn too_large(connection: &impl Socket, max_frame_bytes: usize) {
    let error = FrameError::new("too_large", format!("frame larger than {max_frame_bytes} bytes"));
    connection.outbox().text(error_frame(&error));
    connection.outbox().close(1009, "message too big");
}
