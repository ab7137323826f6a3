//! Memory bounded in bytes per connection and per user, and the per-user limits, against hostile
//! clients: sockets that never read, a user opening sockets or conversations without end.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::chat_client::ChatServer;
use crate::support::{eventually, metric_value, scrape};

/// A WebSocket handshake on a raw socket that then reads nothing: a client that stopped
/// reading, with a small receive buffer so the kernel absorbs little of what is sent to it.
pub fn silent_websocket(base_url: &str, path: &str) -> std::net::TcpStream {
    let address = base_url.trim_start_matches("http://").to_owned();
    let target: std::net::SocketAddr = address.parse().expect("address");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&target.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("handshake"), 1, "closed during the handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

async fn metric(chat: &ChatServer, series: &str) -> f64 {
    metric_value(&scrape(&chat.process).await, series).unwrap_or(0.0)
}

#[actix_rt::test]
async fn ten_sockets_that_never_read_cannot_take_the_servers_memory_and_lose_nothing() {
    // The report: one user with 10 connections that never read, another sending 3,000 messages
    // of 8,000 × "é" (16 KB stored): RSS went from 19 MiB to 500 MiB in 7 s and nobody was cut
    // off (the outbox counted frames: 4,096 × 16 KiB per socket). Now each socket holds at most
    // `ws.outbound_bytes` (2 MiB) and is cut (1008) beyond it, its frames freed at once.
    //
    // The same traffic first runs with nobody connected, so what storage keeps in memory anyway
    // (SQLite's page caches fill as the database grows) is in the baseline: what is measured is
    // what the silent sockets cost.
    const MESSAGES: usize = 3_000;
    let chat = ChatServer::start(&[
        ("RAMPART__WS__RATE_LIMIT_PER_SEC", "1000000"),
        ("RAMPART__WS__BURST", "1000000"),
        ("RAMPART__WS__MAX_CONNECTIONS_PER_USER", "12"),
    ]);
    for user in ["alice", "bob", "carol"] {
        chat.create_user(user).await;
    }
    let warm_up = chat.conversation("alice", &["carol"]).await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let body = "é".repeat(8_000);
    let warm_ids: Vec<String> = (0..MESSAGES).map(|n| format!("w{n}")).collect();
    let warmed = alice.send_burst(&warm_up, &warm_ids, &body).await;
    assert_eq!(warmed.acked.len(), MESSAGES, "{:?}", warmed.refused.first());
    // The search index too has done this much work once (it lags behind acks under load).
    eventually("the warm-up is indexed", Duration::from_secs(60), || async {
        metric(&chat, "rampart_search_indexed_total").await >= MESSAGES as f64
    })
    .await;
    let path = format!("/ws?token={}", chat.token("bob"));
    let silent: Vec<std::net::TcpStream> = (0..10).map(|_| silent_websocket(&chat.process.base_url, &path)).collect();
    eventually("bob's sockets are open", Duration::from_secs(10), || async {
        metric(&chat, "rampart_ws_connections").await >= 11.0
    })
    .await;
    let baseline = chat.process.peak_rss_bytes();
    let ids: Vec<String> = (0..MESSAGES).map(|n| format!("m{n}")).collect();
    let answers = alice.send_burst(&conversation, &ids, &body).await;
    assert_eq!(answers.acked.len(), MESSAGES, "{:?}", answers.refused.first());
    let grew = chat.process.peak_rss_bytes().saturating_sub(baseline);
    eprintln!("peak RSS grew by {} MiB with 10 silent sockets and {MESSAGES} messages of 16 KB", grew >> 20);
    // 10 × 2 MiB of outboxes, plus the messages in flight through the pipeline and delivery
    // (15-17 MiB measured alone; more on a loaded machine, where more waits in each stage).
    assert!(grew <= 64 << 20, "peak RSS grew by {} MiB", grew >> 20);
    eventually("every silent socket was cut as too slow", Duration::from_secs(20), || async {
        metric(&chat, "rampart_ws_slow_clients_total").await >= 10.0
    })
    .await;
    eventually("the cut sockets are gone", Duration::from_secs(20), || async {
        metric(&chat, "rampart_ws_connections").await <= 1.0
    })
    .await;
    drop(silent);
    // Nothing lost: bob, reading this time, gets every message.
    let mut bob = chat.ws("bob").await;
    let mut received = std::collections::HashSet::new();
    while received.len() < MESSAGES {
        let frame = bob.next_json().await;
        assert_eq!(frame["type"], "message", "{frame}");
        bob.send_json(json!({"type": "delivered", "id": frame["id"]})).await;
        received.insert(frame["id"].as_str().unwrap_or_default().to_owned());
    }
    let acked: std::collections::HashSet<String> = answers.acked.into_iter().map(|(_, id)| id).collect();
    assert_eq!(received, acked);
}

#[actix_rt::test]
async fn a_user_opens_at_most_max_connections_per_user_sockets() {
    let chat = ChatServer::start(&[("RAMPART__WS__MAX_CONNECTIONS_PER_USER", "3")]);
    chat.create_user("alice").await;
    let url = chat.url("/ws");
    let token = chat.token("alice");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(chat.ws_url(&url, Some(&token)).await.expect("within the limit"));
    }
    let refused = chat.ws_url(&url, Some(&token)).await.err().expect("the fourth is refused");
    assert!(
        matches!(refused, awc::error::WsClientError::InvalidResponseStatus(status) if status.as_u16() == 429),
        "{refused:?}"
    );
    let (status, body) = chat.http.get(&url, Some(&token)).await;
    assert_eq!(status, 400, "a plain GET is no handshake: {body}");
    assert_eq!(metric(&chat, "rampart_limits_refused_total{limit=\"ws_connections_per_user\"}").await, 1.0);
    // Someone else is not affected; a closed socket gives its slot back.
    chat.create_user("bob").await;
    chat.ws("bob").await;
    drop(open.pop());
    eventually("a slot came back", Duration::from_secs(10), || async { chat.ws_url(&url, Some(&token)).await.is_ok() })
        .await;
}

#[actix_rt::test]
async fn a_user_creates_at_most_conversations_per_minute() {
    let chat = ChatServer::start(&[("RAMPART__API__CONVERSATIONS_PER_MINUTE", "5")]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    for _ in 0..5 {
        chat.conversation("alice", &[]).await;
    }
    let url = chat.url("/api/conversations");
    let started = Instant::now();
    let (status, body): (u16, Value) =
        chat.http.post(&url, Some(&chat.token("alice")), json!({"members": [], "title": "t"})).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("limit_exceeded")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(body["message"].as_str().is_some_and(|m| m.contains("api.conversations_per_minute")), "{body}");
    assert_eq!(metric(&chat, "rampart_limits_refused_total{limit=\"conversations_per_minute\"}").await, 1.0);
    // Per user.
    chat.conversation("bob", &[]).await;
}

#[actix_rt::test]
async fn past_the_process_budget_the_largest_outboxes_are_cut_first() {
    // Three sockets that read nothing, each under its own 1 MiB, together over the process's
    // 1 MiB: the largest are cut until the rest fits, and the gauge never stays above the budget.
    let chat = ChatServer::start(&[
        ("RAMPART__WS__RATE_LIMIT_PER_SEC", "1000000"),
        ("RAMPART__WS__BURST", "1000000"),
        ("RAMPART__WS__OUTBOUND_BYTES", "1048576"),
        ("RAMPART__WS__OUTBOUND_TOTAL_BYTES", "1048576"),
    ]);
    chat.create_user("alice").await;
    chat.create_user("bob").await;
    let conversation = chat.conversation("alice", &["bob"]).await;
    let mut alice = chat.ws("alice").await;
    let path = format!("/ws?token={}", chat.token("bob"));
    let silent: Vec<std::net::TcpStream> = (0..3).map(|_| silent_websocket(&chat.process.base_url, &path)).collect();
    eventually("bob's sockets are open", Duration::from_secs(10), || async {
        metric(&chat, "rampart_ws_connections").await >= 4.0
    })
    .await;
    let body = "x".repeat(16_000);
    let ids: Vec<String> = (0..1_500).map(|n| format!("m{n}")).collect();
    let answers = alice.send_burst(&conversation, &ids, &body).await;
    assert_eq!(answers.acked.len(), ids.len(), "{:?}", answers.refused.first());
    eventually("outboxes were cut for the process's budget", Duration::from_secs(20), || async {
        metric(&chat, "rampart_ws_outbox_reclaimed_total").await >= 1.0
    })
    .await;
    assert_eq!(metric(&chat, "rampart_ws_outbound_budget_bytes").await, 1_048_576.0);
    assert!(metric(&chat, "rampart_ws_outbound_bytes").await <= 1_048_576.0);
    drop(silent);
}
