//! Storage faults injected through `POST /admin/chaos/storage` (an I/O error halfway through a
//! batch, a slow disk) and overload: every send is answered, nothing is acked that was not
//! stored, nothing stored twice, the storage breaker opens and closes, and the pipeline refuses
//! early (never by timing out) when offered more than it can store. The real full disk is in
//! `disk_full.rs`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::chat_client::{Answers, ChatServer, ADMIN_TOKEN};
use crate::support::{metric_value, scrape};

async fn inject(chat: &ChatServer, plan: Value) -> Value {
    let (status, body) = chat.http.post(&chat.url("/admin/chaos/storage"), Some(ADMIN_TOKEN), plan).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn clear(chat: &ChatServer) -> Value {
    let url = chat.url("/admin/chaos/storage");
    let (status, body) = chat.http.request(awc::http::Method::DELETE, &url, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n}")).collect()
}

/// Every message of the conversation by id, asserting none is stored twice.
async fn stored_ids(chat: &ChatServer, user: &str, conversation: &str) -> HashSet<String> {
    let messages = chat.all_messages(user, conversation).await;
    let ids: Vec<String> = messages.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no message is stored twice");
    unique
}

async fn circuit(chat: &ChatServer) -> (u16, Value) {
    let (status, body) = chat.http.get(&chat.url("/ready"), None).await;
    (status, body["checks"]["circuit:storage"][0].clone())
}

#[actix_rt::test]
async fn an_io_error_mid_batch_is_retried_refused_or_recovered_never_falsely_acked() {
    let chat = ChatServer::start(&[
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__WS__RATE_LIMIT_PER_SEC", "1000000"),
        ("RAMPART__WS__BURST", "1000000"),
        ("RAMPART__PIPELINE__MAX_ATTEMPTS", "2"),
        ("RAMPART__PIPELINE__RETRY_BASE", "10ms"),
        ("RAMPART__PIPELINE__RETRY_MAX", "50ms"),
        ("RAMPART__PIPELINE__BREAKER__MINIMUM_CALLS", "4"),
        ("RAMPART__PIPELINE__BREAKER__WINDOW_SIZE", "10"),
        ("RAMPART__PIPELINE__BREAKER__WAIT_IN_OPEN", "1s"),
    ]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let mut acked: HashMap<String, String> = HashMap::new();

    // One batch fails halfway with EIO: its transaction rolls back, the retry stores it, every
    // sender is acked once.
    let state = inject(&chat, json!({"error": "eio", "writes": 1})).await;
    assert_eq!((state["error"].as_str(), state["remaining"].as_u64()), (Some("eio"), Some(1)), "{state}");
    let answers = alice.send_burst(&conversation, &ids("retried", 50), "hello").await;
    assert_eq!((answers.acked.len(), answers.refused.len()), (50, 0), "one failed attempt is retried: {answers:?}");
    acked.extend(answers.acked);
    let (_, state) = chat.http.get(&chat.url("/admin/chaos/storage"), Some(ADMIN_TOKEN)).await;
    assert_eq!((state["injected"].as_u64(), state["error"].as_str()), (Some(1), None), "{state}");
    assert!(metric_value(&scrape(&chat.process).await, "rampart_commit_failures_total").unwrap_or(0.0) >= 1.0);

    // Every batch fails: senders are told `unavailable` (never acked), the breaker opens and
    // readiness fails, HTTP senders get 503 with Retry-After.
    inject(&chat, json!({"error": "eio"})).await;
    let mut refused: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        let Answers { acked, refused: answers } =
            alice.send_burst(&conversation, &ids(&format!("failing-{round}"), 20), "hello").await;
        assert!(acked.is_empty(), "nothing is acked while every commit fails: {acked:?}");
        for refusal in answers {
            assert_eq!(refusal.code, "unavailable", "{refusal:?}");
            refused.push(refusal.client_msg_id);
        }
        if circuit(&chat).await.1["observedValue"] == "open" {
            break;
        }
        assert!(Instant::now() < deadline, "the storage breaker did not open under I/O errors");
    }
    let (status, check) = circuit(&chat).await;
    assert_eq!((status, check["status"].as_str()), (503, Some("fail")), "{check}");
    let response = awc::Client::new()
        .post(chat.url(&format!("/api/conversations/{conversation}/messages")))
        .bearer_auth(chat.token("alice"))
        .send_json(&json!({"client_msg_id": "over-http", "body": "hi"}))
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));

    // Nothing refused was stored.
    let stored = stored_ids(&chat, "bob", &conversation).await;
    assert_eq!(stored, acked.values().cloned().collect::<HashSet<_>>(), "stored = acked, exactly");

    // The disk heals: the breaker lets trial calls through after wait_in_open, they succeed,
    // it closes; resending what was refused stores each message once.
    clear(&chat).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        let answers = alice.send_burst(&conversation, &ids(&format!("healed-{attempt}"), 5), "hello").await;
        acked.extend(answers.acked);
        let (status, check) = circuit(&chat).await;
        if status == 200 && check["status"] == "pass" {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker did not close after the disk healed: {check}");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval, deadline above
    }
    refused.sort();
    refused.dedup();
    let answers = alice.send_burst(&conversation, &refused, "hello").await;
    assert_eq!(answers.refused.len(), 0, "{answers:?}");
    acked.extend(answers.acked);
    let stored = stored_ids(&chat, "bob", &conversation).await;
    assert_eq!(stored, acked.values().cloned().collect::<HashSet<_>>(), "stored = acked, exactly");
}

#[actix_rt::test]
async fn a_storage_timeout_answers_unavailable_and_the_resend_is_stored_once() {
    let chat = ChatServer::start(&[
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__PIPELINE__STORAGE_TIMEOUT", "200ms"),
        ("RAMPART__PIPELINE__MAX_ATTEMPTS", "2"),
        ("RAMPART__PIPELINE__RETRY_BASE", "10ms"),
        ("RAMPART__PIPELINE__RETRY_MAX", "20ms"),
        ("RAMPART__PIPELINE__MAX_QUEUE_DELAY", "30s"),
    ]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let alice = chat.token("alice");

    // Each write now takes 1 s, longer than the per-attempt timeout: both attempts time out.
    inject(&chat, json!({"delay_ms": 1000})).await;
    let (status, body) = chat.post_message(&alice, &conversation, "slow-1", "hello").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")), "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("timed out"), "{body}");

    // An attempt already running when its caller gave up still lands once the disk catches up
    // (an attempt that had not started is skipped); the client resends, as `unavailable` tells
    // it to, until acked, and gets the one stored copy.
    clear(&chat).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let (status, first) = chat.post_message(&alice, &conversation, "slow-1", "hello").await;
        if status == 201 {
            break first;
        }
        assert_eq!((status, first["error"].as_str()), (503, Some("unavailable")), "{first}");
        assert!(Instant::now() < deadline, "the resend was not acked once the disk recovered: {first}");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval, deadline above
    };
    let text = scrape(&chat.process).await;
    assert!(
        metric_value(&text, "rampart_storage_jobs_abandoned_total").unwrap_or(0.0) >= 1.0,
        "the second attempt was skipped"
    );
    let (status, again) = chat.post_message(&alice, &conversation, "slow-1", "hello").await;
    assert_eq!((status, &again["id"]), (201, &first["id"]), "{again}");
    let stored = stored_ids(&chat, "bob", &conversation).await;
    assert_eq!(stored, HashSet::from([first["id"].as_str().unwrap().to_owned()]));
}

#[actix_rt::test]
async fn overload_is_refused_early_every_send_is_answered_and_the_pipeline_recovers() {
    // A slow disk (20 ms per write, batches of at most 10): about 500 messages/s can be stored.
    let chat = ChatServer::start(&[
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__WS__RATE_LIMIT_PER_SEC", "1000000"),
        ("RAMPART__WS__BURST", "1000000"),
        ("RAMPART__PIPELINE__BATCH_MAX_MESSAGES", "10"),
        ("RAMPART__PIPELINE__MAX_QUEUE_DELAY", "100ms"),
    ]);
    let senders = 8;
    let mut conversations = Vec::new();
    chat.create_user("reader").await;
    for n in 0..senders {
        let user = format!("sender{n}");
        chat.create_user(&user).await;
        conversations.push((user.clone(), chat.conversation(&user, &["reader"]).await));
    }
    inject(&chat, json!({"delay_ms": 20})).await;

    // Each sender offers 400 messages as fast as the socket takes them: ~3,200 at once.
    let bursts = conversations.iter().map(|(user, conversation)| {
        let chat = &chat;
        async move {
            let mut ws = chat.ws(user).await;
            ws.send_burst(conversation, &ids(user, 400), "under load").await
        }
    });
    let answers: Vec<Answers> = futures_util::future::join_all(bursts).await;
    let acked: HashSet<String> = answers.iter().flat_map(|a| a.acked.iter().map(|(_, id)| id.clone())).collect();
    let refusals: Vec<_> = answers.iter().flat_map(|a| a.refused.iter()).collect();
    eprintln!("overload: {} acked, {} refused", acked.len(), refusals.len());
    assert_eq!(acked.len() + refusals.len(), senders * 400, "every send answered once");
    assert!(!refusals.is_empty(), "more than the disk can take is refused");
    for refusal in &refusals {
        assert_eq!(refusal.code, "unavailable", "{refusal:?}");
        assert!(refusal.message.contains("overloaded"), "refused for overload, not a timeout: {refusal:?}");
    }
    let text = scrape(&chat.process).await;
    assert!(metric_value(&text, "rampart_messages_shed_total").unwrap_or(0.0) >= refusals.len() as f64 - 0.5);

    // Refused means not stored; acked means stored, once.
    let mut stored = HashSet::new();
    for (_, conversation) in &conversations {
        stored.extend(stored_ids(&chat, "reader", conversation).await);
    }
    assert_eq!(stored, acked, "stored = acked, exactly");

    // Load gone: the next send is acked at once (no backlog left to work off).
    let (user, conversation) = &conversations[0];
    let (status, body) = chat.post_message(&chat.token(user), conversation, "after", "calm again").await;
    assert_eq!(status, 201, "{body}");
    let text = scrape(&chat.process).await;
    let limit = metric_value(&text, "rampart_pipeline_admission_limit").expect("limit exposed");
    assert!(limit >= 10.0, "the limit never goes below one batch: {limit}");
}
