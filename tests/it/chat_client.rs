//! A chat server under test plus the clients that talk to it: users and conversations over HTTP,
//! WebSocket clients speaking protocol v1.

use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt as _, StreamExt as _};
use rampart::auth::Tokens;
use serde_json::{json, Value};

use crate::support::{Http, RampartProcess};

pub const ADMIN_TOKEN: &str = "admin-secret";
pub const JWT_SECRET: &str = "jwt-test-secret";
/// How long a test waits for any one frame.
const FRAME_DEADLINE: Duration = Duration::from_secs(15);

pub struct ChatServer {
    pub process: RampartProcess,
    pub http: Http,
    tokens: Tokens,
}

/// The environment every chat test server gets, plus `extra`.
pub fn chat_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("RAMPART__ADMIN__TOKEN", ADMIN_TOKEN), ("RAMPART__AUTH__JWT_SECRET", JWT_SECRET)];
    env.extend_from_slice(extra);
    env
}

impl ChatServer {
    pub fn start(extra: &[(&str, &str)]) -> Self {
        Self::wrap(RampartProcess::start(&chat_env(extra)))
    }

    pub fn wrap(process: RampartProcess) -> Self {
        Self { process, http: Http::new(), tokens: Tokens::from_secret(JWT_SECRET.as_bytes()) }
    }

    pub fn url(&self, path: &str) -> String {
        self.process.url(path)
    }

    pub fn token(&self, user: &str) -> String {
        self.tokens.issue(user, Duration::from_secs(3600)).expect("token")
    }

    pub async fn create_user(&self, id: &str) {
        let (status, body) =
            self.http.post(&self.url("/api/users"), Some(ADMIN_TOKEN), json!({"id": id, "display_name": id})).await;
        assert_eq!(status, 201, "{body}");
    }

    /// A conversation created by `creator` with `others`; returns its id.
    pub async fn conversation(&self, creator: &str, others: &[&str]) -> String {
        let (status, body) = self
            .http
            .post(&self.url("/api/conversations"), Some(&self.token(creator)), json!({"members": others, "title": "t"}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("conversation id").to_owned()
    }

    /// `POST /api/conversations/{id}/messages` as the holder of `token`.
    pub async fn post_message(&self, token: &str, conversation: &str, client_msg_id: &str, body: &str) -> (u16, Value) {
        let url = self.url(&format!("/api/conversations/{conversation}/messages"));
        self.http.post(&url, Some(token), json!({"client_msg_id": client_msg_id, "body": body})).await
    }

    pub async fn history(&self, user: &str, conversation: &str, query: &str) -> (u16, Value) {
        let url = self.url(&format!("/api/conversations/{conversation}/messages{query}"));
        self.http.get(&url, Some(&self.token(user))).await
    }

    /// Every message of a conversation, newest first, paging through history.
    pub async fn all_messages(&self, user: &str, conversation: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let query = match all.last() {
                None => "?limit=200".to_owned(),
                Some(last) => format!("?limit=200&before={}", last["id"].as_str().expect("id")),
            };
            let (status, body) = self.history(user, conversation, &query).await;
            assert_eq!(status, 200, "{body}");
            let page = body["messages"].as_array().expect("messages").clone();
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    pub async fn ws(&self, user: &str) -> WsClient {
        self.ws_url(&self.url("/ws"), Some(&self.token(user))).await.expect("websocket connect")
    }

    pub async fn ws_url(&self, url: &str, token: Option<&str>) -> Result<WsClient, awc::error::WsClientError> {
        let mut request = awc::Client::builder().timeout(Duration::from_secs(10)).finish().ws(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (_, framed) = request.max_frame_size(1 << 20).connect().await?;
        Ok(WsClient { framed })
    }
}

/// The answers to a burst of sends.
#[derive(Debug, Default)]
pub struct Answers {
    /// (client_msg_id, message id)
    pub acked: Vec<(String, String)>,
    pub refused: Vec<Refusal>,
}

#[derive(Debug, Clone)]
pub struct Refusal {
    pub client_msg_id: String,
    pub code: String,
    pub message: String,
}

pub struct WsClient {
    framed: Framed<BoxedSocket, Codec>,
}

impl WsClient {
    pub async fn send_json(&mut self, frame: Value) {
        self.send(Message::Text(frame.to_string().into())).await;
    }

    pub async fn send(&mut self, message: Message) {
        self.framed.send(message).await.expect("websocket send");
    }

    pub async fn send_message(&mut self, conversation: &str, client_msg_id: &str, body: &str) {
        self.send_json(
            json!({"type": "send", "conversation": conversation, "client_msg_id": client_msg_id, "body": body}),
        )
        .await;
    }

    /// Sends one message per id of `client_msg_ids` (100 at a time, then reading their answers);
    /// every send must get exactly one answer, an `ack` or an `error`.
    pub async fn send_burst(&mut self, conversation: &str, client_msg_ids: &[String], body: &str) -> Answers {
        let mut answers = Answers::default();
        for chunk in client_msg_ids.chunks(100) {
            for id in chunk {
                self.send_message(conversation, id, body).await;
            }
            for _ in chunk {
                let reply = self.next_json().await;
                let client_msg_id =
                    reply["client_msg_id"].as_str().expect("answers name their client_msg_id").to_owned();
                match reply["type"].as_str() {
                    Some("ack") => answers.acked.push((client_msg_id, reply["id"].as_str().expect("id").to_owned())),
                    Some("error") => answers.refused.push(Refusal {
                        client_msg_id,
                        code: reply["code"].as_str().expect("code").to_owned(),
                        message: reply["message"].as_str().unwrap_or_default().to_owned(),
                    }),
                    _ => panic!("unexpected frame {reply}"),
                }
            }
        }
        answers
    }

    /// The next frame that is not a ping or pong; `None` when the stream ended.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let next = tokio::time::timeout(FRAME_DEADLINE, self.framed.next()).await.expect("a frame in time")?;
            match next.expect("websocket frame") {
                Frame::Ping(_) | Frame::Pong(_) => continue,
                frame => return Some(frame),
            }
        }
    }

    /// The next JSON frame; panics on anything else.
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Some(Frame::Text(bytes)) => serde_json::from_slice(&bytes).expect("JSON frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The close code the server sent (frames before it are skipped).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_frame().await? {
                Frame::Close(reason) => return reason.map(|reason| u16::from(reason.code)),
                _ => continue,
            }
        }
    }
}
