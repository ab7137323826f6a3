//! Rooms across instances (`sfu.cluster`): two processes on one MongoDB (FerretDB of the test's
//! own, on its SQLite backend: PostgreSQL cannot run inside the test's network namespace); a
//! participant whose socket reached the other instance is relayed to the room's owner, and a
//! room whose owner dies moves.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{media_flows, sfu_server, users_and_room};
use crate::chat_client::{ChatServer, ADMIN_TOKEN};
use crate::rtc_client::{media_runtime, Options, RtcClient};

const CLUSTER_SECRET: &str = "the cluster test's shared secret";

/// FerretDB on a directory of its own, on a free loopback port; stopped when dropped.
struct PrivateMongo {
    child: std::process::Child,
    uri: String,
    _dir: tempfile::TempDir,
}

impl PrivateMongo {
    fn start() -> Option<Self> {
        let bin = std::env::var("RAMPART_TEST_FERRETDB_BIN").ok().filter(|bin| std::path::Path::new(bin).is_file());
        let Some(bin) = bin else {
            crate::support::tool_missing(
                "SERVICES",
                "FerretDB (RAMPART_TEST_FERRETDB_BIN from scripts/services.sh env)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("probe").local_addr().expect("port").port();
        let child = std::process::Command::new(bin)
            .args(["-listen", &format!("127.0.0.1:{port}"), "-sqlite", &format!("file:{}/", dir.path().display())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("FerretDB starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "FerretDB did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50)); // Poll interval.
        }
        Some(Self { child, uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"), _dir: dir })
    }

    /// An instance of the deployment on this store.
    fn instance(&self, extra: &[(&str, &str)]) -> ChatServer {
        self.instance_at(&self.uri, extra)
    }

    /// An instance reaching this store at `uri` (through a `Proxy`, to cut it off).
    fn instance_at(&self, uri: &str, extra: &[(&str, &str)]) -> ChatServer {
        let mut env = vec![
            ("RAMPART__STORAGE__KIND", "mongodb"),
            ("RAMPART__MONGODB__URI", uri),
            ("RAMPART__MONGODB__DATABASE", "rampart_cluster"),
            ("RAMPART__SFU__CLUSTER__ENABLED", "true"),
            ("RAMPART__SFU__CLUSTER__SECRET", CLUSTER_SECRET),
        ];
        env.extend_from_slice(extra);
        sfu_server(&env)
    }
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn rooms_view(server: &ChatServer) -> Value {
    let (status, body) = server.http.get(&server.url("/admin/rooms"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn rtc(server: &ChatServer, user: &str, publish: bool) -> RtcClient {
    let url = server.url("/rtc").replacen("http://", "ws://", 1);
    RtcClient::connect(&media_runtime(), &url, &server.token(user), Options { publish, ..Options::default() }).await
}

/// The participants `joined` listed.
fn listed(joined: &Value) -> Vec<String> {
    joined["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|participant| participant["participant"].as_str().map(str::to_owned))
        .collect()
}

#[actix_rt::test]
async fn a_room_runs_on_one_instance_for_both_instances_participants_and_moves_when_its_owner_dies() {
    let _heavy = crate::support::MEASURING.read().await;
    let Some(mongo) = PrivateMongo::start() else { return };
    let mut first = mongo.instance(&[]);
    let second = mongo.instance(&[]);
    let (users, room) = users_and_room(&first, "span", 2).await;

    // Alice reaches the first instance, bob the second: one room, on the first.
    let mut alice = rtc(&first, &users[0], true).await;
    assert_eq!(alice.join(&room).await["type"], "joined");
    let mut bob = rtc(&second, &users[1], true).await;
    let joined = bob.join(&room).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(listed(&joined), vec![alice.participant()], "bob sees alice in the room: {joined}");
    media_flows(&bob, &alice.participant(), 50).await;
    media_flows(&alice, &bob.participant(), 50).await;

    let (owner_view, other_view) = (rooms_view(&first).await, rooms_view(&second).await);
    let owner = owner_view["instance"].as_str().unwrap_or_default().to_owned();
    let open: Vec<&Value> = owner_view["rooms"].as_array().into_iter().flatten().collect();
    assert_eq!(open.len(), 1, "{owner_view}");
    assert_eq!(open[0]["participants"].as_array().map(Vec::len), Some(2), "both run on the owner: {owner_view}");
    let relayed: Vec<(String, bool)> = open[0]["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["user"].as_str().unwrap_or_default().to_owned(), p["signaling_relayed"] == true))
        .collect();
    assert!(relayed.contains(&(users[1].clone(), true)) && relayed.contains(&(users[0].clone(), false)), "{relayed:?}");
    assert_eq!(other_view["rooms"].as_array().map(Vec::len), Some(0), "nothing runs on the other: {other_view}");
    for view in [&owner_view, &other_view] {
        let placements = view["placements"].as_array().cloned().unwrap_or_default();
        assert_eq!(placements.len(), 1, "every instance sees the deployment's rooms: {view}");
        assert_eq!(
            (placements[0]["room"].as_str(), placements[0]["owner"].as_str()),
            (Some(room.as_str()), Some(owner.as_str()))
        );
    }
    // A relay credential that does not check out is refused before any handshake.
    let (status, _) = bob_relay_with(&second, "1.deadbeef").await;
    assert_eq!(status, 401);

    // The owner dies. Bob's socket (on the second instance) is told to reconnect and gets a new
    // `joined` once the room is placed again (when the dead owner's lease expires); alice, whose
    // socket died with the owner, reconnects through the second instance.
    drop(alice);
    first.process.kill_hard();
    let killed = Instant::now();
    let moved = bob.wait_for("reconnect", |frame| frame["type"] == "reconnect").await;
    assert_eq!(moved["rejoin"], true, "{moved}");
    let rejoined = bob.wait_for("joined", |frame| frame["type"] == "joined").await;
    let mut alice = rtc(&second, &users[0], true).await;
    assert_eq!(alice.join(&room).await["type"], "joined");
    media_flows(&bob, &alice.participant(), 20).await;
    media_flows(&alice, &bob.participant(), 20).await;
    eprintln!("media flowed again {:?} after the owner's kill -9 (rejoined: {rejoined})", killed.elapsed());
    let view = rooms_view(&second).await;
    let placements = view["placements"].as_array().cloned().unwrap_or_default();
    assert_eq!(placements.len(), 1, "{view}");
    assert_eq!(placements[0]["here"], true, "the room moved to the survivor: {view}");
    assert_eq!(bob.state.joins.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// `GET /rtc/relay` on `server` for bob with `credential`.
async fn bob_relay_with(server: &ChatServer, credential: &str) -> (u16, Value) {
    let request = awc::Client::new()
        .get(server.url("/rtc/relay"))
        .insert_header(("x-rampart-relay-user", "bob"))
        .insert_header(("x-rampart-relay", credential));
    let mut response = request.send().await.expect("relay request");
    let body = response.json::<Value>().await.unwrap_or_default();
    (response.status().as_u16(), body)
}

#[actix_rt::test]
async fn two_instances_placing_one_room_at_once_open_it_once_and_a_drained_owner_hands_it_over() {
    let _heavy = crate::support::MEASURING.read().await;
    let Some(mongo) = PrivateMongo::start() else { return };
    let first = mongo.instance(&[]);
    let second = mongo.instance(&[]);
    let (users, room) = users_and_room(&first, "race", 2).await;
    let (mut one, mut other) = (rtc(&first, &users[0], true).await, rtc(&second, &users[1], true).await);
    // Both join at the same moment, each through its own instance.
    let (a, b) = futures_util::future::join(one.join(&room), other.join(&room)).await;
    assert_eq!((a["type"].as_str(), b["type"].as_str()), (Some("joined"), Some("joined")), "{a} {b}");
    media_flows(&other, &one.participant(), 30).await;
    media_flows(&one, &other.participant(), 30).await;
    let (first_view, second_view) = (rooms_view(&first).await, rooms_view(&second).await);
    let open = |view: &Value| view["rooms"].as_array().map_or(0, Vec::len);
    assert_eq!(open(&first_view) + open(&second_view), 1, "one room: {first_view} {second_view}");
    let owners = |view: &Value| -> Vec<(String, String)> {
        view["placements"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (p["room"].as_str().unwrap_or_default().to_owned(), p["owner"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    };
    assert_eq!(owners(&first_view).len(), 1, "{first_view}");
    assert_eq!(owners(&first_view), owners(&second_view), "one placement, seen alike");

    // The owner drains (SIGTERM): the participant on the other instance follows the room there.
    let (mut owner, survivor, mut follower, leaver) =
        if open(&first_view) == 1 { (first, second, other, one) } else { (second, first, one, other) };
    drop(leaver);
    owner.process.terminate();
    let moved = follower.wait_for("reconnect", |frame| frame["type"] == "reconnect").await;
    assert_eq!(moved["rejoin"], true, "{moved}");
    let rejoined = follower.wait_for("joined", |frame| frame["type"] == "joined").await;
    assert_eq!(rejoined["room"], room.as_str());
    let view = rooms_view(&survivor).await;
    assert_eq!(view["rooms"].as_array().map(Vec::len), Some(1), "the room runs on the survivor now: {view}");
    let status = owner.process.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "the drained owner exits cleanly: {}", owner.process.output());
}

#[actix_rt::test]
async fn an_owner_cut_off_from_the_store_stops_serving_its_room_before_another_can_take_it() {
    let _heavy = crate::support::MEASURING.read().await;
    let Some(mongo) = PrivateMongo::start() else { return };
    let upstream = mongo.uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap_or_default().to_owned();
    let proxy = crate::support::Proxy::start(&upstream).await;
    let through_proxy = format!("mongodb://{}/?directConnection=true", proxy.address.trim_start_matches("http://"));
    let fast = [("RAMPART__SFU__CLUSTER__LEASE_TTL", "3s"), ("RAMPART__MONGODB__OPERATION_TIMEOUT", "500ms")];
    let owner = mongo.instance_at(&through_proxy, &fast);
    let other = mongo.instance(&fast);
    let (users, room) = users_and_room(&other, "fence", 2).await;
    // Bob on the owner-to-be first, then alice through the other instance.
    let mut bob = rtc(&owner, &users[1], true).await;
    assert_eq!(bob.join(&room).await["type"], "joined");
    let mut alice = rtc(&other, &users[0], true).await;
    assert_eq!(alice.join(&room).await["type"], "joined");
    media_flows(&alice, &bob.participant(), 20).await;
    assert_eq!(rooms_view(&owner).await["rooms"].as_array().map(Vec::len), Some(1));

    // The owner loses the store: it cannot renew, so it fences the room before the lease
    // expires; alice's relay is closed and the other instance takes the room once it expires.
    proxy.set_up(false);
    let moved = alice.wait_for("reconnect", |frame| frame["type"] == "reconnect").await;
    assert_eq!(moved["rejoin"], true, "{moved}");
    alice.wait_for("joined", |frame| frame["type"] == "joined").await;
    let log = owner.process.output();
    assert!(log.contains("lost the room's placement"), "the owner fenced the room before the other took it: {log}");
    // Bob, on the cut-off instance, is told to reconnect, and then that the room is unavailable
    // there (it cannot place it) rather than being kept in a room nobody else sees.
    let moved = bob.wait_for("reconnect", |frame| frame["type"] == "reconnect").await;
    assert_eq!(moved["rejoin"], true, "{moved}");
    let refused = bob.wait_for("error", |frame| frame["type"] == "error").await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    let view = rooms_view(&other).await;
    assert_eq!(view["rooms"].as_array().map(Vec::len), Some(1), "the room runs on the other instance now: {view}");
    // The store back: bob joins again and meets alice there.
    proxy.set_up(true);
    let rejoined = bob.join(&room).await;
    assert_eq!(rejoined["type"], "joined", "{rejoined}");
    media_flows(&bob, &alice.participant(), 20).await;
}

#[actix_rt::test]
async fn a_relaying_peer_that_panics_relays_again_and_media_flows() {
    let _heavy = crate::support::MEASURING.read().await;
    let Some(mongo) = PrivateMongo::start() else { return };
    let owner = mongo.instance(&[]);
    let relaying = mongo.instance(&[]);
    let (users, room) = users_and_room(&owner, "panic", 2).await;
    let mut alice = rtc(&owner, &users[0], true).await;
    assert_eq!(alice.join(&room).await["type"], "joined");
    let mut bob = rtc(&relaying, &users[1], true).await;
    assert_eq!(bob.join(&room).await["type"], "joined");
    media_flows(&alice, &bob.participant(), 20).await;
    // Bob's peer on the relaying instance (the only peer there) panics.
    let (status, listing) = relaying.http.get(&relaying.url("/admin/actors"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let peer = listing["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|actor| actor["path"].as_str())
        .find(|path| path.starts_with("/root/sfu/peers/peer-"))
        .unwrap_or_else(|| panic!("no peer on the relaying instance: {listing}"))
        .to_owned();
    super::chaos_panic(&relaying, &peer).await;
    let moved = bob.wait_for("reconnect", |frame| frame["type"] == "reconnect").await;
    assert_eq!(moved["rejoin"], true, "{moved}");
    bob.wait_for("joined", |frame| frame["type"] == "joined").await;
    let before = alice.state.received(&bob.participant(), "video").intact;
    crate::support::eventually("bob's media reaches alice again", Duration::from_secs(20), || {
        let state = alice.state.clone();
        let publisher = bob.participant();
        async move { state.received(&publisher, "video").intact > before + 20 }
    })
    .await;
    // One bob in the room, not a ghost of the old relay beside the new one.
    crate::support::eventually("the owner's room holds alice and one bob", Duration::from_secs(10), || async {
        let view = rooms_view(&owner).await;
        view["rooms"][0]["participants"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    // A later move is a move of its own: the owner dies, and bob is told again.
    let mut owner = owner;
    drop(alice);
    owner.process.kill_hard();
    let moved = bob.wait_for("reconnect", |frame| frame["type"] == "reconnect").await;
    assert_eq!(moved["rejoin"], true, "{moved}");
    let joined = bob.wait_for("joined", |frame| frame["type"] == "joined").await;
    assert_eq!(joined["room"], room.as_str(), "{joined}");
}

#[actix_rt::test]
async fn a_join_the_owner_refuses_reaches_the_client_and_leaves_it_free_to_try_again() {
    let Some(mongo) = PrivateMongo::start() else { return };
    let owner = mongo.instance(&[("RAMPART__SFU__MAX_PARTICIPANTS", "2")]);
    let relaying = mongo.instance(&[]);
    let (users, room) = users_and_room(&owner, "full", 3).await;
    let mut first = rtc(&owner, &users[0], false).await;
    assert_eq!(first.join(&room).await["type"], "joined");
    let mut second = rtc(&owner, &users[1], false).await;
    assert_eq!(second.join(&room).await["type"], "joined");
    // The third reaches the other instance: the owner's refusal is what it hears.
    let mut third = rtc(&relaying, &users[2], false).await;
    let refused = third.join(&room).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("room_full")), "{refused}");
    // Not stuck "in" the room through a dead relay: a later join is a join, and succeeds once
    // there is room.
    drop(second);
    crate::support::eventually("a place frees up", Duration::from_secs(10), || async {
        let view = rooms_view(&owner).await;
        view["rooms"][0]["participants"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    let joined = third.join(&room).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(listed(&joined), vec![first.participant()]);
}
