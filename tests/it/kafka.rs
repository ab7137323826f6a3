//! `transport.kind = "kafka"` against real servers: Apache Kafka (KRaft), FerretDB and OpenSearch
//! from `scripts/services.sh up mongodb opensearch kafka`. Built with `--features kafka` only;
//! reads `RAMPART_TEST_KAFKA_BROKERS` (and the scale-out variables) and skips without them unless
//! `RAMPART_REQUIRE_SERVICES=1`. Each test has a topic, consumer groups, a database and an index
//! of its own, so they run side by side; the test that stops Kafka runs a broker of its own.
//!
//! With Kafka an ack means "the brokers have it", so reads after an ack poll until the writer
//! consumer has stored the message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::chat_client::{Backend, ChatServer, WsClient};
use crate::support::eventually;

/// Waits until `conversation` holds exactly the messages `acked` names (client id → id), each
/// once, and nothing else but `extra` more.
async fn stored_exactly(
    chat: &ChatServer,
    user: &str,
    conversation: &str,
    acked: &HashMap<String, String>,
    extra: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stored = chat.all_messages(user, conversation).await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for message in &stored {
            *counts.entry(message["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "stored more than once: {twice:?}");
        let missing: Vec<&String> = acked.values().filter(|id| !counts.contains_key(*id)).collect();
        if missing.is_empty() {
            assert_eq!(stored.len(), acked.len() + extra, "nothing stored but what was acked");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} acked messages never stored, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll: the writer stores behind the ack
    }
}

/// The next frame of `ws` that is a pushed message (acks of its own sends are skipped).
async fn next_push(ws: &mut WsClient) -> Value {
    loop {
        let frame = ws.next_json().await;
        if frame["type"] == "message" {
            return frame;
        }
    }
}

#[actix_rt::test]
async fn kafka_send_ack_store_search_push_and_resend() {
    let Some(backend) = Backend::kafka("flow") else { return };
    let chat = backend.start(&[]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let mut bob = chat.ws("bob").await;

    alice.send_message(&conversation, "m-1", "the quick brown fox").await;
    let ack = alice.next_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["id"].as_str().expect("id").to_owned();
    // Pushed to bob through the committed-events topic once the writer stored it.
    let pushed = next_push(&mut bob).await;
    assert_eq!((pushed["id"].as_str(), pushed["body"].as_str()), (Some(id.as_str()), Some("the quick brown fox")));
    bob.send_json(json!({"type": "delivered", "id": pushed["id"]})).await;
    // Stored with the ack's time.
    let (_, history) = chat.history("bob", &conversation, "").await;
    assert_eq!(history["messages"][0]["id"], id.as_str(), "{history}");
    assert_eq!(history["messages"][0]["created_at"], ack["created_at"], "{history}");
    // A resend gets the same ack and stores nothing new, over WS and HTTP.
    alice.send_message(&conversation, "m-1", "second body, same id").await;
    assert_eq!(alice.next_json().await, ack);
    let (status, again) = chat.post_message(&chat.token("alice"), &conversation, "m-1", "again").await;
    assert_eq!((status, again["id"].as_str()), (201, Some(id.as_str())), "{again}");
    // Searchable.
    let token = chat.token("bob");
    eventually("message searchable", Duration::from_secs(30), || async {
        let (status, body) = chat.http.get(&chat.url("/api/search?q=quick"), Some(&token)).await;
        status == 200 && body["hits"].as_array().is_some_and(|hits| hits.len() == 1 && hits[0]["id"] == id.as_str())
    })
    .await;
    // Many, in order per conversation.
    let ids: Vec<String> = (0..200).map(|n| format!("b{n}")).collect();
    let answers = alice.send_burst(&conversation, &ids, "burst").await;
    assert!(answers.refused.is_empty(), "{:?}", &answers.refused[..answers.refused.len().min(3)]);
    let acked: HashMap<String, String> = answers.acked.into_iter().collect();
    let mut all = acked.clone();
    all.insert("m-1".into(), id.clone());
    stored_exactly(&chat, "bob", &conversation, &all, 0).await;
    let mut pushed = Vec::new();
    while pushed.len() < 200 {
        let frame = next_push(&mut bob).await;
        pushed.push(frame["id"].as_str().unwrap_or_default().to_owned());
    }
    let sent: Vec<String> = ids.iter().map(|client_msg_id| acked[client_msg_id].clone()).collect();
    assert_eq!(pushed, sent, "pushed in the order sent");

    // Readiness checks the brokers; metrics show the transport.
    let (status, ready) = chat.http.get(&chat.url("/ready"), None).await;
    assert_eq!((status, ready["checks"]["kafka:brokers"][0]["status"].as_str()), (200, Some("pass")), "{ready}");
    let metrics = chat.http.get_text(&chat.url("/metrics")).await;
    for series in
        ["rampart_kafka_producer_in_flight", "rampart_kafka_delivery_seconds_count", "rampart_kafka_dead_letters_total"]
    {
        assert!(metrics.contains(series), "{series} in /metrics");
    }
    eventually("consumer lag is exported per partition", Duration::from_secs(20), || async {
        chat.http
            .get_text(&chat.url("/metrics"))
            .await
            .contains("rampart_kafka_consumer_lag{group=\"writer\",partition=\"0\"}")
    })
    .await;
}

#[actix_rt::test]
async fn kafka_users_on_two_processes_chat_in_real_time() {
    let Some(backend) = Backend::kafka("two") else { return };
    let first = backend.start(&[]);
    let second = backend.start(&[]);
    first.create_user("alice").await;
    first.create_user("bob").await;
    let conversation = first.conversation("alice", &["bob"]).await;
    let mut alice = first.ws("alice").await;
    let mut bob = second.ws("bob").await;
    for n in 0..5 {
        alice.send_message(&conversation, &format!("a{n}"), &format!("ping {n}")).await;
        assert_eq!(alice.next_json().await["type"], "ack");
        let pushed = next_push(&mut bob).await;
        assert_eq!(pushed["body"], format!("ping {n}"), "{pushed}");
        bob.send_json(json!({"type": "delivered", "id": pushed["id"]})).await;
        bob.send_message(&conversation, &format!("b{n}"), &format!("pong {n}")).await;
        let pushed = next_push(&mut alice).await;
        assert_eq!(pushed["body"], format!("pong {n}"), "{pushed}");
        alice.send_json(json!({"type": "delivered", "id": pushed["id"]})).await;
    }
    // Carol reconnects to the other process and gets her backlog there.
    first.create_user("carol").await;
    let group = first.conversation("alice", &["carol"]).await;
    for n in 0..3 {
        alice.send_message(&group, &format!("c{n}"), &format!("for carol {n}")).await;
    }
    let mut carol = second.ws("carol").await;
    let mut received = Vec::new();
    while received.len() < 3 {
        received.push(next_push(&mut carol).await["body"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(received, ["for carol 0", "for carol 1", "for carol 2"]);
}
