//! Chat end to end on the real binary: WebSocket and HTTP clients, SQLite files in temp dirs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use awc::ws::Message;
use rampart::auth::Tokens;
use serde_json::json;

use crate::chat_client::{Backend, ChatServer, ADMIN_TOKEN};
use crate::support::{eventually, scrape, RampartProcess};

#[actix_rt::test]
async fn send_ack_history_and_search() {
    send_ack_history_and_search_on(&Backend::Sqlite).await;
}

/// Shared with the scale-out suite (`mongodb.rs`).
pub async fn send_ack_history_and_search_on(backend: &Backend) {
    let chat = backend.start(&[]);
    for user in ["alice", "bob", "carol"] {
        chat.create_user(user).await;
    }
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    alice.send_message(&conversation, "m-1", "the quick brown fox").await;
    let ack = alice.next_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["client_msg_id"], "m-1");
    let id = ack["id"].as_str().expect("id").to_owned();
    assert!(ack["created_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{ack}");

    let (status, history) = chat.history("bob", &conversation, "").await;
    assert_eq!(status, 200, "{history}");
    let messages = history["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["id"], id.as_str());
    assert_eq!(messages[0]["sender"], "alice");
    assert_eq!(messages[0]["body"], "the quick brown fox");

    // Indexed asynchronously: poll until it shows up.
    let bob_token = chat.token("bob");
    eventually("message searchable", Duration::from_secs(30), || async {
        let (status, body) = chat.http.get(&chat.url("/api/search?q=quick"), Some(&bob_token)).await;
        status == 200
            && body["hits"].as_array().is_some_and(|hits| {
                hits.len() == 1
                    && hits[0]["id"] == id.as_str()
                    && hits[0]["highlight"] == "the <mark>quick</mark> brown fox"
            })
    })
    .await;
    // Carol is not a member: no hits, and scoping to the conversation is refused.
    let carol = chat.token("carol");
    let (status, body) = chat.http.get(&chat.url("/api/search?q=quick"), Some(&carol)).await;
    assert_eq!((status, body["hits"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
    let (status, body) =
        chat.http.get(&chat.url(&format!("/api/search?q=quick&conversation={conversation}")), Some(&carol)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");

    // The HTTP equivalent of send.
    let (status, ack) = chat.post_message(&bob_token, &conversation, "h-1", "over http").await;
    assert_eq!(status, 201, "{ack}");
    let (_, history) = chat.history("alice", &conversation, "?limit=1").await;
    assert_eq!(history["messages"][0]["id"], ack["id"], "newest first");
    assert_eq!(history["messages"][0]["sender"], "bob", "the sender is the token's subject");
}

#[actix_rt::test]
async fn a_resent_message_gets_the_original_ack_and_is_stored_once() {
    a_resent_message_gets_the_original_ack_and_is_stored_once_on(&Backend::Sqlite).await;
}

/// Shared with the scale-out suite (`mongodb.rs`).
pub async fn a_resent_message_gets_the_original_ack_and_is_stored_once_on(backend: &Backend) {
    let chat = backend.start(&[]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    alice.send_message(&conversation, "same", "first").await;
    let first = alice.next_json().await;
    alice.send_message(&conversation, "same", "second body, same id").await;
    let second = alice.next_json().await;
    assert_eq!(first["type"], "ack");
    assert_eq!(first, second, "the original ack, not a new message");
    // Over HTTP too.
    let (status, third) = chat.post_message(&chat.token("alice"), &conversation, "same", "again").await;
    assert_eq!(status, 201);
    assert_eq!(third["id"], first["id"]);
    let messages = chat.all_messages("alice", &conversation).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["body"], "first");
}

#[actix_rt::test]
async fn unauthenticated_and_unauthorized_requests_are_refused() {
    let chat = ChatServer::start(&[]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    chat.create_user("mallory").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let messages_url = chat.url(&format!("/api/conversations/{conversation}/messages"));

    // 401: no token, a token signed with another secret, on every user route and on /ws.
    let forged = Tokens::from_secret(b"not the secret").issue("alice", Duration::from_secs(60)).unwrap();
    for token in [None, Some(forged.as_str())] {
        let (status, body) = chat.http.get(&messages_url, token).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
        let (status, _) = chat.http.post(&messages_url, token, json!({"client_msg_id": "1", "body": "x"})).await;
        assert_eq!(status, 401);
        let (status, _) = chat.http.get(&chat.url("/api/search?q=x"), token).await;
        assert_eq!(status, 401);
        let refused = chat.ws_url(&chat.url("/ws"), token).await.err().expect("refused");
        assert!(
            matches!(refused, awc::error::WsClientError::InvalidResponseStatus(status) if status.as_u16() == 401),
            "{refused:?}"
        );
    }
    // Browsers pass the token in the query string.
    let query_url = format!("{}?token={}", chat.url("/ws"), chat.token("alice"));
    let mut via_query = chat.ws_url(&query_url, None).await.expect("?token= accepted");
    via_query.send_json(json!({"type": "ping"})).await;
    assert_eq!(via_query.next_json().await["type"], "pong");

    // 403: not a member.
    let mallory = chat.token("mallory");
    let (status, body) = chat.http.get(&messages_url, Some(&mallory)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) =
        chat.http.post(&messages_url, Some(&mallory), json!({"client_msg_id": "1", "body": "x"})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    let mut ws = chat.ws("mallory").await;
    ws.send_message(&conversation, "m1", "let me in").await;
    let error = ws.next_json().await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("forbidden")), "{error}");
    assert_eq!(error["client_msg_id"], "m1");

    // Users are created with the admin token only; ids are unique; members must exist.
    let (status, _) = chat.http.post(&chat.url("/api/users"), Some(&mallory), json!({"id": "eve"})).await;
    assert_eq!(status, 401);
    let (status, body) = chat.http.post(&chat.url("/api/users"), Some(ADMIN_TOKEN), json!({"id": "alice"})).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")), "{body}");
    let (status, body) =
        chat.http.post(&chat.url("/api/conversations"), Some(&mallory), json!({"members": ["alice", "nobody"]})).await;
    assert_eq!(status, 422, "members that are not users: {body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("nobody")), "{body}");
}

#[actix_rt::test]
async fn bad_websocket_input_gets_specific_errors_and_loses_nothing() {
    let chat = ChatServer::start(&[("RAMPART__WS__MAX_FRAME_BYTES", "32768")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    let mut ws = chat.ws("alice").await;

    // An accepted message first: nothing below may lose it.
    ws.send_message(&conversation, "keep", "accepted before the abuse").await;
    assert_eq!(ws.next_json().await["type"], "ack");

    let long_id = "x".repeat(65);
    let big_body = "b".repeat(16 * 1024 + 1);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "invalid_json"),
        ("[1,2]".into(), "invalid_json"),
        (json!({"type": "dance"}).to_string(), "unknown_type"),
        (json!({"conversation": "c"}).to_string(), "invalid"),
        (json!({"type": "send", "conversation": conversation, "body": "no id"}).to_string(), "invalid"),
        (
            json!({"type": "send", "conversation": conversation, "client_msg_id": long_id, "body": "x"}).to_string(),
            "invalid",
        ),
        (
            json!({"type": "send", "conversation": conversation, "client_msg_id": "e", "body": ""}).to_string(),
            "invalid",
        ),
        (
            json!({"type": "send", "conversation": conversation, "client_msg_id": "big", "body": big_body}).to_string(),
            "too_large",
        ),
        (json!({"type": "send", "conversation": 7, "client_msg_id": "n", "body": "x"}).to_string(), "invalid"),
        (json!({"type": "delivered"}).to_string(), "invalid"),
        // Regression: a malformed id got no answer at all.
        (json!({"type": "delivered", "id": "not-an-id"}).to_string(), "invalid"),
    ];
    for (frame, code) in &cases {
        ws.send(Message::Text(frame.clone().into())).await;
        let error = ws.next_json().await;
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some(*code)),
            "for {frame:.80}: {error}"
        );
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(Message::Binary(bytes::Bytes::from_static(b"\x00\x01"))).await;
    let error = ws.next_json().await;
    assert_eq!(error["code"], "unsupported_frame", "{error}");
    // Still open after recoverable errors.
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");

    // A frame over ws.max_frame_bytes: error, then close 1009.
    ws.send(Message::Text("y".repeat(40 * 1024).into())).await;
    let error = ws.next_json().await;
    assert_eq!(error["code"], "too_large", "{error}");
    assert_eq!(ws.close_code().await, Some(1009));

    // Too many invalid frames in a row: close 1008.
    let mut abusive = chat.ws("alice").await;
    for _ in 0..20 {
        abusive.send(Message::Text("{".into())).await;
    }
    assert_eq!(abusive.close_code().await, Some(1008));

    let messages = chat.all_messages("alice", &conversation).await;
    assert_eq!(messages.len(), 1, "only the accepted message: {messages:?}");
    assert_eq!(messages[0]["body"], "accepted before the abuse");
    // Nothing panicked on the way.
    let metrics = scrape(&chat.process).await;
    assert!(metrics.contains("rampart_panics_total{source=\"actor\",route=\"\"} 0"), "{metrics}");
}

#[actix_rt::test]
async fn a_fast_sender_is_rate_limited_per_connection() {
    let chat = ChatServer::start(&[("RAMPART__WS__RATE_LIMIT_PER_SEC", "1"), ("RAMPART__WS__BURST", "3")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    let mut ws = chat.ws("alice").await;
    for n in 0..6 {
        ws.send_message(&conversation, &format!("r{n}"), "hi").await;
    }
    let mut codes = HashMap::new();
    for _ in 0..6 {
        let frame = ws.next_json().await;
        let outcome = if frame["type"] == "ack" { "ack" } else { frame["code"].as_str().unwrap_or("?") }.to_owned();
        *codes.entry(outcome).or_insert(0) += 1;
    }
    assert_eq!(codes.get("ack"), Some(&3), "{codes:?}");
    assert_eq!(codes.get("rate_limited"), Some(&3), "{codes:?}");
}

#[actix_rt::test]
async fn online_recipients_get_pushes_and_a_reconnecting_one_gets_its_backlog_in_order() {
    online_recipients_get_pushes_and_a_reconnecting_one_gets_its_backlog_in_order_on(&Backend::Sqlite).await;
}

/// Shared with the scale-out suite (`mongodb.rs`).
pub async fn online_recipients_get_pushes_and_a_reconnecting_one_gets_its_backlog_in_order_on(backend: &Backend) {
    let chat = backend.start(&[]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let mut bob = chat.ws("bob").await;
    alice.send_message(&conversation, "live", "are you there?").await;
    assert_eq!(alice.next_json().await["type"], "ack");
    let pushed = bob.next_json().await;
    assert_eq!(pushed["type"], "message", "{pushed}");
    assert_eq!((pushed["sender"].as_str(), pushed["body"].as_str()), (Some("alice"), Some("are you there?")));
    assert_eq!(pushed["conversation"], conversation.as_str());
    bob.send_json(json!({"type": "delivered", "id": pushed["id"]})).await;
    // Bob leaves; alice writes five more.
    drop(bob);
    for n in 0..5 {
        alice.send_message(&conversation, &format!("later-{n}"), &format!("while you were away {n}")).await;
        assert_eq!(alice.next_json().await["type"], "ack");
    }
    // The confirmed message is not sent again; the five come in order.
    let confirmed = pushed["id"].as_str().unwrap().to_owned();
    // The confirmation is written behind (within milliseconds): reconnect until it is.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let received = loop {
        let mut bob = chat.ws("bob").await;
        let mut received = Vec::new();
        let mut confirmed_again = false;
        for _ in 0..5 {
            let frame = bob.next_json().await;
            if frame["id"] == confirmed.as_str() {
                confirmed_again = true;
                break;
            }
            received.push(frame["body"].as_str().unwrap_or("").to_owned());
        }
        if !confirmed_again {
            break received;
        }
        assert!(std::time::Instant::now() < deadline, "the confirmed message keeps coming back");
    };
    let expected: Vec<String> = (0..5).map(|n| format!("while you were away {n}")).collect();
    assert_eq!(received, expected);
}

#[actix_rt::test]
async fn the_cleanup_job_requeues_a_delivery_nobody_confirmed() {
    the_cleanup_job_requeues_a_delivery_nobody_confirmed_on(&Backend::Sqlite).await;
}

/// Shared with the scale-out suite (`mongodb.rs`).
pub async fn the_cleanup_job_requeues_a_delivery_nobody_confirmed_on(backend: &Backend) {
    let chat = backend.start(&[
        ("RAMPART__DELIVERY__STALE_AFTER", "300ms"),
        ("RAMPART__DELIVERY__CLEANUP_INTERVAL", "200ms"),
        ("RAMPART__CHAOS__ENABLED", "true"),
    ]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    // A panic in the job restarts it; it keeps its schedule.
    let (status, _) = chat
        .http
        .post(&chat.url("/admin/chaos/panic"), Some(ADMIN_TOKEN), json!({"actor": "/root/chat/cleanup"}))
        .await;
    assert_eq!(status, 202);
    let mut bob = chat.ws("bob").await;
    let mut alice = chat.ws("alice").await;
    alice.send_message(&conversation, "stuck", "please confirm").await;
    assert_eq!(alice.next_json().await["type"], "ack");
    let first = bob.next_json().await;
    assert_eq!(first["type"], "message");
    // Bob never confirms: the cleanup job puts it back to pending and it is pushed again.
    let again = bob.next_json().await;
    assert_eq!((again["type"].as_str(), again["id"].as_str()), (Some("message"), first["id"].as_str()), "{again}");
    bob.send_json(json!({"type": "delivered", "id": again["id"]})).await;
    eventually("requeue counted", Duration::from_secs(10), || async {
        crate::support::metric_value(&scrape(&chat.process).await, "rampart_deliveries_requeued_total")
            .is_some_and(|n| n >= 1.0)
    })
    .await;
}

#[actix_rt::test]
async fn a_poison_message_is_bisected_out_to_dead_letters_while_the_rest_are_acked() {
    a_poison_message_is_bisected_out_to_dead_letters_while_the_rest_are_acked_on(&Backend::Sqlite).await;
}

/// Shared with the scale-out suite (`mongodb.rs`).
pub async fn a_poison_message_is_bisected_out_to_dead_letters_while_the_rest_are_acked_on(backend: &Backend) {
    let chat = backend.start(&[("RAMPART__CHAOS__ENABLED", "true"), ("RAMPART__PIPELINE__BATCH_MAX_DELAY", "50ms")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    let mut ws = chat.ws("alice").await;
    // 40 messages inside one batch window; number 17 is poison.
    for n in 0..40 {
        let body =
            if n == 17 { format!("{} number {n}", rampart::chat::CHAOS_POISON_MARKER) } else { format!("fine {n}") };
        ws.send_message(&conversation, &format!("p{n}"), &body).await;
    }
    let mut acked = HashSet::new();
    let mut rejected = Vec::new();
    for _ in 0..40 {
        let frame = ws.next_json().await;
        match frame["type"].as_str() {
            Some("ack") => assert!(acked.insert(frame["client_msg_id"].as_str().unwrap().to_owned())),
            _ => rejected.push(frame),
        }
    }
    assert_eq!(acked.len(), 39, "{rejected:?}");
    assert_eq!(rejected.len(), 1);
    assert_eq!((rejected[0]["code"].as_str(), rejected[0]["client_msg_id"].as_str()), (Some("rejected"), Some("p17")));
    let stored = chat.all_messages("alice", &conversation).await;
    assert_eq!(stored.len(), 39);

    let (status, letters) = chat.http.get(&chat.url("/admin/dead-letters"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{letters}");
    let letters = letters["dead_letters"].as_array().expect("list").clone();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["kind"], "message");
    assert_eq!(letter["payload"]["client_msg_id"], "p17");
    assert!(letter["reason"].as_str().is_some_and(|r| r.contains("poison")), "{letter}");
    assert!(letter["attempts"].as_u64().is_some_and(|a| a >= 1), "{letter}");
    assert!(letter["at"].as_str().is_some() && letter["id"].as_str().is_some());
    // The storage job's panic was contained and recorded, not a process crash.
    let metrics = scrape(&chat.process).await;
    assert!(crate::support::metric_value(&metrics, "rampart_panics_total{source=\"task\",route=\"\"}")
        .is_some_and(|n| n >= 1.0));
}

#[actix_rt::test]
async fn a_batch_that_stalls_while_the_store_is_healthy_is_bisected_and_its_poison_dead_lettered() {
    a_batch_that_stalls_while_the_store_is_healthy_is_bisected_and_its_poison_dead_lettered_on(&Backend::Sqlite).await;
}

/// A batch whose commit never finishes while the store answers other writes in time (one
/// message makes it so): it used to be retried whole until the breaker opened, for good — a
/// Kafka partition stopped. It is bisected like a panicking one, the stalling message is
/// dead-lettered, the rest acked, the breaker stays closed. Shared with `mongodb.rs`.
pub async fn a_batch_that_stalls_while_the_store_is_healthy_is_bisected_and_its_poison_dead_lettered_on(
    backend: &Backend,
) {
    let chat = backend.start(&[
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__PIPELINE__BATCH_MAX_DELAY", "50ms"),
        ("RAMPART__PIPELINE__STORAGE_TIMEOUT", "500ms"),
    ]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    let mut ws = chat.ws("alice").await;
    for n in 0..20 {
        let body =
            if n == 7 { format!("{} number {n}", rampart::chat::CHAOS_STALL_MARKER) } else { format!("fine {n}") };
        ws.send_message(&conversation, &format!("s{n}"), &body).await;
    }
    let mut acked = HashSet::new();
    let mut refused = Vec::new();
    for _ in 0..20 {
        let frame = ws.next_json().await;
        match frame["type"].as_str() {
            Some("ack") => assert!(acked.insert(frame["client_msg_id"].as_str().unwrap().to_owned())),
            _ => refused.push(frame),
        }
    }
    assert_eq!(acked.len(), 19, "{refused:?}");
    assert_eq!((refused[0]["code"].as_str(), refused[0]["client_msg_id"].as_str()), (Some("rejected"), Some("s7")));
    assert_eq!(chat.all_messages("alice", &conversation).await.len(), 19);
    let (_, letters) = chat.http.get(&chat.url("/admin/dead-letters"), Some(ADMIN_TOKEN)).await;
    let letters = letters["dead_letters"].as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["payload"]["client_msg_id"], "s7");
    assert!(letters[0]["reason"].as_str().is_some_and(|r| r.contains("probe")), "{}", letters[0]);
    let (status, ready) = chat.http.get(&chat.url("/ready"), None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["circuit:storage"][0]["observedValue"], "closed", "{ready}");
}

#[actix_rt::test]
async fn a_sender_created_shortly_after_its_first_message_succeeds() {
    let chat = ChatServer::start(&[]);
    chat.create_user("alice").await;
    // Dave has a valid token but no user record yet (another service provisions it).
    let conversation = chat.conversation("dave", &["alice"]).await;
    let mut dave = chat.ws("dave").await;
    dave.send_message(&conversation, "early", "hello before I exist").await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the scenario: the user appears 200 ms later
    chat.create_user("dave").await;
    let ack = dave.next_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

#[actix_rt::test]
async fn an_unknown_sender_is_dead_lettered_and_can_be_retried() {
    an_unknown_sender_is_dead_lettered_and_can_be_retried_on(&Backend::Sqlite).await;
}

/// Shared with the scale-out suite (`mongodb.rs`).
pub async fn an_unknown_sender_is_dead_lettered_and_can_be_retried_on(backend: &Backend) {
    let chat = backend.start(&[("RAMPART__PIPELINE__UNKNOWN_SENDER_WAIT", "100ms")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("ghost", &["alice"]).await;
    let (status, body) = chat.post_message(&chat.token("ghost"), &conversation, "g1", "boo").await;
    assert_eq!((status, body["error"].as_str()), (422, Some("unknown_sender")), "{body}");
    let (_, letters) = chat.http.get(&chat.url("/admin/dead-letters"), Some(ADMIN_TOKEN)).await;
    let id = letters["dead_letters"][0]["id"].as_str().expect("a dead letter").to_owned();
    // Retrying before the user exists puts it back; after, it is stored.
    chat.create_user("ghost").await;
    let (status, retried) =
        chat.http.post(&chat.url(&format!("/admin/dead-letters/{id}/retry")), Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["ack"]["client_msg_id"], "g1");
    let (_, letters) = chat.http.get(&chat.url("/admin/dead-letters"), Some(ADMIN_TOKEN)).await;
    assert_eq!(letters["dead_letters"].as_array().map(Vec::len), Some(0), "{letters}");
    assert_eq!(chat.all_messages("alice", &conversation).await.len(), 1);
}

#[actix_rt::test]
async fn a_session_panic_restarts_it_behind_the_same_socket() {
    let chat = ChatServer::start(&[("RAMPART__CHAOS__ENABLED", "true")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    let mut ws = chat.ws("alice").await;
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    let (_, actors) = chat.http.get(&chat.url("/admin/actors"), Some(ADMIN_TOKEN)).await;
    let session = actors["actors"]
        .as_array()
        .and_then(|actors| {
            actors.iter().find_map(|a| a["path"].as_str().filter(|p| p.starts_with("/root/chat/sessions/ws-")))
        })
        .expect("a session actor")
        .to_owned();
    let (status, _) =
        chat.http.post(&chat.url("/admin/chaos/panic"), Some(ADMIN_TOKEN), json!({"actor": session})).await;
    assert_eq!(status, 202);
    eventually("session restarted", Duration::from_secs(10), || async {
        let (_, actors) = chat.http.get(&chat.url("/admin/actors"), Some(ADMIN_TOKEN)).await;
        actors["actors"]
            .as_array()
            .is_some_and(|all| all.iter().any(|a| a["path"] == session.as_str() && a["restarts"] == 1))
    })
    .await;
    ws.send_message(&conversation, "after", "still here").await;
    assert_eq!(ws.next_json().await["type"], "ack");
}

#[actix_rt::test]
async fn websocket_clients_get_1001_on_shutdown() {
    let mut chat = ChatServer::start(&[("RAMPART__SHUTDOWN__READINESS_DELAY", "0s")]);
    chat.create_user("alice").await;
    let mut ws = chat.ws("alice").await;
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    chat.process.terminate();
    assert_eq!(ws.close_code().await, Some(1001));
    let status = chat.process.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", chat.process.output());
}

#[actix_rt::test]
async fn batch_writer_panics_during_load_lose_and_duplicate_nothing_acked() {
    batch_writer_panics_during_load_lose_and_duplicate_nothing_acked_on(&Backend::Sqlite).await;
}

/// Shared with the scale-out suite (`mongodb.rs`).
pub async fn batch_writer_panics_during_load_lose_and_duplicate_nothing_acked_on(backend: &Backend) {
    let chat = backend.start(&[("RAMPART__CHAOS__ENABLED", "true")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    let mut ws = chat.ws("alice").await;
    let total = 1000;
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut chaos_requests = 0;
    for n in 0..total {
        ws.send_message(&conversation, &format!("load-{n}"), &format!("load message {n}")).await;
        if n % 250 == 100 {
            let (status, _) = chat
                .http
                .post(&chat.url("/admin/chaos/panic"), Some(ADMIN_TOKEN), json!({"actor": "/root/chat/batch_writer"}))
                .await;
            assert_eq!(status, 202);
            chaos_requests += 1;
        }
    }
    let mut errors = 0;
    while acked.len() + errors < total {
        let frame = match ws.next_frame().await {
            Some(awc::ws::Frame::Text(bytes)) => serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            other => {
                let missing: Vec<String> =
                    (0..total).map(|n| format!("load-{n}")).filter(|id| !acked.contains_key(id)).collect();
                panic!(
                    "{other:?}; {} unanswered: {:?}\n{}",
                    missing.len(),
                    &missing[..missing.len().min(20)],
                    chat.process.output()
                );
            }
        };
        match frame["type"].as_str() {
            Some("ack") => {
                acked.insert(
                    frame["client_msg_id"].as_str().unwrap().to_owned(),
                    frame["id"].as_str().unwrap().to_owned(),
                );
            }
            _ => errors += 1,
        }
    }
    let stored = chat.all_messages("alice", &conversation).await;
    let mut stored_ids: HashMap<String, usize> = HashMap::new();
    for message in &stored {
        *stored_ids.entry(message["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert!(stored_ids.values().all(|n| *n == 1), "a message stored twice");
    for (client_msg_id, id) in &acked {
        assert_eq!(stored_ids.get(id), Some(&1), "acked {client_msg_id} ({id}) not stored exactly once");
    }
    let (_, actors) = chat.http.get(&chat.url("/admin/actors"), Some(ADMIN_TOKEN)).await;
    let writer = actors["actors"].as_array().unwrap().iter().find(|a| a["path"] == "/root/chat/batch_writer").cloned();
    assert_eq!(writer.as_ref().and_then(|w| w["restarts"].as_u64()), Some(chaos_requests), "{writer:?}");
}

#[actix_rt::test]
async fn acked_messages_survive_kill_9() {
    acked_messages_survive_kill_9_on(&Backend::Sqlite).await;
}

/// Shared with the scale-out suite (`mongodb.rs`).
pub async fn acked_messages_survive_kill_9_on(backend: &Backend) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let env = backend.env(&[]);
    let mut acked = Vec::new();
    let conversation;
    {
        let mut chat = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &env));
        chat.create_user("alice").await;
        conversation = chat.conversation("alice", &[]).await;
        let mut ws = chat.ws("alice").await;
        for n in 0..300 {
            ws.send_message(&conversation, &format!("k{n}"), &format!("durable {n}")).await;
        }
        while acked.len() < 300 {
            let frame = ws.next_json().await;
            assert_eq!(frame["type"], "ack", "{frame}");
            acked.push(frame["id"].as_str().unwrap().to_owned());
        }
        // Right after the last ack: no shutdown code runs.
        chat.process.kill_hard();
    }
    let chat = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &env));
    let stored = chat.all_messages("alice", &conversation).await;
    let ids: Vec<&str> = stored.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates after restart");
    for id in &acked {
        assert!(unique.contains(id.as_str()), "acked message {id} lost by kill -9");
    }
    // The search index catches up from its watermark: the last acked message is findable.
    let token = chat.token("alice");
    eventually("index caught up after the restart", Duration::from_secs(30), || async {
        let (status, body) = chat.http.get(&chat.url("/api/search?q=durable%20299"), Some(&token)).await;
        status == 200 && body["hits"].as_array().is_some_and(|hits| hits.len() == 1)
    })
    .await;
}

#[actix_rt::test]
async fn batches_never_exceed_batch_max_messages() {
    // Regression: messages queued during a commit were all taken into the next batch, so
    // batch_max_messages = 1 still committed hundreds per transaction.
    let chat = ChatServer::start(&[("RAMPART__PIPELINE__BATCH_MAX_MESSAGES", "5")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    let mut ws = chat.ws("alice").await;
    for n in 0..300 {
        ws.send_message(&conversation, &format!("b{n}"), "x").await;
    }
    for _ in 0..300 {
        assert_eq!(ws.next_json().await["type"], "ack");
    }
    let metrics = scrape(&chat.process).await;
    let batches = crate::support::metric_value(&metrics, "rampart_batch_size_count").expect("batch count");
    let small = crate::support::metric_value(&metrics, "rampart_batch_size_bucket{le=\"5.0\"}").expect("bucket");
    assert_eq!(small, batches, "every batch holds at most 5 messages:\n{metrics}");
    assert!(batches >= 60.0, "300 messages need at least 60 batches of 5, got {batches}");
}

#[actix_rt::test]
async fn a_silent_connection_is_closed_by_the_heartbeat() {
    let chat =
        ChatServer::start(&[("RAMPART__WS__HEARTBEAT_INTERVAL", "100ms"), ("RAMPART__WS__CLIENT_TIMEOUT", "300ms")]);
    chat.create_user("alice").await;
    // This client never sends anything (not even pongs): the server gives up on it.
    let mut silent = chat.ws("alice").await;
    assert_eq!(silent.close_code().await, Some(1001));
    eventually("connection unregistered", Duration::from_secs(10), || async {
        crate::support::metric_value(&scrape(&chat.process).await, "rampart_ws_connections") == Some(0.0)
    })
    .await;
}

/// RFC 6455 §7.1.1: after the close handshake the server closes the TCP connection, at once.
/// Clients that wait for that (Python's `websockets`) must not hang. A raw socket, so nothing in
/// between closes the connection on the server's behalf.
#[actix_rt::test]
async fn after_the_close_handshake_the_server_closes_the_tcp_connection() {
    use std::io::{Read as _, Write as _};
    let chat = ChatServer::start(&[]);
    chat.create_user("alice").await;
    let address = chat.process.base_url.trim_start_matches("http://").to_owned();
    let token = chat.token("alice");
    let closed_after = actix_web::web::block(move || {
        let mut socket = std::net::TcpStream::connect(&address).expect("connect");
        socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).unwrap();
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while !received.windows(4).any(|window| window == b"\r\n\r\n") {
            let n = socket.read(&mut chunk).expect("handshake response");
            assert!(n > 0, "closed during the handshake");
            received.extend_from_slice(&chunk[..n]);
        }
        assert!(received.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&received));
        let head_end = received.windows(4).position(|window| window == b"\r\n\r\n").unwrap() + 4;
        let mut frames = received.split_off(head_end);
        // A masked Close frame with code 1000.
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let code = 1000u16.to_be_bytes();
        socket
            .write_all(&[0x88, 0x82, mask[0], mask[1], mask[2], mask[3], code[0] ^ mask[0], code[1] ^ mask[1]])
            .unwrap();
        let sent_close = std::time::Instant::now();
        loop {
            match socket.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => frames.extend_from_slice(&chunk[..n]),
                Err(error) => panic!("the server kept the connection open: {error}"),
            }
        }
        assert_eq!(&frames[..4], &[0x88, 0x02, 0x03, 0xe8], "the close frame echoed with 1000");
        sent_close.elapsed()
    })
    .await
    .unwrap();
    // The server closes at once (RFC 6455 §7.1.1). It used to linger ≈ 0.5 s (actix-web's
    // `http.disconnect_timeout` after an upgraded response): anything under 300 ms, even on a
    // loaded machine, means no linger (measured: a few milliseconds).
    eprintln!("TCP closed {closed_after:?} after the client's close frame");
    assert!(closed_after < Duration::from_millis(300), "the server lingered {closed_after:?} before closing");
}
