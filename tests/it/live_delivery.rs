//! An acked message reaches every member connected at that moment or later, live, without a
//! reconnect, whatever happens between its commit and its announcement to delivery: a commit
//! that timed out but landed (then acked as a duplicate), a batch writer crash mid-commit, a
//! delivery hub crash with the announcement in hand, an announcement lost on the way (full
//! mailbox, lost Kafka feed event: `CHAOS_UNANNOUNCED_MARKER`), another process storing it.
//! The bound (README): pushed within `delivery.stale_after` + one cleanup interval at worst.
//!
//! The scenarios (`*_on`) run here on the embedded store, in `mongodb.rs` on MongoDB and in
//! `kafka.rs` through Kafka.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rampart::chat::{CHAOS_DELIVERY_PANIC_MARKER, CHAOS_UNANNOUNCED_MARKER};
use serde_json::{json, Value};

use crate::chat_client::{Backend, ChatServer, WsClient, ADMIN_TOKEN};
use crate::support::{eventually, metric_value, scrape};

/// The backstop's settings in these scenarios: a lost push comes within 2.5 s.
const STALE_AFTER: &str = "2s";
const CLEANUP_INTERVAL: &str = "500ms";
/// So long that only the announcement (not the backstop) can push within a test.
const NO_BACKSTOP: &str = "1h";

fn live_env<'a>(stale_after: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__DELIVERY__STALE_AFTER", stale_after),
        ("RAMPART__DELIVERY__CLEANUP_INTERVAL", CLEANUP_INTERVAL),
    ];
    env.extend_from_slice(extra);
    env
}

/// Alice and bob with a conversation, both connected, bob live (he received one message).
async fn alice_and_live_bob(chat: &ChatServer) -> (String, WsClient, WsClient) {
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let mut bob = chat.ws("bob").await;
    let ack = send_until_acked(&mut alice, &conversation, "warm-up", "hello bob").await;
    assert_eq!(received(&mut bob, &ack).await["body"], "hello bob");
    (conversation, alice, bob)
}

/// Reads `message` frames, confirming each as a client does, until every id of `expected` came;
/// the messages by id. Others are skipped: delivery is at least once, and a message whose
/// confirmation was lost in a crash (or delayed behind a slow store) comes again.
async fn receive(ws: &mut WsClient, expected: &HashSet<String>) -> HashMap<String, Value> {
    let mut got = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !expected.iter().all(|id| got.contains_key(id)) {
        assert!(Instant::now() < deadline, "{} of {} pushed", got.len(), expected.len());
        let frame = ws.next_json().await;
        if frame["type"] != "message" {
            continue;
        }
        ws.send_json(json!({"type": "delivered", "id": frame["id"]})).await;
        let id = frame["id"].as_str().unwrap_or_default().to_owned();
        if expected.contains(&id) {
            got.insert(id, frame);
        }
    }
    got
}

/// The pushed message an ack was for.
async fn received(ws: &mut WsClient, ack: &Value) -> Value {
    let id = ack["id"].as_str().unwrap_or_default().to_owned();
    receive(ws, &HashSet::from([id.clone()])).await.remove(&id).unwrap_or_default()
}

/// Sends until acked (resending after `unavailable`, as clients do); the ack.
async fn send_until_acked(ws: &mut WsClient, conversation: &str, client_msg_id: &str, body: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ws.send_message(conversation, client_msg_id, body).await;
        let answer = ws.next_json().await;
        if answer["type"] == "ack" {
            return answer;
        }
        assert!(answer["code"] == "unavailable" && Instant::now() < deadline, "{answer}");
    }
}

async fn metric(chat: &ChatServer, series: &str) -> f64 {
    metric_value(&scrape(&chat.process).await, series).unwrap_or(0.0)
}

#[actix_rt::test]
async fn an_unannounced_message_reaches_its_connected_recipient() {
    an_unannounced_message_reaches_its_connected_recipient_on(&Backend::Sqlite).await;
}

/// The backstop: a message stored and acked whose announcement never reached delivery.
pub async fn an_unannounced_message_reaches_its_connected_recipient_on(backend: &Backend) {
    let chat = backend.start(&live_env(STALE_AFTER, &[]));
    let (conversation, mut alice, mut bob) = alice_and_live_bob(&chat).await;
    let body = format!("announcement lost {CHAOS_UNANNOUNCED_MARKER}");
    let ack = send_until_acked(&mut alice, &conversation, "lost", &body).await;
    let acked = Instant::now();
    let pushed = received(&mut bob, &ack).await;
    assert_eq!((&pushed["id"], &pushed["body"]), (&ack["id"], &json!(body)));
    eprintln!(
        "pushed {:?} after the ack (stale_after {STALE_AFTER}, cleanup every {CLEANUP_INTERVAL})",
        acked.elapsed()
    );
    // The hub counts a catch-up's pushes after handing them to the socket, which may write them
    // first: on a loaded machine the count can come after the client has the message (seen in CI).
    eventually("the push counted as a catch-up", Duration::from_secs(10), || async {
        metric(&chat, "rampart_deliveries_caught_up_total").await >= 1.0
    })
    .await;
}

#[actix_rt::test]
async fn a_delivery_crash_with_an_announcement_in_hand_loses_no_push() {
    a_delivery_crash_with_an_announcement_in_hand_loses_no_push_on(&Backend::Sqlite).await;
}

/// The hub panics while pushing a message: the restarted hub catches every live connection up
/// at once (no backstop needed).
pub async fn a_delivery_crash_with_an_announcement_in_hand_loses_no_push_on(backend: &Backend) {
    let chat = backend.start(&live_env(NO_BACKSTOP, &[]));
    let (conversation, mut alice, mut bob) = alice_and_live_bob(&chat).await;
    let body = format!("the hub dies on this {CHAOS_DELIVERY_PANIC_MARKER}");
    let ack = send_until_acked(&mut alice, &conversation, "crash", &body).await;
    let pushed = received(&mut bob, &ack).await;
    assert_eq!((&pushed["id"], &pushed["body"]), (&ack["id"], &json!(body)));
    chat.assert_restarted(["/root/chat/delivery"]).await;
    // Live as before: the next message comes as usual.
    let ack = send_until_acked(&mut alice, &conversation, "after", "still there?").await;
    assert_eq!(received(&mut bob, &ack).await["body"], "still there?");
}

#[actix_rt::test]
async fn a_commit_that_timed_out_but_landed_is_pushed_when_acked_as_a_duplicate() {
    // The reproduction of the report: the first attempt outlives its deadline on a slow disk and
    // lands; the retry finds the row and acks it as a duplicate, which was never announced.
    // Without the backstop (stale_after 1 h), only the announcement can push it.
    let chat = ChatServer::start(&live_env(
        NO_BACKSTOP,
        &[
            ("RAMPART__PIPELINE__STORAGE_TIMEOUT", "1s"),
            ("RAMPART__PIPELINE__MAX_ATTEMPTS", "20"),
            ("RAMPART__PIPELINE__RETRY_MAX", "200ms"),
        ],
    ));
    // No warm-up message: its claim or confirmation, written behind, could be the write the slow
    // disk delays, and the commit would then start late enough to land on its first try. Bob's
    // empty backlog is read long before the commit lands, so he is live by then.
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let mut bob = chat.ws("bob").await;
    let faults = chat.url("/admin/chaos/storage");
    let (status, body) = chat.http.post(&faults, Some(ADMIN_TOKEN), json!({"delay_ms": 2500})).await;
    assert_eq!(status, 200, "{body}");
    alice.send_message(&conversation, "slow", "written slowly").await;
    eventually("the first attempt timed out", Duration::from_secs(20), || async {
        metric(&chat, "rampart_commit_failures_total").await >= 1.0
    })
    .await;
    let (status, _) = chat.http.request(awc::http::Method::DELETE, &faults, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200);
    let ack = alice.next_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let pushed = received(&mut bob, &ack).await;
    assert_eq!((&pushed["id"], &pushed["body"]), (&ack["id"], &json!("written slowly")));
}

/// MongoDB (and Kafka in front of it): the store's answers come late, so commits time out after
/// they landed; once the store answers in time again, every acked message reaches bob.
pub async fn commits_that_timed_out_but_landed_reach_online_members_on(backend: &Backend) {
    let (proxy, chat) = backend
        .start_behind_mongodb_proxy(&live_env(
            STALE_AFTER,
            &[("RAMPART__PIPELINE__MAX_ATTEMPTS", "20"), ("RAMPART__PIPELINE__RETRY_MAX", "300ms")],
        ))
        .await;
    let (conversation, mut alice, mut bob) = alice_and_live_bob(&chat).await;
    proxy.set_delay(Duration::from_millis(2500));
    let failures_before = metric(&chat, "rampart_commit_failures_total").await;
    alice.send_message(&conversation, "slow-0", "written slowly").await;
    eventually("a commit timed out", Duration::from_secs(30), || async {
        metric(&chat, "rampart_commit_failures_total").await > failures_before
    })
    .await;
    proxy.set_delay(Duration::ZERO);
    let first = alice.next_json().await;
    let mut acked = HashSet::new();
    match first["type"].as_str() {
        Some("ack") => {
            acked.insert(first["id"].as_str().unwrap_or_default().to_owned());
        }
        _ => {
            assert_eq!(first["code"], "unavailable", "{first}");
            let ack = send_until_acked(&mut alice, &conversation, "slow-0", "written slowly").await;
            acked.insert(ack["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    receive(&mut bob, &acked).await;
}

#[actix_rt::test]
async fn every_acked_message_reaches_a_connected_member_through_pipeline_panics() {
    every_acked_message_reaches_a_connected_member_through_pipeline_panics_on(&Backend::Sqlite).await;
}

/// Under load, the batch writer (mid-commit: bisected, duplicates) and the delivery hub (with
/// announcements in hand) panic again and again; bob, connected throughout, gets every acked
/// message live.
pub async fn every_acked_message_reaches_a_connected_member_through_pipeline_panics_on(backend: &Backend) {
    every_acked_message_reaches_a_connected_member_through_panics_of(
        backend,
        &["/root/chat/batch_writer", "/root/chat/delivery"],
    )
    .await;
}

/// The same, with panics of `actors` in turn.
pub async fn every_acked_message_reaches_a_connected_member_through_panics_of(backend: &Backend, actors: &[&str]) {
    let chat = backend.start(&live_env(
        STALE_AFTER,
        &[("RAMPART__WS__RATE_LIMIT_PER_SEC", "100000"), ("RAMPART__WS__BURST", "100000")],
    ));
    let (conversation, mut alice, mut bob) = alice_and_live_bob(&chat).await;
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut refused = Vec::new();
    let panic_url = chat.url("/admin/chaos/panic");
    for round in 0..8 {
        let actor = actors[round % actors.len()];
        let ids: Vec<String> = (0..50).map(|n| format!("r{round}-{n}")).collect();
        let panic = chat.http.post(&panic_url, Some(ADMIN_TOKEN), json!({"actor": actor}));
        // The panic lands while the burst is in flight.
        let (answers, (status, body)) =
            futures_util::future::join(alice.send_burst(&conversation, &ids, "under load"), panic).await;
        assert!(status == 202 || status == 409, "{status} {body}");
        acked.extend(answers.acked);
        refused.extend(answers.refused.into_iter().map(|refusal| refusal.client_msg_id));
    }
    for client_msg_id in refused {
        let ack = send_until_acked(&mut alice, &conversation, &client_msg_id, "under load").await;
        acked.insert(client_msg_id, ack["id"].as_str().unwrap_or_default().to_owned());
    }
    let expected: HashSet<String> = acked.into_values().collect();
    receive(&mut bob, &expected).await;
    chat.assert_restarted(actors.iter().copied()).await;
}
