//! The SFU (feature `sfu`) with real WebRTC clients (webrtc-rs, `rtc_client.rs`) on loopback:
//! every server runs with `sfu.ice_loopback_only`, every client binds 127.0.0.1.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::chat_client::{chat_env, ChatServer, ADMIN_TOKEN};
use crate::rtc_client::{media_runtime, Options, RtcClient};
use crate::support::{eventually, eventually_value, metric_value, scrape, RampartProcess};

/// How long media may take to start flowing (ICE, DTLS, the first offer/answer round).
const MEDIA_DEADLINE: Duration = Duration::from_secs(20);
/// How long the leak test's observer is given to receive a publisher the room already forwards.
const OBSERVER_DEADLINE: Duration = Duration::from_secs(5);

fn sfu_server(extra: &[(&str, &str)]) -> ChatServer {
    let mut env = vec![("RAMPART__SFU__ICE_LOOPBACK_ONLY", "true"), ("RAMPART__CHAOS__ENABLED", "true")];
    env.extend_from_slice(extra);
    ChatServer::start(&env)
}

async fn client(
    server: &ChatServer,
    runtime: &Arc<crate::rtc_client::MediaRuntime>,
    user: &str,
    publish: bool,
) -> RtcClient {
    let url = server.url("/rtc").replacen("http://", "ws://", 1);
    RtcClient::connect(runtime, &url, &server.token(user), Options { publish, ..Options::default() }).await
}

/// A client of `user` that joined `room`.
async fn member(
    server: &ChatServer,
    runtime: &Arc<crate::rtc_client::MediaRuntime>,
    user: &str,
    publish: bool,
    room: &str,
) -> RtcClient {
    let mut client = client(server, runtime, user, publish).await;
    let joined = client.join(room).await;
    assert_eq!(joined["type"], "joined", "{user} joining {room}: {joined}");
    client
}

/// `count` users (u0, u1...) with one conversation of all of them: the room.
async fn users_and_room(server: &ChatServer, prefix: &str, count: usize) -> (Vec<String>, String) {
    let users: Vec<String> = (0..count).map(|n| format!("{prefix}{n}")).collect();
    for user in &users {
        server.create_user(user).await;
    }
    let others: Vec<&str> = users[1..].iter().map(String::as_str).collect();
    let room = server.conversation(&users[0], &others).await;
    (users, room)
}

/// Waits until `subscriber` got at least `packets` intact packets of both kinds from `publisher`.
async fn media_flows(subscriber: &RtcClient, publisher: &str, packets: u64) {
    if let Err(problem) = try_media_flows(subscriber, publisher, packets).await {
        panic!("{problem}");
    }
}

/// `media_flows`, returning what was received instead of panicking.
async fn try_media_flows(subscriber: &RtcClient, publisher: &str, packets: u64) -> Result<(), String> {
    try_media_flows_within(subscriber, publisher, packets, MEDIA_DEADLINE).await
}

async fn try_media_flows_within(
    subscriber: &RtcClient,
    publisher: &str,
    packets: u64,
    deadline: Duration,
) -> Result<(), String> {
    let state = &subscriber.state;
    let started = std::time::Instant::now();
    while !["video", "audio"].iter().all(|kind| state.received(publisher, kind).intact >= packets) {
        if started.elapsed() > deadline {
            let errors = state.errors.lock().clone();
            let received: Vec<_> =
                ["video", "audio"].iter().map(|kind| state.received(publisher, kind).packets).collect();
            return Err(format!(
                "no {packets} intact audio and video packets from {publisher} within {deadline:?}: \
                 received {received:?} (video, audio); client errors: {errors:?}; {}",
                state.report(publisher)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // Poll interval.
    }
    Ok(())
}

#[actix_rt::test]
async fn participants_receive_each_others_audio_and_video_intact_and_in_order() {
    let _heavy = crate::support::MEASURING.read().await;
    let server = sfu_server(&[]);
    let (users, room) = users_and_room(&server, "fwd", 3).await;
    let runtime = media_runtime();
    let mut clients = Vec::new();
    for user in &users {
        let mut client = client(&server, &runtime, user, true).await;
        let joined = client.join(&room).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        clients.push(client);
    }
    let participants: Vec<String> = clients.iter().map(RtcClient::participant).collect();
    for (n, subscriber) in clients.iter().enumerate() {
        for (m, publisher) in participants.iter().enumerate() {
            if n != m {
                media_flows(subscriber, publisher, 50).await;
            }
        }
    }
    for (n, subscriber) in clients.iter().enumerate() {
        for (m, publisher) in participants.iter().enumerate() {
            for kind in ["video", "audio"] {
                let received = subscriber.state.received(publisher, kind);
                if n == m {
                    assert_eq!(received.packets, 0, "nobody receives their own {kind}");
                    continue;
                }
                assert_eq!(received.corrupt, 0, "{kind} from {publisher}: {received:?}");
                assert_eq!(received.out_of_order, 0, "{kind} from {publisher}: {received:?}");
                let tags: Vec<&String> = received.tags.keys().collect();
                assert_eq!(tags, vec![&format!("{room}|{publisher}")], "{kind} from {publisher}");
            }
        }
        assert!(subscriber.state.errors.lock().is_empty(), "{:?}", subscriber.state.errors.lock());
        // sfu.ice_loopback_only: the server offers 127.0.0.1 and nothing else.
        let candidates = subscriber.state.server_candidates.lock().clone();
        assert!(!candidates.is_empty(), "the server sent no candidate");
        for candidate in &candidates {
            let address = candidate.split_whitespace().nth(4).unwrap_or_default();
            assert_eq!(address, "127.0.0.1", "{candidate}");
        }
    }

    // Operators see it: the room, its participants and tracks, and the counters.
    let (status, rooms) = server.http.get(&server.url("/admin/rooms"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{rooms}");
    let listed = rooms["rooms"].as_array().and_then(|rooms| rooms.iter().find(|r| r["name"] == room.as_str()));
    let listed = listed.unwrap_or_else(|| panic!("room {room} in {rooms}"));
    assert_eq!(listed["participants"].as_array().map(Vec::len), Some(3), "{listed}");
    for participant in listed["participants"].as_array().into_iter().flatten() {
        let tracks = participant["tracks"].as_array().cloned().unwrap_or_default();
        assert_eq!(tracks.len(), 2, "{participant}");
        assert!(
            tracks.iter().all(|t| t["subscribers"] == 2 && t["forwarded_packets"].as_u64() > Some(0)),
            "{participant}"
        );
    }
    let metrics = scrape(&server.process).await;
    assert_eq!(metric_value(&metrics, "rampart_sfu_rooms"), Some(1.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "rampart_sfu_participants"), Some(3.0));
    assert_eq!(metric_value(&metrics, "rampart_sfu_tracks"), Some(6.0));
    assert!(metric_value(&metrics, "rampart_sfu_forwarded_packets_total").unwrap_or(0.0) >= 600.0);

    // Leaving empties the room; an empty room closes after sfu.empty_timeout.
    drop(clients);
    eventually("the room to empty", Duration::from_secs(10), || async {
        metric_value(&scrape(&server.process).await, "rampart_sfu_participants") == Some(0.0)
    })
    .await;
}

#[actix_rt::test]
async fn rooms_are_for_members_and_bad_signaling_gets_error_frames() {
    let server = sfu_server(&[]);
    let (_, room) = users_and_room(&server, "acl", 2).await;
    server.create_user("stranger").await;
    let runtime = media_runtime();
    let mut stranger = client(&server, &runtime, "stranger", false).await;
    let refused = stranger.join(&room).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")), "{refused}");

    // An operator's room is open to anyone authenticated.
    let (status, body) =
        server.http.post(&server.url("/admin/rooms"), Some(ADMIN_TOKEN), json!({"name": "town-hall"})).await;
    assert_eq!(status, 201, "{body}");
    let joined = stranger.join("town-hall").await;
    assert_eq!(joined["type"], "joined", "{joined}");

    // Regression: a client may trickle a candidate before its offer reaches the server (seen
    // under load, and from a client replacing its connections after `reconnect`): it waits for
    // the offer instead of failing.
    let candidate = json!({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    stranger.send(json!({"type": "candidate", "target": "publisher", "candidate": candidate}));
    stranger.send(json!({"type": "ping"}));
    let answer = stranger.wait_for("pong", |f| f["type"] == "pong" || f["type"] == "error").await;
    assert_eq!(answer["type"], "pong", "{answer}");

    for (frame, code) in [
        (json!({"type": "join", "room": "town-hall"}).to_string(), "already_joined"),
        ("{not json".to_owned(), "invalid_json"),
        (json!({"type": "dance"}).to_string(), "unknown_type"),
        (json!({"type": "answer", "target": "subscriber", "sdp": "v=0\r\n"}).to_string(), "unexpected_answer"),
        (json!({"type": "offer", "target": "publisher", "sdp": "v=0\r\nnonsense"}).to_string(), "invalid_sdp"),
        (json!({"type": "offer", "target": "subscriber", "sdp": "v=0\r\n"}).to_string(), "wrong_target"),
        (
            json!({"type": "candidate", "target": "subscriber", "candidate": {"candidate": "x"}}).to_string(),
            "no_connection",
        ),
        (json!({"type": "mute", "track": "nope", "muted": true}).to_string(), "unknown_track"),
    ] {
        stranger.send_text(frame.clone());
        let error = stranger.wait_for("error", |f| f["type"] == "error").await;
        assert_eq!(error["code"], code, "{frame} -> {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    }
    stranger.send(json!({"type": "leave"}));
    let left = stranger.wait_for("left", |f| f["type"] == "left" || f["type"] == "error").await;
    assert_eq!(left["type"], "left", "{left}");
    let metrics = scrape(&server.process).await;
    assert_eq!(metric_value(&metrics, "rampart_panics_total{source=\"actor\"}").unwrap_or(0.0), 0.0, "{metrics}");
}

#[actix_rt::test]
async fn operator_rooms_outlive_a_restart_and_can_be_taken_back() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let env = [("RAMPART__SFU__ICE_LOOPBACK_ONLY", "true")];
    let mut server = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &chat_env(&env)));
    server.create_user("guest").await;
    let rooms = server.url("/admin/rooms");
    let (status, body) = server.http.post(&rooms, Some(ADMIN_TOKEN), json!({"name": " town-hall "})).await;
    assert_eq!((status, &body["name"], &body["created"]), (201, &json!("town-hall"), &json!(true)), "{body}");
    let (status, body) = server.http.post(&rooms, Some(ADMIN_TOKEN), json!({"name": "town-hall"})).await;
    assert_eq!((status, &body["created"]), (200, &json!(false)), "{body}");
    let (status, body) = server.http.post(&rooms, Some(ADMIN_TOKEN), json!({"name": "\u{7}"})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    server.process.terminate();
    server.process.wait_exit(Duration::from_secs(20));
    drop(server);

    // The room is still the operators' after a restart.
    let server = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &chat_env(&env)));
    let rooms = server.url("/admin/rooms");
    let (status, listing) = server.http.get(&rooms, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, &listing["operator_rooms"]), (200, &json!(["town-hall"])), "{listing}");
    let runtime = media_runtime();
    let mut guest = client(&server, &runtime, "guest", false).await;
    assert_eq!(guest.join("town-hall").await["type"], "joined");
    let (_, listing) = server.http.get(&rooms, Some(ADMIN_TOKEN)).await;
    let open = &listing["rooms"][0];
    assert_eq!((&open["name"], &open["admin_created"]), (&json!("town-hall"), &json!(true)), "{listing}");
    guest.send(json!({"type": "leave"}));
    assert_eq!(guest.wait_for("left", |f| f["type"] == "left" || f["type"] == "error").await["type"], "left");

    // Taken back: nobody but the conversation's members (there is none) may join any more.
    let delete = |name: &str| {
        let url = format!("{rooms}/{name}");
        let server = &server;
        async move { server.http.request(awc::http::Method::DELETE, &url, Some(ADMIN_TOKEN), None).await }
    };
    assert_eq!(delete("town-hall").await.0, 204);
    let (status, body) = delete("town-hall").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    let (status, _) = server.http.request(awc::http::Method::DELETE, &format!("{rooms}/town-hall"), None, None).await;
    assert_eq!(status, 401);
    let refused = guest.join("town-hall").await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")), "{refused}");
    let (_, listing) = server.http.get(&rooms, Some(ADMIN_TOKEN)).await;
    assert_eq!(listing["operator_rooms"], json!([]), "{listing}");
}

/// `Value` of `/admin/rooms` for `room`, if open.
pub async fn listed_room(server: &ChatServer, room: &str) -> Option<Value> {
    let (_, rooms) = server.http.get(&server.url("/admin/rooms"), Some(ADMIN_TOKEN)).await;
    rooms["rooms"].as_array().and_then(|rooms| rooms.iter().find(|r| r["name"] == room).cloned())
}

#[actix_rt::test]
async fn four_rooms_at_once_keep_their_media_apart_and_keyframe_requests_are_throttled() {
    let _heavy = crate::support::MEASURING.read().await;
    let server = sfu_server(&[]);
    let runtime = media_runtime();
    let mut rooms = Vec::new();
    for n in 0..4u32 {
        let (users, room) = users_and_room(&server, &format!("r{n}u"), 2).await;
        let publisher = member(&server, &runtime, &users[0], true, &room).await;
        // Half the subscribers never trickle: every candidate in the SDP.
        let url = server.url("/rtc").replacen("http://", "ws://", 1);
        let options = Options { trickle: n.is_multiple_of(2), ..Options::default() };
        let mut subscriber = RtcClient::connect(&runtime, &url, &server.token(&users[1]), options).await;
        assert_eq!(subscriber.join(&room).await["type"], "joined");
        rooms.push((room, publisher, subscriber));
    }
    for (room, publisher, subscriber) in &rooms {
        let from = publisher.participant();
        media_flows(subscriber, &from, 50).await;
        let tags = subscriber.state.tags();
        assert_eq!(tags.keys().collect::<Vec<_>>(), vec![&format!("{room}|{from}")], "cross-talk into {room}");
    }

    // A subscriber hammering keyframe requests: each reaches the publisher at most every 500 ms.
    let (_, publisher, subscriber) = &rooms[0];
    eventually("the join's keyframe request", MEDIA_DEADLINE, || async {
        publisher.state.keyframe_requests.load(Ordering::Relaxed) >= 1
    })
    .await;
    let before = publisher.state.keyframe_requests.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    subscriber.request_keyframes(40, Duration::from_millis(25)).await;
    let window = started.elapsed();
    eventually("a relayed keyframe request", MEDIA_DEADLINE, || async {
        publisher.state.keyframe_requests.load(Ordering::Relaxed) > before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // Quiet window, not a condition: an upper bound cannot be polled for, and relays landing later would only raise the count.
    let relayed = publisher.state.keyframe_requests.load(Ordering::Relaxed) - before;
    let allowed = window.as_millis() as u64 / 500 + 2;
    assert!(relayed <= allowed, "{relayed} keyframe requests relayed in {window:?} (at most {allowed})");
    let metrics = scrape(&server.process).await;
    assert!(
        metric_value(&metrics, "rampart_sfu_keyframe_requests_total{outcome=\"throttled\"}").unwrap_or(0.0) >= 20.0,
        "{metrics}"
    );
}

#[actix_rt::test]
async fn a_track_offered_with_the_removal_of_another_reaches_the_subscriber() {
    // Regression: when a publisher left and another's tracks arrived while the subscriber still
    // owed an answer, one offer removed the first and added the second; the new track took the
    // freed transceiver with the freed SSRC, the client saw only a changed stream id on a track it
    // already had, never a new one, and the newcomer's media was counted as the leaver's. Seen as
    // an observer that never received one publisher of a batch, under load.
    let _heavy = crate::support::MEASURING.read().await;
    let server = sfu_server(&[]);
    let (users, room) = users_and_room(&server, "swap", 4).await;
    let runtime = media_runtime();
    let observer = member(&server, &runtime, &users[0], false, &room).await;
    let leaving = member(&server, &runtime, &users[1], true, &room).await;
    media_flows(&observer, &leaving.participant(), 5).await;
    // The observer sits on an offer, so the changes below reach it together in the next one.
    observer.state.hold_subscriber_answers(true);
    let offers = observer.state.subscriber_offers.load(Ordering::Relaxed);
    let staying = member(&server, &runtime, &users[2], true, &room).await;
    let state = observer.state.clone();
    eventually("an offer for the second publisher", Duration::from_secs(20), || {
        let state = state.clone();
        async move { state.subscriber_offers.load(Ordering::Relaxed) > offers }
    })
    .await;
    leaving.send(json!({"type": "leave"}));
    let joining = member(&server, &runtime, &users[3], true, &room).await;
    let (gone, arrived) = (leaving.participant(), joining.participant());
    eventually("the leaver gone and the newcomer's two tracks published", Duration::from_secs(20), || {
        let (server, room, gone, arrived) = (&server, &room, &gone, &arrived);
        async move {
            let participants = room_participants(server, room).await;
            let tracks = |name: &str| {
                participants
                    .iter()
                    .find(|p| p["participant"] == name)
                    .and_then(|p| p["tracks"].as_array().map(Vec::len))
            };
            tracks(gone).is_none() && tracks(arrived) == Some(2)
        }
    })
    .await;
    observer.state.hold_subscriber_answers(false);
    media_flows(&observer, &arrived, 5).await;
    media_flows(&observer, &staying.participant(), 5).await;
    println!(
        "{} sections: {}",
        observer.state.offered_sections.load(Ordering::Relaxed),
        observer.state.report(&arrived)
    );
    assert!(observer.state.errors.lock().is_empty(), "{:?}", observer.state.errors.lock());
}

/// The participants of `room` by `/admin/rooms`.
async fn room_participants(server: &ChatServer, room: &str) -> Vec<Value> {
    listed_room(server, room).await.and_then(|room| room["participants"].as_array().cloned()).unwrap_or_default()
}

async fn chaos_panic(server: &ChatServer, actor: &str) {
    let (status, body) =
        server.http.post(&server.url("/admin/chaos/panic"), Some(ADMIN_TOKEN), json!({"actor": actor})).await;
    assert_eq!(status, 202, "{body}");
}

/// Waits until `subscriber` got `more` intact packets of each kind from `publisher` beyond now.
async fn media_resumes(subscriber: &RtcClient, publisher: &str, more: u64, deadline: Duration) {
    let start: Vec<u64> =
        ["video", "audio"].iter().map(|kind| subscriber.state.received(publisher, kind).intact).collect();
    let state = subscriber.state.clone();
    eventually(&format!("media from {publisher} again"), deadline, || {
        let state = state.clone();
        let start = start.clone();
        async move {
            ["video", "audio"]
                .iter()
                .zip(&start)
                .all(|(kind, before)| state.received(publisher, kind).intact >= before + more)
        }
    })
    .await;
}

#[actix_rt::test]
async fn a_panicking_peer_or_room_comes_back_and_media_flows_again_without_ghosts() {
    let _heavy = crate::support::MEASURING.read().await;
    let server = sfu_server(&[]);
    let (users, room) = users_and_room(&server, "chaos", 2).await;
    let runtime = media_runtime();
    let mut alice = member(&server, &runtime, &users[0], true, &room).await;
    let bob = member(&server, &runtime, &users[1], true, &room).await;
    let (a, b) = (alice.participant(), bob.participant());
    media_flows(&bob, &a, 30).await;
    media_flows(&alice, &b, 30).await;

    // Alice's peer panics: she is told to reconnect, publishes again, and both directions flow.
    let participants = room_participants(&server, &room).await;
    let peer = participants
        .iter()
        .find(|p| p["participant"] == a.as_str())
        .map(|p| p["path"].as_str().unwrap_or_default().to_owned());
    chaos_panic(&server, &peer.expect("alice's peer in /admin/rooms")).await;
    alice.wait_for("reconnect", |f| f["type"] == "reconnect").await;
    media_resumes(&bob, &a, 30, Duration::from_secs(5)).await;
    media_resumes(&alice, &b, 30, Duration::from_secs(5)).await;

    // The room panics: it rebuilds from the live peers, re-offers, and media keeps flowing.
    let room_path = listed_room(&server, &room).await.and_then(|r| r["path"].as_str().map(str::to_owned));
    chaos_panic(&server, &room_path.expect("room path")).await;
    eventually("the room rebuilt", Duration::from_secs(5), || async {
        let participants = room_participants(&server, &room).await;
        participants.len() == 2 && participants.iter().all(|p| p["tracks"].as_array().map_or(0, Vec::len) == 2)
    })
    .await;
    media_resumes(&bob, &a, 30, Duration::from_secs(5)).await;
    media_resumes(&alice, &b, 30, Duration::from_secs(5)).await;
    let participants = room_participants(&server, &room).await;
    let mut ids: Vec<&str> = participants.iter().filter_map(|p| p["participant"].as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![a.as_str(), b.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "no ghosts: {participants:?}");
    server.assert_restarted([room_path_of(&server, &room).await.as_str()]).await;
    for client in [&alice, &bob] {
        let errors = client.state.errors.lock().clone();
        assert!(errors.is_empty(), "{errors:?}");
    }
}

async fn room_path_of(server: &ChatServer, room: &str) -> String {
    listed_room(server, room).await.and_then(|r| r["path"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// One random mutation of a valid frame: flipped, dropped or inserted bytes, a truncation, a
/// field removed or given another type, or the type swapped.
fn mutate(rng: &mut impl rand::Rng, frame: &Value) -> String {
    let text = frame.to_string();
    match rng.gen_range(0..7) {
        0 => {
            let mut bytes = text.into_bytes();
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        1 => {
            let cut = rng.gen_range(0..text.len());
            text.chars().take(cut).collect()
        }
        2 => {
            let mut value = frame.clone();
            if let Some(object) = value.as_object_mut() {
                let keys: Vec<String> = object.keys().cloned().collect();
                let key = &keys[rng.gen_range(0..keys.len())];
                object.remove(key);
            }
            value.to_string()
        }
        3 => {
            let mut value = frame.clone();
            if let Some(object) = value.as_object_mut() {
                let keys: Vec<String> = object.keys().cloned().collect();
                let key = keys[rng.gen_range(0..keys.len())].clone();
                let replacement =
                    [json!(null), json!(1e308), json!(-1), json!([]), json!({}), json!("x".repeat(5000)), json!(true)];
                object.insert(key, replacement[rng.gen_range(0..replacement.len())].clone());
            }
            value.to_string()
        }
        4 => {
            let mut value = frame.clone();
            let types = ["join", "leave", "offer", "answer", "candidate", "mute", "ping", "JOIN", ""];
            value["type"] = json!(types[rng.gen_range(0..types.len())]);
            value.to_string()
        }
        5 => {
            // An SDP with lines shuffled, dropped or mangled.
            let mut value = frame.clone();
            if let Some(sdp) = frame["sdp"].as_str() {
                let mut lines: Vec<String> = sdp.split("\r\n").map(str::to_owned).collect();
                for _ in 0..rng.gen_range(1..6) {
                    let at = rng.gen_range(0..lines.len());
                    match rng.gen_range(0..3) {
                        0 => {
                            lines.remove(at);
                        }
                        1 => lines[at] = lines[at].chars().rev().collect(),
                        _ => {
                            let other = rng.gen_range(0..lines.len());
                            lines.swap(at, other);
                        }
                    }
                }
                value["sdp"] = json!(lines.join("\r\n"));
            }
            value.to_string()
        }
        _ => {
            let mut bytes = text.into_bytes();
            let at = rng.gen_range(0..bytes.len());
            let junk: Vec<u8> = (0..rng.gen_range(1..20)).map(|_| rng.gen()).collect();
            bytes.splice(at..at, junk);
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

#[actix_rt::test]
async fn fuzzed_signaling_gets_only_error_frames_and_the_room_keeps_forwarding() {
    let _heavy = crate::support::MEASURING.read().await;
    use rand::{Rng as _, SeedableRng as _};
    let server =
        sfu_server(&[("RAMPART__SFU__SIGNALING_RATE_PER_SEC", "100000"), ("RAMPART__SFU__SIGNALING_BURST", "100000")]);
    let (users, room) = users_and_room(&server, "fuzz", 3).await;
    let runtime = media_runtime();
    let alice = member(&server, &runtime, &users[0], true, &room).await;
    let bob = member(&server, &runtime, &users[1], false, &room).await;
    let a = alice.participant();
    media_flows(&bob, &a, 20).await;

    let offer = crate::rtc_client::sample_offer(&runtime).await;
    let candidate = json!({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    let templates = [
        json!({"type": "join", "room": room}),
        json!({"type": "offer", "target": "publisher", "sdp": offer}),
        json!({"type": "answer", "target": "subscriber", "sdp": offer}),
        json!({"type": "candidate", "target": "publisher", "candidate": candidate}),
        json!({"type": "mute", "track": "t", "muted": true}),
        json!({"type": "leave"}),
        json!({"type": "ping"}),
    ];
    let seed: u64 = rand::random();
    println!("fuzz seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mallory = client(&server, &runtime, &users[2], false).await;
    let sent = 600;
    for n in 0..sent {
        let template = &templates[n % templates.len()];
        let frame = if rng.gen_bool(0.2) { template.to_string() } else { mutate(&mut rng, template) };
        mallory.send_text(frame);
    }
    // A ping at the end: its pong proves every frame before it was handled.
    let mut mallory = mallory;
    mallory.send(json!({"type": "ping"}));
    mallory.wait_for("pong after the fuzz", |f| f["type"] == "pong" || f["type"] == "closed").await;
    let allowed = [
        "error",
        "joined",
        "left",
        "answer",
        "offer",
        "candidate",
        "participant_joined",
        "participant_left",
        "track_published",
        "track_unpublished",
        "track_muted",
        "pong",
        "reconnect",
    ];
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_millis(200), mallory.next_event()).await {
        let kind = frame["type"].as_str().unwrap_or_default();
        assert!(allowed.contains(&kind), "seed {seed}: unexpected frame {frame}");
        if kind == "error" {
            assert!(frame["code"].as_str().is_some_and(|c| !c.is_empty()), "{frame}");
        }
    }
    let metrics = scrape(&server.process).await;
    for source in ["actor", "task", "thread", "http"] {
        let panics = metric_value(&metrics, &format!("rampart_panics_total{{source=\"{source}\",route=\"\"}}"))
            .or_else(|| metric_value(&metrics, &format!("rampart_panics_total{{source=\"{source}\"}}")))
            .unwrap_or(0.0);
        assert_eq!(panics, 0.0, "seed {seed}: {source} panics");
    }
    media_resumes(&bob, &a, 50, Duration::from_secs(5)).await;
    assert!(alice.state.errors.lock().is_empty() && bob.state.errors.lock().is_empty());
}

/// Waits until every participant has left.
async fn settled(server: &ChatServer) {
    eventually("participants gone", Duration::from_secs(10), || async {
        metric_value(&scrape(&server.process).await, "rampart_sfu_participants") == Some(0.0)
    })
    .await;
}

/// The footprint once the media tasks stopped changing (connections closed in the background).
async fn quiet_footprint(server: &ChatServer) -> Footprint {
    let mut last = footprint(server).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await; // Sampling interval of a quiet check.
        let now = footprint(server).await;
        if now.media_tasks == last.media_tasks {
            return now;
        }
        last = now;
    }
    last
}

/// What the server holds, as the leak test compares it.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    /// The live heap at the system monitor's latest sample (the test server samples every 200 ms).
    heap: u64,
    /// Reported, not compared: it also holds what the allocator keeps for reuse.
    #[expect(dead_code, reason = "read through Debug, in the test's report")]
    rss: u64,
    threads: u64,
    actors: u64,
    media_tasks: u64,
}

async fn footprint(server: &ChatServer) -> Footprint {
    let (_, actors) = server.http.get(&server.url("/admin/actors"), Some(ADMIN_TOKEN)).await;
    let (_, rooms) = server.http.get(&server.url("/admin/rooms"), Some(ADMIN_TOKEN)).await;
    let (_, system) = server.http.get(&server.url("/admin/system"), Some(ADMIN_TOKEN)).await;
    let live = actors["actors"].as_array().map_or(0, |all| all.iter().filter(|a| a["status"] != "stopped").count());
    Footprint {
        heap: system["heap_allocated_bytes"].as_u64().expect("the server reports its live heap"),
        rss: server.process.rss_bytes(),
        threads: server.process.threads(),
        actors: live as u64,
        media_tasks: rooms["media_tasks"].as_u64().unwrap_or_default(),
    }
}

/// What the live heap may grow by over the measured cycles: the target, 5 MiB over 200
/// cycles, so anything kept per cycle beyond ~25 KiB (a connection, its buffers, a forwarding
/// task) fails. Measured from a baseline taken after `WARM_UP_CYCLES`, once lazily built state
/// (codec tables, the reactor's buffers) exists, with no connection open. The heap, not RSS: under
/// CI load RSS rose 10-60 MiB in a round with no leak (packet buffers queued while the process
/// waited for a core, then kept by the allocator for reuse), while the heap comes back once the
/// connections are closed (within 0.2 MiB over 200 cycles, loaded or not). Smaller per-cycle leaks are below what
/// this sees; the supervision test `an_ended_child_frees_its_record_and_mailbox` guards the one
/// found that way.
const RETAINED_MAX: u64 = 5 * 1024 * 1024;
/// Cycles before the baseline (five batches of eight).
const WARM_UP_CYCLES: usize = 40;

#[actix_rt::test]
async fn join_leave_cycles_return_actors_tasks_and_threads_and_bound_memory() {
    // Alone among the heavy tests, so an observer's missed track (see below) is rarer.
    let _alone = crate::support::MEASURING.write().await;
    crate::rtc_client::keep_webrtc_log();
    // One user publishes from eight sockets at a time, and closed ones go in the background.
    let server = sfu_server(&[
        ("RAMPART__SFU__EMPTY_TIMEOUT", "300ms"),
        ("RAMPART__SFU__MAX_SOCKETS_PER_USER", "64"),
        // Fresh live-heap figures, and exact ones: without thread caches, objects freed on one
        // of the 20 threads are not counted as allocated until that thread allocates again.
        ("RAMPART__SYSTEM_MONITOR__INTERVAL", "200ms"),
        ("_RJEM_MALLOC_CONF", "tcache:false"),
    ]);
    let (users, room) = users_and_room(&server, "leak", 2).await;
    let runtime = media_runtime();
    let url = server.url("/rtc").replacen("http://", "ws://", 1);
    let token = server.token(&users[0]);

    let cycle = |n: usize| {
        let (runtime, url, token, room) = (runtime.clone(), url.clone(), token.clone(), room.clone());
        async move {
            let mut publisher = RtcClient::connect(
                &runtime,
                &url,
                &token,
                Options { publish: true, trickle: n.is_multiple_of(2), ..Options::default() },
            )
            .await;
            assert_eq!(publisher.join(&room).await["type"], "joined", "cycle {n}");
            publisher
        }
    };
    // Eight publishers at a time: each joins, publishes, is forwarded to the observer, and leaves.
    let missed = std::sync::atomic::AtomicUsize::new(0);
    let batch = |first: usize, observer: Arc<RtcClient>| {
        let cycle = &cycle;
        let server = &server;
        let room = &room;
        let missed = &missed;
        async move {
            let publishers = futures_util::future::join_all((first..first + 8).map(cycle)).await;
            for publisher in &publishers {
                let participant = publisher.participant();
                // What this test is about: every cycle really published, and the room forwarded
                // both tracks to its subscribers (the observer and the other seven).
                let forwarded = eventually_value(MEDIA_DEADLINE, || async {
                    let room = listed_room(server, room).await?;
                    let tracks = room["participants"].as_array()?.iter().find(|p| p["participant"] == participant)?
                        ["tracks"]
                        .as_array()?
                        .clone();
                    let forwarding =
                        |t: &Value| t["forwarded_packets"].as_u64() > Some(0) && t["subscribers"].as_u64() > Some(0);
                    (tracks.len() == 2 && tracks.iter().all(forwarding)).then_some(())
                })
                .await;
                if forwarded.is_none() {
                    let (_, rooms) = server.http.get(&server.url("/admin/rooms"), Some(ADMIN_TOKEN)).await;
                    let metrics = scrape(&server.process).await;
                    let sfu: Vec<&str> = metrics.lines().filter(|l| l.starts_with("rampart_sfu")).collect();
                    panic!(
                        "{participant} was not forwarded within {MEDIA_DEADLINE:?}\nrooms: {rooms}\n{}",
                        sfu.join("\n")
                    );
                }
                // Known open bug (see the notes): under load, the observer's webrtc-rs connection
                // at times never starts one forwarded track of a newcomer. Reported, not failed
                // on here; `a_track_offered_with_the_removal_of_another_reaches_the_subscriber`
                // and the forwarding tests check delivery to subscribers. The room already
                // forwards this publisher, so a few seconds say it: a missed track used to cost
                // the full media deadline, and a loaded CI machine with many misses ran the test
                // past the suite's time limit.
                if let Err(problem) = try_media_flows_within(&observer, &participant, 1, OBSERVER_DEADLINE).await {
                    missed.fetch_add(1, Ordering::Relaxed);
                    println!("the observer missed a track: {problem}\n{}", observer.state.diagnose(&participant).await);
                }
            }
        }
    };
    // A round: an observer joins, `cycles` publishers come and go past it, and it leaves too.
    // Compared with no connection open, so what a live connection keeps for its lifetime (webrtc-rs'
    // write queues keep the capacity of their longest burst: up to 7 MiB for the observer's under
    // CI load) is not taken for a leak, while anything a closed one left behind is.
    let round = |first: usize, cycles: usize| {
        let batch = &batch;
        let server = &server;
        let (runtime, users, room) = (&runtime, &users, &room);
        async move {
            let observer = Arc::new(member(server, runtime, &users[1], false, room).await);
            for first in (first..first + cycles).step_by(8) {
                batch(first, observer.clone()).await;
            }
            let sections = observer.state.offered_sections.load(Ordering::Relaxed);
            drop(observer);
            settled(server).await;
            sections
        }
    };
    // Warm-up: allocator arenas, the reactor pool's threads and lazily built state settle first.
    round(0, WARM_UP_CYCLES).await;
    let baseline = quiet_footprint(&server).await;
    let started = std::time::Instant::now();
    let cycles: usize = std::env::var("RAMPART_TEST_SFU_CYCLES").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let sections = round(WARM_UP_CYCLES, cycles).await;
    // Connections close in the background: what they held is freed once they are gone.
    let returned = |now: &Footprint| {
        now.heap <= baseline.heap + RETAINED_MAX
            && now.actors <= baseline.actors
            && now.media_tasks <= baseline.media_tasks
    };
    let mut after = footprint(&server).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline && !returned(&after) {
        tokio::time::sleep(Duration::from_millis(250)).await; // Poll inside the deadline.
        after = footprint(&server).await;
    }
    println!(
        "{cycles} cycles in {:?}: baseline {baseline:?}, after {after:?}; {sections} media sections offered last; \
         the observer missed {} publishers",
        started.elapsed(),
        missed.load(Ordering::Relaxed)
    );
    assert!(
        sections <= 2 * 8 + 2,
        "the observer's connection grew to {sections} media sections: transceivers are not reused"
    );
    // What leaks, named first; the heap then says whether anything else is kept.
    assert!(after.threads <= baseline.threads + 2, "threads grew: {baseline:?} -> {after:?}");
    assert!(after.actors <= baseline.actors, "actors grew: {baseline:?} -> {after:?}");
    assert!(after.media_tasks <= baseline.media_tasks, "media tasks grew: {baseline:?} -> {after:?}");
    assert!(after.heap <= baseline.heap + RETAINED_MAX, "the live heap grew: {baseline:?} -> {after:?}");
}

#[actix_rt::test]
async fn media_sockets_bind_ports_from_the_configured_range() {
    let server = sfu_server(&[("RAMPART__SFU__PORT_MIN", "47310"), ("RAMPART__SFU__PORT_MAX", "47329")]);
    let (users, room) = users_and_room(&server, "ports", 2).await;
    let runtime = media_runtime();
    let alice = member(&server, &runtime, &users[0], true, &room).await;
    let bob = member(&server, &runtime, &users[1], true, &room).await;
    media_flows(&bob, &alice.participant(), 10).await;
    media_flows(&alice, &bob.participant(), 10).await;
    for client in [&alice, &bob] {
        let candidates = client.state.server_candidates.lock().clone();
        assert!(!candidates.is_empty());
        assert!(candidates.iter().any(|c| c.contains("tcptype passive")), "ICE-TCP listens too: {candidates:?}");
        // Active TCP candidates listen nowhere (their port is the placeholder 9).
        for candidate in candidates.iter().filter(|c| !c.contains("tcptype active")) {
            let port: u16 = candidate.split_whitespace().nth(5).and_then(|p| p.parse().ok()).unwrap_or(0);
            assert!((47310..=47329).contains(&port), "{candidate}");
        }
    }
}

#[actix_rt::test]
async fn rtc_refuses_unknown_users_and_limits_sockets_and_rooms_per_user() {
    // Regressions: /rtc took any valid token, even of a user never provisioned; one user could
    // open sockets without end and join a room from each, exhausting sfu.max_rooms for everyone;
    // error frames repeated the client's unknown type and field names whole.
    let server = sfu_server(&[("RAMPART__SFU__MAX_SOCKETS_PER_USER", "2"), ("RAMPART__SFU__MAX_ROOMS_PER_USER", "1")]);
    let url = server.url("/rtc");
    let refused = server.ws_url(&url, Some(&server.token("ghost"))).await.err().expect("an unknown user is refused");
    assert!(
        matches!(refused, awc::error::WsClientError::InvalidResponseStatus(status) if status.as_u16() == 403),
        "{refused:?}"
    );
    server.create_user("alice").await;
    for name in ["town-hall", "all-hands"] {
        let (status, body) =
            server.http.post(&server.url("/admin/rooms"), Some(ADMIN_TOKEN), json!({"name": name})).await;
        assert_eq!(status, 201, "{body}");
    }
    let token = server.token("alice");
    let mut first = server.ws_url(&url, Some(&token)).await.expect("first socket");
    let mut second = server.ws_url(&url, Some(&token)).await.expect("second socket");
    let refused = server.ws_url(&url, Some(&token)).await.err().expect("a third socket is refused");
    assert!(
        matches!(refused, awc::error::WsClientError::InvalidResponseStatus(status) if status.as_u16() == 429),
        "{refused:?}"
    );
    first.send_json(json!({"type": "join", "room": "town-hall"})).await;
    assert_eq!(first.next_json().await["type"], "joined");
    second.send_json(json!({"type": "join", "room": "all-hands"})).await;
    let error = second.next_json().await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("room_limit")), "{error}");
    // The same room from another device is the same room.
    second.send_json(json!({"type": "join", "room": "town-hall"})).await;
    assert_eq!(second.next_json().await["type"], "joined");
    assert_eq!(first.next_json().await["type"], "participant_joined");
    // Leaving gives the room back once no socket of the user is in it.
    for socket in [&mut first, &mut second] {
        socket.send_json(json!({"type": "leave"})).await;
        // Room events (the other socket joining, leaving) may come first.
        while socket.next_json().await["type"] != "left" {}
    }
    second.send_json(json!({"type": "join", "room": "all-hands"})).await;
    assert_eq!(second.next_json().await["type"], "joined");
    // Echoed input is cut short.
    let long = "x".repeat(10_000);
    for frame in [json!({"type": long.clone()}), json!({"type": "leave", long.clone(): 1})] {
        second.send_json(frame).await;
        let error = second.next_json().await;
        assert!(error["message"].as_str().is_some_and(|m| m.chars().count() <= 201), "{}", error.to_string().len());
    }
    let metrics = scrape(&server.process).await;
    for limit in ["rtc_sockets_per_user", "rooms_per_user"] {
        let series = format!("rampart_limits_refused_total{{limit=\"{limit}\"}}");
        assert_eq!(metric_value(&metrics, &series), Some(1.0), "{series}");
    }
}

#[actix_rt::test]
async fn shutdown_closes_chat_and_video_sockets_first_and_exits_promptly() {
    // Regression: SIGTERM closed /ws sockets with 1001 before the HTTP drain, but not /rtc ones:
    // with one open the drain waited its whole timeout (≈ 12 s) and the client never got 1001.
    let mut server = sfu_server(&[("RAMPART__SHUTDOWN__READINESS_DELAY", "0s")]);
    server.create_user("alice").await;
    let (status, body) =
        server.http.post(&server.url("/admin/rooms"), Some(ADMIN_TOKEN), json!({"name": "lobby"})).await;
    assert_eq!(status, 201, "{body}");
    let mut chat = server.ws("alice").await;
    let mut video = server.ws_url(&server.url("/rtc"), Some(&server.token("alice"))).await.expect("rtc");
    video.send_json(json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(video.next_json().await["type"], "joined");
    let asked = std::time::Instant::now();
    server.process.terminate();
    let left = video.next_json().await;
    assert_eq!((left["type"].as_str(), left["room"].as_str()), (Some("left"), Some("lobby")), "{left}");
    assert_eq!(video.close_code().await, Some(1001));
    assert_eq!(chat.close_code().await, Some(1001));
    let status = server.process.wait_exit(Duration::from_secs(30));
    let took = asked.elapsed();
    eprintln!("exited {took:?} after SIGTERM with a chat and a video socket open");
    assert!(status.success(), "{status}");
    assert!(took <= Duration::from_secs(3), "shutdown took {took:?}");
}

/// A publishing client of each of `users` in `room`, with `options`; media checked flowing
/// between the first two both ways.
async fn publishers_exchanging_media(
    server: &ChatServer,
    users: &[String],
    room: &str,
    options: Options,
) -> Vec<RtcClient> {
    let runtime = media_runtime();
    let url = server.url("/rtc").replacen("http://", "ws://", 1);
    let mut clients = Vec::new();
    for user in users {
        let options = Options { publish: true, ..options.clone() };
        let mut client = RtcClient::connect(&runtime, &url, &server.token(user), options).await;
        let joined = client.join(room).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        clients.push(client);
    }
    let participants: Vec<String> = clients.iter().map(RtcClient::participant).collect();
    media_flows(&clients[1], &participants[0], 50).await;
    media_flows(&clients[0], &participants[1], 50).await;
    clients
}

#[actix_rt::test]
async fn media_flows_over_ice_tcp_for_clients_whose_network_drops_udp() {
    let _heavy = crate::support::MEASURING.read().await;
    let server = sfu_server(&[]);
    let (users, room) = users_and_room(&server, "tcp", 2).await;
    let clients =
        publishers_exchanging_media(&server, &users, &room, Options { tcp_only: true, ..Options::default() }).await;
    let offered = clients[0].state.server_candidates.lock().clone();
    assert!(
        offered.iter().any(|line| line.contains(" tcp ") && line.contains("tcptype passive")),
        "the SFU offers passive TCP candidates: {offered:?}"
    );
    let paths: Vec<Value> = room_participants(&server, &room).await.iter().map(|p| p["media_path"].clone()).collect();
    assert!(paths.len() == 2 && paths.iter().all(|path| path["protocol"] == "tcp"), "media over TCP: {paths:?}");
}

#[actix_rt::test]
async fn ice_tcp_can_be_turned_off() {
    let server = sfu_server(&[("RAMPART__SFU__ICE_TCP", "false")]);
    let (users, room) = users_and_room(&server, "udponly", 2).await;
    let runtime = media_runtime();
    let publisher = member(&server, &runtime, &users[0], true, &room).await;
    let subscriber = member(&server, &runtime, &users[1], false, &room).await;
    media_flows(&subscriber, &publisher.participant(), 20).await;
    let offered = publisher.state.server_candidates.lock().clone();
    assert!(!offered.is_empty() && offered.iter().all(|line| !line.contains(" tcp ")), "{offered:?}");
}

mod cluster;
mod turn;
