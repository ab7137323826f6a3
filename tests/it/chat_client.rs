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

/// Where a scenario's chat server stores chat: the embedded default, or a MongoDB database of
/// the scenario's own (with search on an OpenSearch index of its own), so scenarios shared by
/// both suites run side by side on one server.
pub enum Backend {
    Sqlite,
    Mongodb { env: Vec<(String, String)> },
}

impl Backend {
    /// The scale-out backends from `RAMPART_TEST_MONGODB_URI` and `RAMPART_TEST_ELASTICSEARCH_URL`
    /// (`scripts/services.sh env`), with a fresh database name and index prefix; `None` (after a
    /// loud skip message) when they are not set.
    pub fn scale_out(name: &str) -> Option<Self> {
        let uri = std::env::var("RAMPART_TEST_MONGODB_URI").ok().filter(|uri| !uri.is_empty());
        let engine = std::env::var("RAMPART_TEST_ELASTICSEARCH_URL").ok().filter(|url| !url.is_empty());
        let (Some(uri), Some(engine)) = (uri, engine) else {
            crate::support::tool_missing(
                "SERVICES",
                "MongoDB and a search engine (scripts/services.sh up; RAMPART_TEST_MONGODB_URI, RAMPART_TEST_ELASTICSEARCH_URL)",
            );
            return None;
        };
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let nonce = &nonce[nonce.len() - 10..];
        let database = format!("rampart_test_{name}_{nonce}");
        let env = vec![
            ("RAMPART__STORAGE__KIND".into(), "mongodb".into()),
            ("RAMPART__MONGODB__URI".into(), uri),
            ("RAMPART__MONGODB__DATABASE".into(), database),
            ("RAMPART__SEARCH__KIND".into(), "elasticsearch".into()),
            ("RAMPART__ELASTICSEARCH__URL".into(), engine),
            ("RAMPART__ELASTICSEARCH__INDEX_PREFIX".into(), format!("rampart-test-{name}-{nonce}-").replace('_', "-")),
            ("RAMPART__SEARCH__POLL_INTERVAL".into(), "200ms".into()),
        ];
        Some(Backend::Mongodb { env })
    }

    /// The scale-out backends with the Kafka transport (`RAMPART_TEST_KAFKA_BROKERS`): a topic
    /// and consumer groups of the scenario's own. Needs a build with `--features kafka`.
    #[cfg(feature = "kafka")]
    pub fn kafka(name: &str) -> Option<Self> {
        let Some(brokers) = std::env::var("RAMPART_TEST_KAFKA_BROKERS").ok().filter(|b| !b.is_empty()) else {
            crate::support::tool_missing(
                "SERVICES",
                "Kafka (scripts/services.sh up kafka; RAMPART_TEST_KAFKA_BROKERS)",
            );
            return None;
        };
        let mut backend = Backend::scale_out(name)?;
        let Backend::Mongodb { env } = &mut backend else { return None };
        let database = env.iter().find(|(k, _)| k == "RAMPART__MONGODB__DATABASE").map(|(_, v)| v.clone());
        let nonce = database.unwrap_or_default().rsplit('_').next().unwrap_or_default().to_owned();
        env.extend([
            ("RAMPART__TRANSPORT__KIND".into(), "kafka".into()),
            ("RAMPART__KAFKA__BROKERS".into(), brokers),
            ("RAMPART__KAFKA__TOPIC".into(), format!("rampart.test.{name}.{nonce}")),
            ("RAMPART__KAFKA__GROUP_PREFIX".into(), format!("rampart-test-{name}-{nonce}-")),
            ("RAMPART__KAFKA__PARTITIONS".into(), "3".into()),
            ("RAMPART__KAFKA__SESSION_TIMEOUT".into(), "6s".into()),
        ]);
        Some(backend)
    }

    /// The value this backend sets for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self {
            Backend::Sqlite => None,
            Backend::Mongodb { env } => env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()),
        }
    }

    /// The chat environment for this backend, plus `extra`.
    pub fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = match self {
            Backend::Sqlite => Vec::new(),
            Backend::Mongodb { env } => env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        };
        env.extend_from_slice(extra);
        chat_env(&env)
    }

    pub fn start(&self, extra: &[(&str, &str)]) -> ChatServer {
        ChatServer::wrap(RampartProcess::start(&self.env(extra)))
    }

    /// A server whose MongoDB connections go through a `Proxy` (returned: cut it for an outage),
    /// with timeouts and breaker settings that notice an outage within a second or two.
    pub async fn start_behind_mongodb_proxy(&self, extra: &[(&str, &str)]) -> (crate::support::Proxy, ChatServer) {
        let uri = self.get("RAMPART__MONGODB__URI").unwrap_or_default().to_owned();
        let upstream = uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap_or_default().to_owned();
        let proxy = crate::support::Proxy::start(&upstream).await;
        let through_proxy = format!("mongodb://{}/?directConnection=true", proxy.address.trim_start_matches("http://"));
        let mut env = vec![
            ("RAMPART__MONGODB__URI", through_proxy.as_str()),
            ("RAMPART__MONGODB__OPERATION_TIMEOUT", "1s"),
            ("RAMPART__PIPELINE__STORAGE_TIMEOUT", "1s"),
            ("RAMPART__PIPELINE__MAX_ATTEMPTS", "2"),
            ("RAMPART__PIPELINE__BREAKER__MINIMUM_CALLS", "2"),
            ("RAMPART__PIPELINE__BREAKER__WINDOW_SIZE", "4"),
            ("RAMPART__PIPELINE__BREAKER__WAIT_IN_OPEN", "1s"),
        ];
        env.extend_from_slice(extra);
        let chat = self.start(&env);
        (proxy, chat)
    }

    /// Documents in the scenario's search index (after a refresh); 0 on the embedded backend.
    pub async fn indexed(&self, http: &Http) -> u64 {
        let Some((engine, prefix)) =
            self.get("RAMPART__ELASTICSEARCH__URL").zip(self.get("RAMPART__ELASTICSEARCH__INDEX_PREFIX"))
        else {
            return 0;
        };
        let index = format!("{engine}/{prefix}messages");
        let _ = http.post(&format!("{index}/_refresh"), None, json!({})).await;
        let (_, body) = http.get(&format!("{index}/_count"), None).await;
        body["count"].as_u64().unwrap_or(0)
    }
}

impl Drop for Backend {
    /// Removes the scenario's database and search index (best effort: the servers may be gone).
    fn drop(&mut self) {
        let (Some(uri), Some(database)) = (self.get("RAMPART__MONGODB__URI"), self.get("RAMPART__MONGODB__DATABASE"))
        else {
            return;
        };
        if let Some((engine, prefix)) =
            self.get("RAMPART__ELASTICSEARCH__URL").zip(self.get("RAMPART__ELASTICSEARCH__INDEX_PREFIX"))
        {
            for path in [format!("{prefix}messages"), format!("_index_template/{prefix}messages")] {
                let _ = std::process::Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-X", "DELETE", &format!("{engine}/{path}")])
                    .status();
            }
        }
        let (uri, database) = (uri.to_owned(), database.to_owned());
        // Own runtime: drop may run inside or outside one.
        let cleanup = std::thread::Builder::new().name("test.drop-database".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = mongodb::Client::with_uri_str(&uri).await.ok()?;
                client.database(&database).drop().await.ok()
            })
        });
        if let Ok(cleanup) = cleanup {
            let _ = cleanup.join();
        }
    }
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

    /// Users alice and bob with a conversation of theirs; alice connected.
    pub async fn alice_and_bob(&self) -> (String, WsClient) {
        self.create_user("alice").await;
        self.create_user("bob").await;
        let conversation = self.conversation("alice", &["bob"]).await;
        (conversation, self.ws("alice").await)
    }

    /// Each of `actors` (paths) restarted at least once, by `/admin/actors`.
    pub async fn assert_restarted(&self, actors: impl IntoIterator<Item = &str>) {
        let (_, listing) = self.http.get(&self.url("/admin/actors"), Some(ADMIN_TOKEN)).await;
        for actor in actors {
            let restarts = listing["actors"]
                .as_array()
                .and_then(|all| all.iter().find(|a| a["path"] == actor))
                .and_then(|a| a["restarts"].as_u64())
                .unwrap_or(0);
            assert!(restarts >= 1, "{actor} restarted: {listing}");
        }
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
