//! The SFU (feature `sfu`) with real WebRTC clients (webrtc-rs, `rtc_client.rs`) on loopback:
//! every server runs with `sfu.ice_loopback_only`, every client binds 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::chat_client::{ChatServer, ADMIN_TOKEN};
use crate::rtc_client::{media_runtime, Options, RtcClient};
use crate::support::{eventually, metric_value, scrape};

/// How long media may take to start flowing (ICE, DTLS, the first offer/answer round).
const MEDIA_DEADLINE: Duration = Duration::from_secs(20);

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
    RtcClient::connect(runtime, &url, &server.token(user), Options { publish, trickle: true }).await
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
    let state = subscriber.state.clone();
    let publisher = publisher.to_owned();
    eventually(&format!("{packets} intact audio and video packets from {publisher}"), MEDIA_DEADLINE, || {
        let state = state.clone();
        let publisher = publisher.clone();
        async move { ["video", "audio"].iter().all(|kind| state.received(&publisher, kind).intact >= packets) }
    })
    .await;
}

#[actix_rt::test]
async fn participants_receive_each_others_audio_and_video_intact_and_in_order() {
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

/// `Value` of `/admin/rooms` for `room`, if open.
pub async fn listed_room(server: &ChatServer, room: &str) -> Option<Value> {
    let (_, rooms) = server.http.get(&server.url("/admin/rooms"), Some(ADMIN_TOKEN)).await;
    rooms["rooms"].as_array().and_then(|rooms| rooms.iter().find(|r| r["name"] == room).cloned())
}
