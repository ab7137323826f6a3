//! Backlog replay is flow-controlled: a client reading a backlog larger than its outbox, slowly,
//! receives all of it in order on one connection, is never cut off as "too slow", and the server
//! holds at most a window of it in memory per connection; live senders are acked meanwhile.
//! (Before: the whole backlog was pushed at once; a reader at 200 msgs/s was cut off with 1008
//! after ~8k of 20k, and 50 readers of 2k each grew the server's peak RSS by 117 MiB.)

use std::time::{Duration, Instant};

use awc::ws::Frame;
use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;

use crate::chat_client::{ChatServer, WsClient};

/// ~1 KB bodies, as in the report that found the bug.
fn body(n: usize) -> String {
    format!("{n:08} {}", "x".repeat(1000))
}

/// Server settings for these tests: senders are not rate-limited (they build backlogs fast).
const ENV: &[(&str, &str)] = &[("RAMPART__WS__RATE_LIMIT_PER_SEC", "1000000"), ("RAMPART__WS__BURST", "1000000")];

/// Sends `count` messages on `ws`, 500 at a time, waiting for the acks of each chunk.
async fn flood(ws: &mut WsClient, conversation: &str, prefix: &str, count: usize) {
    let mut sent = 0;
    while sent < count {
        let chunk = 500.min(count - sent);
        for n in sent..sent + chunk {
            ws.send_message(conversation, &format!("{prefix}-{n}"), &body(n)).await;
        }
        for _ in 0..chunk {
            let ack = ws.next_json().await;
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        sent += chunk;
    }
}

/// Every message id of the conversation, in commit order.
async fn commit_order(chat: &ChatServer, user: &str, conversation: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        chat.all_messages(user, conversation).await.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    ids.reverse();
    ids
}

/// Reads messages at `per_second`, confirming each, until `count` arrived; returns their ids in
/// arrival order. Panics if the server closes the connection.
async fn read_slowly(ws: &mut WsClient, count: usize, per_second: u64) -> Vec<String> {
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        ticks.tick().await; // the throttle: this client reads at most `per_second` frames a second
        match ws.next_frame().await {
            Some(Frame::Text(bytes)) => {
                let frame: Value = serde_json::from_slice(&bytes).expect("JSON frame");
                assert_eq!(frame["type"], "message", "{frame}");
                let id = frame["id"].as_str().expect("id").to_owned();
                ws.send_json(json!({"type": "delivered", "id": id})).await;
                received.push(id);
            }
            other => panic!("after {} messages the server sent {other:?}", received.len()),
        }
    }
    received
}

#[actix_rt::test]
async fn a_slow_reader_gets_a_20000_message_backlog_in_order_while_live_senders_are_acked() {
    const BACKLOG: usize = 20_000;
    const LIVE: usize = 100;
    let chat = ChatServer::start(ENV);
    for user in ["sender", "reader"] {
        chat.create_user(user).await;
    }
    let conversation = chat.conversation("sender", &["reader"]).await;
    let mut sender = chat.ws("sender").await;
    flood(&mut sender, &conversation, "b", BACKLOG).await;

    // The reader connects and reads at 200 messages a second; the sender keeps sending.
    let mut reader = chat.ws("reader").await;
    let live = &mut sender;
    let live_sender = async {
        let mut slowest = Duration::ZERO;
        for n in 0..LIVE {
            let started = Instant::now();
            live.send_message(&conversation, &format!("live-{n}"), "still here").await;
            let ack = live.next_json().await;
            assert_eq!(ack["type"], "ack", "{ack}");
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await; // pacing of the live sender
        }
        slowest
    };
    let (received, slowest_ack) =
        futures_util::future::join(read_slowly(&mut reader, BACKLOG + LIVE, 200), live_sender).await;
    assert!(slowest_ack < Duration::from_secs(5), "live sends kept being acked: slowest {slowest_ack:?}");
    assert_eq!(received, commit_order(&chat, "reader", &conversation).await, "everything, in commit order, once");
}

#[actix_rt::test]
async fn fifty_slow_readers_replay_their_backlogs_at_once() {
    const READERS: usize = 50;
    const BACKLOG: usize = 2_000;
    let chat = ChatServer::start(ENV);
    chat.create_user("sender").await;
    let readers: Vec<String> = (0..READERS).map(|n| format!("reader-{n}")).collect();
    for reader in &readers {
        chat.create_user(reader).await;
    }
    let members: Vec<&str> = readers.iter().map(String::as_str).collect();
    let conversation = chat.conversation("sender", &members).await;
    let mut sender = chat.ws("sender").await;
    flood(&mut sender, &conversation, "b", BACKLOG).await;
    let baseline = chat.process.peak_rss_bytes();

    let mut clients: Vec<WsClient> = Vec::new();
    for reader in &readers {
        clients.push(chat.ws(reader).await);
    }
    let reads = clients.iter_mut().map(|client| read_slowly(client, BACKLOG, 200));
    let all = futures_util::future::join_all(reads).await;
    let expected = commit_order(&chat, "sender", &conversation).await;
    for (reader, received) in readers.iter().zip(&all) {
        assert_eq!(received, &expected, "{reader} got everything in order");
    }
    let grew = chat.process.peak_rss_bytes().saturating_sub(baseline);
    eprintln!("peak RSS grew by {} MiB during 50 replays", grew >> 20);
    // All 50 backlogs loaded at once would be ~100k rows and frames of ~1 KB (>200 MB); the
    // windows are 50 × 256 frames (~13 MB).
    assert!(grew < 64 << 20, "peak RSS grew by {} MiB during 50 replays", grew >> 20);
}
