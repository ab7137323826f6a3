//! `search.kind = "elasticsearch"` against a real OpenSearch (`scripts/services.sh up
//! opensearch`; the tests read `RAMPART_TEST_ELASTICSEARCH_URL` and skip without it, unless
//! `RAMPART_REQUIRE_SERVICES=1`, as in CI). Each test uses an index prefix of its own, so they
//! run side by side on one engine; an engine "outage" is a proxy of the test's that stops
//! passing connections, so other tests keep theirs.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::chat_client::{ChatServer, ADMIN_TOKEN};
use crate::support::{eventually, Http, Proxy, RampartProcess};

fn engine_url() -> Option<String> {
    let url = std::env::var("RAMPART_TEST_ELASTICSEARCH_URL").ok().filter(|url| !url.is_empty());
    if url.is_none() {
        crate::support::tool_missing(
            "SERVICES",
            "a search engine (scripts/services.sh up opensearch; RAMPART_TEST_ELASTICSEARCH_URL)",
        );
    }
    url
}

/// A fresh index prefix, and its index removed when dropped.
struct Scratch {
    engine: String,
    prefix: String,
}

impl Scratch {
    fn new(engine: &str, name: &str) -> Self {
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        Self { engine: engine.to_owned(), prefix: format!("rampart-test-{name}-{}-", &nonce[nonce.len() - 10..]) }
    }

    fn index(&self) -> String {
        format!("{}{}", self.engine, self.path())
    }

    fn path(&self) -> String {
        format!("/{}messages", self.prefix)
    }

    /// Documents in the index (after a refresh).
    async fn count(&self, http: &Http) -> u64 {
        let _ = http.post(&format!("{}/_refresh", self.index()), None, json!({})).await;
        let (_, body) = http.get(&format!("{}/_count", self.index()), None).await;
        body["count"].as_u64().unwrap_or(0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new("curl").args(["-s", "-o", "/dev/null", "-X", "DELETE", &self.index()]).status();
        let template = format!("{}/_index_template/{}messages", self.engine, self.prefix);
        let _ = std::process::Command::new("curl").args(["-s", "-o", "/dev/null", "-X", "DELETE", &template]).status();
    }
}

fn start(engine: &str, prefix: &str, extra: &[(&str, &str)]) -> ChatServer {
    ChatServer::start(&engine_env(engine, prefix, extra))
}

fn engine_env<'a>(engine: &'a str, prefix: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("RAMPART__SEARCH__KIND", "elasticsearch"),
        ("RAMPART__ELASTICSEARCH__URL", engine),
        ("RAMPART__ELASTICSEARCH__INDEX_PREFIX", prefix),
        ("RAMPART__SEARCH__POLL_INTERVAL", "200ms"),
    ];
    env.extend_from_slice(extra);
    env
}

async fn search(chat: &ChatServer, user: &str, query: &str) -> Vec<Value> {
    let url = chat.url(&format!("/api/search?q={query}&limit=100"));
    let (status, body) = chat.http.get(&url, Some(&chat.token(user))).await;
    assert_eq!(status, 200, "{body}");
    body["hits"].as_array().cloned().unwrap_or_default()
}

#[actix_rt::test]
async fn search_is_served_by_the_engine_scoped_to_the_callers_conversations() {
    let Some(engine) = engine_url() else { return };
    let scratch = Scratch::new(&engine, "scope");
    let data_dir = tempfile::tempdir().unwrap();
    let env = crate::chat_client::chat_env(&engine_env(&engine, &scratch.prefix, &[]));
    let chat = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &env));
    for user in ["alice", "bob", "carol"] {
        chat.create_user(user).await;
    }
    let ours = chat.conversation("alice", &["bob"]).await;
    let theirs = chat.conversation("carol", &["bob"]).await;
    let (status, _) = chat.post_message(&chat.token("alice"), &ours, "1", "hello from the quick brown fox").await;
    assert_eq!(status, 201);
    let (status, _) = chat.post_message(&chat.token("carol"), &theirs, "1", "hello quick world").await;
    assert_eq!(status, 201);
    let (status, _) = chat.post_message(&chat.token("alice"), &ours, "2", "nothing to see").await;
    assert_eq!(status, 201);
    // A resend stores nothing new and indexes nothing twice.
    let (status, _) = chat.post_message(&chat.token("alice"), &ours, "1", "hello from the quick brown fox").await;
    assert_eq!(status, 201);

    eventually("bob finds both conversations' messages", Duration::from_secs(30), || async {
        search(&chat, "bob", "quick%20hello").await.len() == 2
    })
    .await;
    let alice = search(&chat, "alice", "quick%20hello").await;
    assert_eq!(alice.len(), 1, "alice sees only her conversation: {alice:?}");
    assert_eq!(alice[0]["conversation"], ours.as_str());
    assert_eq!(alice[0]["highlight"], "<mark>hello</mark> from the <mark>quick</mark> brown fox");
    assert!(search(&chat, "alice", "quick%20missing").await.is_empty(), "every word must match");
    assert!(search(&chat, "alice", "%22(%20OR").await.is_empty(), "operators are words, not syntax");
    assert_eq!(scratch.count(&chat.http).await, 3, "three messages, each indexed once");

    // The engine's index is keyed by message id: kill -9 and a replay from the watermark index
    // nothing twice.
    let mut process = chat.process;
    process.kill_hard();
    let chat = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &env));
    let (status, _) = chat.post_message(&chat.token("alice"), &ours, "3", "after the restart").await;
    assert_eq!(status, 201);
    eventually("the new message is indexed", Duration::from_secs(30), || async {
        search(&chat, "alice", "restart").await.len() == 1
    })
    .await;
    assert_eq!(scratch.count(&chat.http).await, 4);
}

#[actix_rt::test]
async fn a_document_the_engine_refuses_is_dead_lettered_and_the_rest_are_indexed() {
    let Some(engine) = engine_url() else { return };
    let scratch = Scratch::new(&engine, "refused");
    // An operator's index with a conflicting mapping: `body` as a number. Numeric bodies index,
    // text bodies are refused with a mapping error.
    let http = Http::new();
    let mapping = json!({
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {
            "id": {"type": "keyword"}, "conversation": {"type": "keyword"}, "sender": {"type": "keyword"},
            "body": {"type": "long"}, "created_at": {"type": "date", "format": "epoch_millis"}, "seq": {"type": "long"}
        }}
    });
    let (status, body) = http.request(awc::http::Method::PUT, &scratch.index(), None, Some(mapping)).await;
    assert_eq!(status, 200, "{body}");
    let chat = start(&engine, &scratch.prefix, &[]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let alice = chat.token("alice");
    let (_, refused) = chat.post_message(&alice, &conversation, "1", "words, not a number").await;
    for n in 2..=6 {
        let (status, _) = chat.post_message(&alice, &conversation, &n.to_string(), &format!("{n}000")).await;
        assert_eq!(status, 201);
    }
    eventually("the refused message is dead-lettered", Duration::from_secs(30), || async {
        let (_, letters) = chat.http.get(&chat.url("/admin/dead-letters"), Some(ADMIN_TOKEN)).await;
        letters["dead_letters"].as_array().is_some_and(|letters| {
            letters.iter().any(|letter| letter["kind"] == "index" && letter["payload"]["message_id"] == refused["id"])
        })
    })
    .await;
    eventually("the numeric ones are indexed", Duration::from_secs(30), || async {
        scratch.count(&chat.http).await == 5
    })
    .await;
    let (_, letters) = chat.http.get(&chat.url("/admin/dead-letters"), Some(ADMIN_TOKEN)).await;
    let letter = letters["dead_letters"].as_array().unwrap().iter().find(|l| l["kind"] == "index").unwrap().clone();
    assert!(letter["reason"].as_str().unwrap().contains("mapper_parsing_exception"), "{letter}");
    // The message itself is stored and in history.
    let history = chat.all_messages("bob", &conversation).await;
    assert_eq!(history.len(), 6);
    // Retrying it while the mapping still conflicts: refused again (422), the letter stays.
    let retry = chat.url(&format!("/admin/dead-letters/{}/retry", letter["id"].as_str().unwrap()));
    let (status, body) = chat.http.post(&retry, Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("rejected")), "{body}");
}

#[actix_rt::test]
async fn ingestion_never_waits_for_the_engine_and_indexing_catches_up_after_an_outage() {
    let Some(engine) = engine_url() else { return };
    let scratch = Scratch::new(&engine, "outage");
    let proxy = Proxy::start(&engine).await;
    let chat = start(
        &proxy.address,
        &scratch.prefix,
        &[
            ("RAMPART__WS__RATE_LIMIT_PER_SEC", "100000"),
            ("RAMPART__WS__BURST", "100000"),
            ("RAMPART__SEARCH__BREAKER__MINIMUM_CALLS", "2"),
            ("RAMPART__SEARCH__BREAKER__WINDOW_SIZE", "4"),
            ("RAMPART__SEARCH__BREAKER__WAIT_IN_OPEN", "1s"),
            ("RAMPART__ELASTICSEARCH__REQUEST_TIMEOUT", "2s"),
        ],
    );
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let ids = |prefix: &str, count: usize| (0..count).map(|n| format!("{prefix}-{n}")).collect::<Vec<_>>();
    let answers = alice.send_burst(&conversation, &ids("before", 50), "searchable words").await;
    assert_eq!(answers.acked.len(), 50);
    eventually("the first 50 are indexed", Duration::from_secs(30), || async { scratch.count(&chat.http).await == 50 })
        .await;

    // The engine goes away: sends are acked as before, the search breaker opens, /ready warns.
    proxy.set_up(false);
    let started = Instant::now();
    let mut acked: HashSet<String> = HashSet::new();
    for round in 0..4 {
        let answers = alice.send_burst(&conversation, &ids(&format!("during-{round}"), 100), "searchable words").await;
        assert!(answers.refused.is_empty(), "ingestion does not depend on search: {:?}", answers.refused);
        acked.extend(answers.acked.into_iter().map(|(_, id)| id));
    }
    eprintln!("400 sends acked in {:?} with the engine down", started.elapsed());
    eventually("the search breaker opens and readiness warns", Duration::from_secs(60), || async {
        let (status, body) = chat.http.get(&chat.url("/ready"), None).await;
        status == 200 && body["status"] == "warn" && body["checks"]["circuit:search"][0]["observedValue"] == "open"
    })
    .await;
    let (status, body) = chat.http.get(&chat.url("/api/search?q=searchable"), Some(&chat.token("alice"))).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")), "{body}");

    // Back: indexing catches up by itself, everything acked is searchable, nothing twice.
    proxy.set_up(true);
    eventually("indexing catches up after the outage", Duration::from_secs(90), || async {
        scratch.count(&chat.http).await == 450
    })
    .await;
    eventually("the breaker closes and readiness passes", Duration::from_secs(60), || async {
        let (status, body) = chat.http.get(&chat.url("/ready"), None).await;
        let _ = chat.http.get(&chat.url("/api/search?q=searchable"), Some(&chat.token("alice"))).await;
        status == 200 && body["status"] == "pass"
    })
    .await;
}

#[actix_rt::test]
async fn indexer_panics_while_indexing_lose_nothing_and_index_nothing_twice() {
    let Some(engine) = engine_url() else { return };
    let scratch = Scratch::new(&engine, "chaos");
    let chat = start(
        &engine,
        &scratch.prefix,
        &[
            ("RAMPART__CHAOS__ENABLED", "true"),
            ("RAMPART__WS__RATE_LIMIT_PER_SEC", "100000"),
            ("RAMPART__WS__BURST", "100000"),
            // Small steps, so panics land between and during them.
            ("RAMPART__SEARCH__INDEX_BATCH", "25"),
        ],
    );
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let mut panics = 0;
    for round in 0..6 {
        let ids: Vec<String> = (0..100).map(|n| format!("r{round}-{n}")).collect();
        let answers = alice.send_burst(&conversation, &ids, "indexed under fire").await;
        assert_eq!(answers.acked.len(), 100, "{:?}", answers.refused);
        let (status, body) = chat
            .http
            .post(&chat.url("/admin/chaos/panic"), Some(ADMIN_TOKEN), json!({"actor": "/root/chat/indexer"}))
            .await;
        if status == 202 {
            panics += 1;
        } else {
            assert_eq!(status, 409, "{body}"); // restarting at that instant
        }
    }
    assert!(panics >= 3, "the indexer was made to panic: {panics}");
    eventually("every message is indexed once", Duration::from_secs(60), || async {
        scratch.count(&chat.http).await == 600
    })
    .await;
    let (_, listing) = chat.http.get(&chat.url("/admin/actors"), Some(ADMIN_TOKEN)).await;
    let restarts = listing["actors"]
        .as_array()
        .and_then(|actors| actors.iter().find(|actor| actor["path"] == "/root/chat/indexer"))
        .map(|indexer| indexer["restarts"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    assert!(restarts >= 3, "restarts are visible: {listing}");
    let (_, letters) = chat.http.get(&chat.url("/admin/dead-letters"), Some(ADMIN_TOKEN)).await;
    assert_eq!(letters["dead_letters"].as_array().map(Vec::len), Some(0), "nothing dead-lettered: {letters}");
}

#[actix_rt::test]
async fn a_user_in_more_conversations_than_one_terms_query_holds_can_search() {
    // Confirmed: the scope of a search was one `terms` filter with every conversation of the
    // user, which OpenSearch refuses past `index.max_terms_count` (65,536): every search of such a
    // user failed (503), and each failure counted against the shared search breaker. The user's
    // 70,000 memberships are written straight into the embedded store while rampart is down.
    let Some(engine) = engine_url() else { return };
    let scratch = Scratch::new(&engine, "terms");
    let data_dir = tempfile::tempdir().unwrap();
    let env = crate::chat_client::chat_env(&engine_env(&engine, &scratch.prefix, &[]));
    let chat = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &env));
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let ours = chat.conversation("alice", &["bob"]).await;
    let (status, _) = chat.post_message(&chat.token("bob"), &ours, "1", "a needle in the haystack").await;
    assert_eq!(status, 201);
    eventually("the message is indexed", Duration::from_secs(30), || async {
        search(&chat, "bob", "needle").await.len() == 1
    })
    .await;
    let mut process = chat.process;
    process.kill_hard();
    {
        let mut db = rusqlite::Connection::open(data_dir.path().join("rampart.db")).expect("open rampart.db");
        let transaction = db.transaction().unwrap();
        for n in 0..70_000 {
            let id = format!("bulk-{n}");
            transaction
                .execute(
                    "INSERT INTO conversations (id, title, created_by, created_at) VALUES (?1, 't', 'alice', 1)",
                    [&id],
                )
                .unwrap();
            transaction.execute("INSERT INTO members (conversation, user) VALUES (?1, 'alice')", [&id]).unwrap();
        }
        transaction.commit().unwrap();
    }
    let chat = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &env));
    for _ in 0..3 {
        let hits = search(&chat, "alice", "needle").await;
        assert_eq!(hits.len(), 1, "{hits:?}");
    }
    let (status, ready) = chat.http.get(&chat.url("/ready"), None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["circuit:search"][0]["observedValue"], "closed", "{ready}");
}

#[actix_rt::test]
async fn a_search_the_engine_refuses_does_not_open_the_breaker_for_everyone() {
    // The engine answering one user's query with a 4xx is that query's problem, not the
    // engine's health: it is a 400 for that user, and others keep searching. Here the operator
    // lowered `index.max_terms_count` below alice's number of conversations.
    let Some(engine) = engine_url() else { return };
    let scratch = Scratch::new(&engine, "refused_query");
    let chat = start(&engine, &scratch.prefix, &[]);
    for user in ["alice", "bob"] {
        chat.create_user(user).await;
    }
    let shared = chat.conversation("alice", &["bob"]).await;
    for _ in 0..12 {
        chat.conversation("alice", &[]).await;
    }
    let (status, _) = chat.post_message(&chat.token("alice"), &shared, "1", "needle for two").await;
    assert_eq!(status, 201);
    eventually("the message is indexed", Duration::from_secs(30), || async {
        search(&chat, "bob", "needle").await.len() == 1
    })
    .await;
    let url = format!("{}/_settings", scratch.index());
    let (status, body) =
        chat.http.request(awc::http::Method::PUT, &url, None, Some(json!({"index": {"max_terms_count": 5}}))).await;
    assert_eq!(status, 200, "{body}");
    let alice_url = chat.url("/api/search?q=needle");
    // A whole breaker window (100 calls) of them.
    for _ in 0..120 {
        let (status, body) = chat.http.get(&alice_url, Some(&chat.token("alice"))).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    }
    assert_eq!(search(&chat, "bob", "needle").await.len(), 1, "bob's searches still run");
    let (_, ready) = chat.http.get(&chat.url("/ready"), None).await;
    assert_eq!(ready["checks"]["circuit:search"][0]["observedValue"], "closed", "{ready}");
}
