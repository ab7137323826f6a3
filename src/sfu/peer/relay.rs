//! A participant whose room is placed on another instance: its signaling relayed, both ways, over
//! a WebSocket this instance opens to the owner's `/rtc/relay` (signed for the participant's
//! user with the deployment's `sfu.cluster.secret`). The owner runs the participant's peer and
//! media; the client's ICE candidates are the owner's, so media goes to the owner directly.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;

use crate::sfu::Signal;
use crate::tasks::{spawn_owned, OwnedTask};

/// Client frames waiting for the owner's socket (each at most `sfu.max_frame_bytes`); a client
/// this far ahead gets `rate_limited`.
const QUEUED_FRAMES: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Relay {
    to_owner: mpsc::Sender<String>,
    _task: OwnedTask<()>,
}

/// What a relay reports to its peer.
pub(super) enum RelayEvent {
    /// The owner answered the join with `joined`: the participant is in the room.
    Joined,
    /// The relay ended by itself.
    Ended(RelayEnd),
}

/// Why a relay ended by itself.
pub(super) enum RelayEnd {
    /// The owner refused the join (its `error` frame went to the client): do not follow.
    Refused,
    /// The owner closed, died, or could not be reached: the room moves.
    Lost(String),
}

/// Where and as whom to relay.
pub(super) struct Route {
    pub owner_url: String,
    pub credential: String,
    pub user: String,
    pub room: String,
    pub max_frame_bytes: usize,
}

impl Relay {
    /// Connects to the owner and joins `route.room` there; frames from the owner go to
    /// `signal`. `notify` hears when the owner answered `joined`, and once when the relay ends by
    /// itself (the owner refused, closed, died or could not be reached); not when the relay is
    /// dropped.
    pub fn start(route: Route, signal: Arc<Signal>, notify: impl Fn(RelayEvent) + 'static) -> Self {
        let (to_owner, from_client) = mpsc::channel(QUEUED_FRAMES);
        let task = spawn_owned("sfu.relay", async move {
            let end = run(route, signal, from_client, &notify).await;
            notify(RelayEvent::Ended(end));
        });
        Self { to_owner, _task: task }
    }

    /// Passes a client frame on; `false` when the owner's socket is this far behind.
    pub fn forward(&self, text: String) -> bool {
        self.to_owner.try_send(text).is_ok()
    }
}

async fn run(
    route: Route,
    signal: Arc<Signal>,
    from_client: mpsc::Receiver<String>,
    notify: &impl Fn(RelayEvent),
) -> RelayEnd {
    match relay(route, signal, from_client, notify).await {
        Ok(()) => RelayEnd::Refused,
        Err(reason) => RelayEnd::Lost(reason),
    }
}

/// `Ok` when the owner refused the join; `Err` with why the relay was lost otherwise.
async fn relay(
    route: Route,
    signal: Arc<Signal>,
    mut from_client: mpsc::Receiver<String>,
    notify: &impl Fn(RelayEvent),
) -> Result<(), String> {
    let url = format!("{}/rtc/relay", route.owner_url.replacen("http", "ws", 1));
    let client = awc::Client::builder().timeout(CONNECT_TIMEOUT).finish();
    let connecting = client
        .ws(url.as_str())
        .max_frame_size(route.max_frame_bytes)
        .header("x-rampart-relay-user", route.user.as_str())
        .header("x-rampart-relay", route.credential.as_str())
        .connect();
    let mut framed = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((_, framed))) => framed,
        Ok(Err(error)) => return Err(format!("the room's instance at {url} refused: {error}")),
        Err(_) => return Err(format!("the room's instance at {url} did not answer")),
    };
    let join = serde_json::json!({"type": "join", "room": route.room}).to_string();
    if framed.send(awc::ws::Message::Text(join.into())).await.is_err() {
        return Err("the room's instance closed the relay".into());
    }
    let (mut joined, mut refused) = (false, false);
    loop {
        tokio::select! {
            frame = from_client.recv() => match frame {
                Some(text) => {
                    if framed.send(awc::ws::Message::Text(text.into())).await.is_err() {
                        return Err("the room's instance closed the relay".into());
                    }
                }
                None => {
                    let _ = framed.send(awc::ws::Message::Close(None)).await;
                    return Err("left".into());
                }
            },
            frame = framed.next() => match frame {
                Some(Ok(awc::ws::Frame::Text(bytes))) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    // The answer to the join: `joined`, or an error (room full...) that ends it.
                    if !joined {
                        let kind = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|frame| frame["type"].as_str().map(str::to_owned));
                        joined = kind.as_deref() == Some("joined");
                        refused = kind.as_deref() == Some("error");
                        if joined {
                            notify(RelayEvent::Joined);
                        }
                    }
                    signal.send(text);
                    if refused {
                        let _ = framed.send(awc::ws::Message::Close(None)).await;
                        return Ok(());
                    }
                }
                Some(Ok(awc::ws::Frame::Ping(payload))) => {
                    let _ = framed.send(awc::ws::Message::Pong(payload)).await;
                }
                Some(Ok(awc::ws::Frame::Close(reason))) => {
                    return Err(format!("the room's instance closed the relay: {reason:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(format!("the relay failed: {error}")),
                None => return Err("the room's instance went away".into()),
            },
        }
    }
}
