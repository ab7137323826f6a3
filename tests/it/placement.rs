//! Room placement (`RoomStore::place_room` and friends): one owner per room, on SQLite and on a
//! shared MongoDB (FerretDB) with several handles placing one room at once, as the instances of
//! a deployment do.

use std::sync::Arc;

use rampart::storage::{RoomLease, RoomStore};

use crate::chat_client::Backend;

fn candidate(room: &str, owner: &str, expires_at_ms: i64) -> RoomLease {
    RoomLease {
        room: room.to_owned(),
        owner: owner.to_owned(),
        address: format!("http://{owner}.internal:8080"),
        token: uuid::Uuid::now_v7().simple().to_string(),
        expires_at_ms,
    }
}

/// The contract, over `handles` that share one store (one per instance).
async fn placement_contract(handles: &[Arc<dyn RoomStore>]) {
    let (first, second) = (&handles[0], &handles[handles.len() - 1]);
    // A free room goes to its first placer; the second gets the running lease.
    let placed = first.place_room(candidate("standup", "a", 10_000), 1_000).await.expect("place");
    assert_eq!(placed.owner, "a");
    let seen = second.place_room(candidate("standup", "b", 10_500), 1_100).await.expect("place");
    assert_eq!(seen, placed, "b finds a's lease");
    // Its owner placing again extends it (same token).
    let again = first.place_room(candidate("standup", "a", 12_000), 2_000).await.expect("place");
    assert_eq!((again.token.as_str(), again.expires_at_ms), (placed.token.as_str(), 12_000));
    assert!(first.renew_room("standup".into(), placed.token.clone(), 15_000).await.expect("renew"));
    // Expired: taken over by whoever places next; the old holder can neither renew nor release it.
    let taken = second.place_room(candidate("standup", "b", 30_000), 15_001).await.expect("take over");
    assert_eq!(taken.owner, "b");
    assert!(!first.renew_room("standup".into(), placed.token.clone(), 40_000).await.expect("renew"));
    first.release_room("standup".into(), placed.token.clone()).await.expect("release");
    let listed = first.room_leases(20_000).await.expect("leases");
    assert_eq!(listed, vec![taken.clone()], "b's lease stands");
    assert!(first.room_leases(30_000).await.expect("leases").is_empty(), "expired leases are not listed");
    second.release_room("standup".into(), taken.token.clone()).await.expect("release");
    assert!(first.room_leases(20_000).await.expect("leases").is_empty());

    // The race, 200 times: every handle places the same room at once, several times each, the
    // first round on a free room and every later one on the expired lease of the round before.
    // One owner each time, seen by all. (FerretDB's delete is a read, then a delete by `_id`: a
    // takeover that deleted the expired lease could delete a racer's fresh one too, which 50
    // rounds caught one run in three; 200 nearly always.)
    for round in 0..200 {
        let now = 100_000 + round * 100_000;
        let placements = handles.iter().enumerate().flat_map(|(n, handle)| {
            (0..4).map(move |k| {
                let handle = handle.clone();
                async move {
                    let owner = format!("instance-{n}-{k}");
                    handle.place_room(candidate("all-hands", &owner, now + 50_000), now).await.expect("place")
                }
            })
        });
        let leases: Vec<RoomLease> = futures_util::future::join_all(placements).await;
        let owners: std::collections::HashSet<&str> = leases.iter().map(|lease| lease.owner.as_str()).collect();
        assert_eq!(owners.len(), 1, "round {round}: one owner, not {owners:?}");
        let tokens: std::collections::HashSet<&str> = leases.iter().map(|lease| lease.token.as_str()).collect();
        assert_eq!(tokens.len(), 1, "round {round}: one lease");
        let listed = second.room_leases(now).await.expect("leases");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].owner, leases[0].owner);
    }
}

#[actix_rt::test]
async fn sqlite_places_each_room_on_one_owner() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        rampart::storage::SqliteChat::open(dir.path(), 2, rampart::storage::WalPolicy::default()).expect("open");
    let handle: Arc<dyn RoomStore> = Arc::new(store);
    placement_contract(&[handle.clone(), handle]).await;
}

#[actix_rt::test]
async fn mongodb_places_each_room_on_one_owner_however_many_instances_race() {
    let Some(backend) = Backend::scale_out("placement") else { return };
    let config = rampart::storage::mongodb::MongoConfig {
        uri: backend.get("RAMPART__MONGODB__URI").unwrap_or_default().to_owned(),
        database: backend.get("RAMPART__MONGODB__DATABASE").unwrap_or_default().to_owned(),
        ..Default::default()
    };
    // Four handles on one database, as four processes of a deployment have.
    let mut handles: Vec<Arc<dyn RoomStore>> = Vec::new();
    for _ in 0..4 {
        handles.push(Arc::new(rampart::storage::mongodb::MongoChat::open(&config, true).await.expect("open")));
    }
    placement_contract(&handles).await;
}
