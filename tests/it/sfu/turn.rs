//! The embedded TURN relay (`sfu.turn`): media between relay-only clients, credentials from
//! `joined` (wrong and expired ones refused), no relaying to foreign peers, TURN over TCP and TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::Value;
use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{Getter as _, Message, MessageType, Setter, CLASS_REQUEST, METHOD_ALLOCATE};
use stun::textattrs::{Nonce, Realm, Username};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;
use webrtc_util::Conn as _;

use super::{sfu_server, users_and_room};
use crate::chat_client::ChatServer;
use crate::rtc_client::{media_runtime, Options, RtcClient};
use crate::support::{eventually, metric_value, scrape};

const SECRET: &str = "the deployment's shared TURN secret";

fn turn_server(extra: &[(&str, &str)]) -> ChatServer {
    let mut env = vec![
        ("RAMPART__SFU__TURN__ENABLED", "true"),
        ("RAMPART__SFU__TURN__SECRET", SECRET),
        ("RAMPART__SFU__TURN__UDP", "127.0.0.1:0"),
        ("RAMPART__SFU__TURN__TCP", "127.0.0.1:0"),
    ];
    env.extend_from_slice(extra);
    sfu_server(&env)
}

/// The relay's address for `transport` (`udp`, `tcp`; `turns` for TLS) in `joined`'s ice_servers.
fn relay_address(ice_server: &Value, scheme: &str, transport: &str) -> SocketAddr {
    let urls: Vec<&str> = ice_server["urls"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let url = urls
        .iter()
        .find(|url| url.starts_with(&format!("{scheme}:")) && url.ends_with(&format!("?transport={transport}")))
        .unwrap_or_else(|| panic!("no {scheme} {transport} url in {ice_server}"));
    let address = url.trim_start_matches(&format!("{scheme}:")).split('?').next().unwrap_or_default();
    address.parse().unwrap_or_else(|_| panic!("{url}"))
}

/// Joins a room of two fresh users and returns the `ice_servers` entry the first one got.
async fn joined_ice_server(server: &ChatServer, prefix: &str) -> (Value, RtcClient) {
    let (users, room) = users_and_room(server, prefix, 2).await;
    let runtime = media_runtime();
    let url = server.url("/rtc").replacen("http://", "ws://", 1);
    let mut client = RtcClient::connect(&runtime, &url, &server.token(&users[0]), Options::default()).await;
    let joined = client.join(&room).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let servers = joined["ice_servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 1, "one TURN server with credentials: {joined}");
    let server = servers[0].clone();
    let username = server["username"].as_str().unwrap_or_default();
    assert!(username.ends_with(&format!(":{}", client.participant())), "per participant: {server}");
    assert!(server["expires_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{server}");
    (server, client)
}

async fn turn_client(server: SocketAddr, username: &str, password: &str) -> turn::client::Client {
    let conn = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("client socket"));
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("turn client");
    client.listen().await.expect("turn client listens");
    client
}

/// A username and password signed with `secret` that expired a minute ago.
fn expired_credentials(secret: &str) -> (String, String) {
    let past = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() - 60;
    let username = format!("{past}:p1");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()));
    (username, password)
}

async fn counter(server: &ChatServer, name: &str) -> f64 {
    metric_value(&scrape(&server.process).await, name).unwrap_or(0.0)
}

#[actix_rt::test]
async fn media_flows_between_clients_that_may_only_use_the_embedded_relay() {
    let _heavy = crate::support::MEASURING.read().await;
    let server = turn_server(&[]);
    let (users, room) = users_and_room(&server, "relayed", 2).await;
    let options = Options { relay_only: true, ..Options::default() };
    let _clients = super::publishers_exchanging_media(&server, &users, &room, options).await;
    // Operators see it: each participant's media comes through a relay candidate.
    let paths: Vec<Value> =
        super::room_participants(&server, &room).await.iter().map(|p| p["media_path"].clone()).collect();
    assert_eq!(paths.len(), 2);
    assert!(paths.iter().all(|path| path["candidate"] == "relay" && path["protocol"] == "udp"), "{paths:?}");
    // Each client's two connections hold an allocation each on the relay.
    let allocations = counter(&server, "rampart_turn_allocations").await;
    assert!(allocations >= 4.0, "relay allocations while media flows: {allocations}");
    assert_eq!(counter(&server, "rampart_turn_peers_refused_total").await, 0.0);
}

/// Regression: a crash of the relay dropped every allocation, and relayed clients heard
/// nothing until ICE declared their connections failed (about 30 s of silence, then `reconnect`
/// with "connection failed"). Now the relay's next incarnation has the SFU ask exactly the
/// relayed participants to reconnect, and media is back through fresh allocations.
#[actix_rt::test]
async fn a_relay_restart_sends_relayed_participants_back_through_fresh_allocations() {
    let _heavy = crate::support::MEASURING.read().await;
    let server = turn_server(&[]);
    let (users, room) = users_and_room(&server, "relay-restart", 2).await;
    let options = Options { relay_only: true, ..Options::default() };
    let mut clients = super::publishers_exchanging_media(&server, &users, &room, options).await;
    let (a, b) = (clients[0].participant(), clients[1].participant());
    let panicked = std::time::Instant::now();
    super::chaos_panic(&server, "/root/sfu/turn").await;
    for client in &mut clients {
        let frame = client.wait_for("reconnect", |frame| frame["type"] == "reconnect").await;
        assert_eq!(frame["reason"], "the relay restarted", "told why, not after ICE gave up: {frame}");
    }
    let told = panicked.elapsed();
    super::media_resumes(&clients[1], &a, 30, Duration::from_secs(20)).await;
    super::media_resumes(&clients[0], &b, 30, Duration::from_secs(20)).await;
    eprintln!("relay panicked: participants told after {told:?}, media flows again after {:?}", panicked.elapsed());
    server.assert_restarted(["/root/sfu/turn"]).await;
    let paths: Vec<Value> =
        super::room_participants(&server, &room).await.iter().map(|p| p["media_path"].clone()).collect();
    assert!(paths.iter().all(|path| path["candidate"] == "relay"), "{paths:?}");
    for client in &clients {
        let errors = client.state.errors.lock().clone();
        assert!(errors.is_empty(), "{errors:?}");
    }
}

#[actix_rt::test]
async fn the_relay_refuses_wrong_expired_and_foreign_requests_and_relays_to_the_deployment() {
    let server = turn_server(&[]);
    let (ice_server, _member) = joined_ice_server(&server, "guarded").await;
    let address = relay_address(&ice_server, "turn", "udp");
    let username = ice_server["username"].as_str().unwrap_or_default();
    let password = ice_server["credential"].as_str().unwrap_or_default();

    // A wrong password, a credential that expired, one signed with another secret: no allocation.
    let (expired_user, expired_password) = expired_credentials(SECRET);
    let (_, foreign_signed) = expired_credentials("some other deployment's secret");
    let refusals = [
        (username.to_owned(), "not the password".to_owned()),
        (expired_user, expired_password),
        (username.to_owned(), foreign_signed),
    ];
    for (user, pass) in &refusals {
        let client = turn_client(address, user, pass).await;
        assert!(client.allocate().await.is_err(), "allocation with {user}/{pass}");
        let _ = client.close().await;
    }
    assert!(counter(&server, "rampart_turn_auth_refused_total").await >= refusals.len() as f64);

    // The joined credentials allocate; a media address of the deployment (127.0.0.1 here) is
    // reached through the relay, both ways.
    let client = turn_client(address, username, password).await;
    let relay = client.allocate().await.expect("allocation with the joined credentials");
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("peer socket");
    let peer_address = peer.local_addr().expect("peer address");
    relay.send_to(b"to the deployment", peer_address).await.expect("relayed to an allowed peer");
    let mut buffer = [0u8; 1500];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), peer.recv_from(&mut buffer))
        .await
        .expect("the relayed packet arrives")
        .expect("peer receives");
    assert_eq!(&buffer[..n], b"to the deployment");
    assert_eq!(from, relay.local_addr().expect("relay address"), "it came from the relay address");
    peer.send_to(b"back", from).await.expect("peer answers");
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), relay.recv_from(&mut buffer))
        .await
        .expect("answer")
        .expect("relay");
    assert_eq!(&buffer[..n], b"back");

    // Anything else is refused: the permission (403) and the packet.
    let outsider = tokio::net::UdpSocket::bind("127.0.0.2:0").await.expect("outsider socket (127.0.0.2 is loopback)");
    let outsider_address = outsider.local_addr().expect("outsider address");
    assert!(relay.send_to(b"to a stranger", outsider_address).await.is_err(), "permission for 127.0.0.2 refused");
    eventually("the refusal is counted", Duration::from_secs(10), || async {
        counter(&server, "rampart_turn_peers_refused_total").await >= 1.0
    })
    .await;
    // Quiet window: had the relay forwarded it, it would have arrived well within this.
    let stray = tokio::time::timeout(Duration::from_millis(500), outsider.recv_from(&mut buffer)).await;
    assert!(stray.is_err(), "nothing reached the outsider");
    let _ = client.close().await;
}

/// One STUN request over a stream (TCP or TLS) and its answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &Message) -> Message {
    stream.write_all(&request.raw).await.expect("request written");
    let mut header = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header))
        .await
        .expect("an answer within 10 s")
        .expect("answer header");
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut raw = header.to_vec();
    raw.resize(20 + length, 0);
    stream.read_exact(&mut raw[20..]).await.expect("answer body");
    let mut answer = Message::new();
    answer.unmarshal_binary(&raw).expect("a STUN answer");
    answer
}

/// Allocate as RFC 8656 says: unauthenticated first (401 with realm and nonce), then signed.
async fn allocate_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    username: &str,
    password: &str,
) -> SocketAddr {
    let mut first = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(RequestedTransport { protocol: PROTO_UDP }),
    ];
    first.build(&setters).expect("allocate request");
    let challenge = exchange(stream, &first).await;
    let mut code = ErrorCodeAttribute::default();
    code.get_from(&challenge).expect("401 challenge");
    assert_eq!(code.code.0, 401);
    let realm = Realm::get_from_as(&challenge, ATTR_REALM).expect("realm");
    let nonce = Nonce::get_from_as(&challenge, ATTR_NONCE).expect("nonce");
    let mut signed = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(RequestedTransport { protocol: PROTO_UDP }),
        Box::new(Username::new(stun::attributes::ATTR_USERNAME, username.to_owned())),
        Box::new(realm.clone()),
        Box::new(nonce),
        Box::new(MessageIntegrity::new_long_term_integrity(username.to_owned(), realm.text, password.to_owned())),
    ];
    signed.build(&setters).expect("signed allocate");
    let answer = exchange(stream, &signed).await;
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&answer).unwrap_or_else(|_| panic!("a relayed address in {answer}"));
    SocketAddr::new(relayed.ip, relayed.port)
}

#[actix_rt::test]
async fn turn_over_tcp_and_tls_allocates_with_the_joined_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (dir.path().join("turn.crt"), dir.path().join("turn.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("cert written");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("key written");
    let (cert_path, key_path) = (cert.display().to_string(), key.display().to_string());
    let server = turn_server(&[
        ("RAMPART__SFU__TURN__TLS", "127.0.0.1:0"),
        ("RAMPART__SFU__TURN__TLS_CERT", &cert_path),
        ("RAMPART__SFU__TURN__TLS_KEY", &key_path),
    ]);
    let (ice_server, _member) = joined_ice_server(&server, "streamed").await;
    let username = ice_server["username"].as_str().unwrap_or_default();
    let password = ice_server["credential"].as_str().unwrap_or_default();

    let mut tcp = tokio::net::TcpStream::connect(relay_address(&ice_server, "turn", "tcp")).await.expect("tcp");
    let relayed = allocate_over(&mut tcp, username, password).await;
    assert_eq!(relayed.ip(), std::net::IpAddr::from([127, 0, 0, 1]), "relay on loopback: {relayed}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("trusted");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = tokio::net::TcpStream::connect(relay_address(&ice_server, "turns", "tcp")).await.expect("tls socket");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let mut tls = connector.connect(name, socket).await.expect("TLS handshake with the relay");
    let relayed = allocate_over(&mut tls, username, password).await;
    assert_eq!(relayed.ip(), std::net::IpAddr::from([127, 0, 0, 1]), "relay on loopback: {relayed}");

    // A stream that sends something that is neither STUN nor ChannelData is closed.
    let mut garbage = tokio::net::TcpStream::connect(relay_address(&ice_server, "turn", "tcp")).await.expect("tcp");
    garbage.write_all(&[0xff; 64]).await.expect("garbage written");
    let mut buffer = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), garbage.read(&mut buffer)).await.expect("closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

#[actix_rt::test]
async fn allocations_are_bounded_per_credential_and_freed_when_closed() {
    let server = turn_server(&[("RAMPART__SFU__TURN__MAX_ALLOCATIONS_PER_CREDENTIAL", "2")]);
    let (ice_server, _member) = joined_ice_server(&server, "quota").await;
    let address = relay_address(&ice_server, "turn", "udp");
    let username = ice_server["username"].as_str().unwrap_or_default();
    let password = ice_server["credential"].as_str().unwrap_or_default();
    let (first, second, third) = (
        turn_client(address, username, password).await,
        turn_client(address, username, password).await,
        turn_client(address, username, password).await,
    );
    let held = first.allocate().await.expect("first allocation");
    let _second = second.allocate().await.expect("second allocation");
    assert!(third.allocate().await.is_err(), "a third allocation of one credential is refused");
    assert!(counter(&server, "rampart_turn_quota_refused_total").await >= 1.0);
    // Closing one gives its place back (the server reports the allocation closed).
    held.close().await.expect("deallocate");
    let fourth = turn_client(address, username, password).await;
    crate::support::eventually("a freed allocation can be taken again", Duration::from_secs(10), || async {
        fourth.allocate().await.is_ok()
    })
    .await;
}
