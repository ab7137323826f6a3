//! The embedded chat store's own tests.

use std::sync::Arc;

use rusqlite::params;

use super::deliveries::SELECT_UNDELIVERED;
use super::{SqliteChat, WalPolicy};
use crate::storage::{
    Claim, CommitOutcome, ConversationStore, DeadLetterKind, DeadLetterStore, DeliveryStore, MessageStore, NewMessage,
    RoomStore, StorageError, UserStore,
};

fn message(sender: &str, client_msg_id: &str, conversation: &str) -> NewMessage {
    NewMessage {
        id: format!("{sender}/{client_msg_id}"),
        conversation: conversation.into(),
        sender: sender.into(),
        client_msg_id: client_msg_id.into(),
        body: format!("hello from {sender}"),
        created_at_ms: None,
    }
}

#[actix_rt::test]
async fn operator_rooms_are_kept_across_reopening_and_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
        assert!(store.create_room("town-hall".into(), 1).await.unwrap());
        assert!(!store.create_room("town-hall".into(), 2).await.unwrap(), "a second create is not a new room");
        assert!(store.create_room("all-hands".into(), 3).await.unwrap());
    }
    let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
    assert_eq!(store.rooms().await.unwrap(), vec!["all-hands".to_owned(), "town-hall".to_owned()]);
    assert!(store.room_exists("town-hall".into()).await.unwrap());
    assert!(store.delete_room("town-hall".into()).await.unwrap());
    assert!(!store.delete_room("town-hall".into()).await.unwrap());
    assert!(!store.room_exists("town-hall".into()).await.unwrap());
    assert_eq!(store.rooms().await.unwrap(), vec!["all-hands".to_owned()]);
}

#[actix_rt::test]
async fn a_recommitted_batch_stores_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
    for user in ["alice", "bob"] {
        assert!(store.create_user(user.into(), user.into(), 1).await.unwrap());
    }
    store
        .create_conversation("c".into(), "t".into(), "alice".into(), vec!["alice".into(), "bob".into()], 1)
        .await
        .unwrap()
        .unwrap();
    let batch = vec![message("alice", "1", "c"), message("alice", "2", "c")];
    let batch: Arc<[NewMessage]> = batch.into();
    let first = store.commit_batch(batch.clone(), 10).await.unwrap();
    let duplicate = |outcome: &CommitOutcome| matches!(outcome, CommitOutcome::Stored { duplicate: true, .. });
    assert!(!first.iter().any(duplicate));
    let second = store.commit_batch(batch, 20).await.unwrap();
    assert!(second.iter().all(duplicate));
    assert!(
        matches!(&second[0], CommitOutcome::Stored { message, .. } if message.created_at_ms == 10),
        "the original is reported"
    );
    let history = store.history("c".into(), None, 10).await.unwrap().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].client_msg_id, "2", "newest first");
    // One delivery per recipient other than the sender.
    assert_eq!(store.undelivered("bob".into(), 0, 10, true).await.unwrap().entries.len(), 2);
    assert!(store.undelivered("alice".into(), 0, 10, true).await.unwrap().entries.is_empty());
}

#[actix_rt::test]
async fn stale_deliveries_are_requeued_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
    for user in ["alice", "bob"] {
        store.create_user(user.into(), user.into(), 1).await.unwrap();
    }
    store
        .create_conversation("c".into(), "t".into(), "alice".into(), vec!["alice".into(), "bob".into()], 1)
        .await
        .unwrap()
        .unwrap();
    let committed = store.commit_batch(vec![message("alice", "1", "c")].into(), 10).await.unwrap();
    let CommitOutcome::Stored { message, .. } = &committed[0] else { panic!("not stored") };
    let claim = Claim { recipient: "bob".into(), message_id: message.id.clone(), seq: message.seq };
    store.mark_in_flight(vec![claim.clone()], 100).await.unwrap();
    let report = store.requeue_stale(200, 2, 10, 300).await.unwrap();
    assert_eq!(report.requeued, vec!["bob".to_owned()]);
    store.mark_in_flight(vec![claim], 400).await.unwrap();
    let report = store.requeue_stale(500, 2, 10, 600).await.unwrap();
    assert_eq!(report.dead_lettered, 1, "second attempt reaches max_attempts = 2");
    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].kind, DeadLetterKind::Delivery);
    assert!(store.undelivered("bob".into(), 0, 10, true).await.unwrap().entries.is_empty());
}

#[actix_rt::test]
async fn pending_deliveries_of_old_messages_are_found_for_the_backstop() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
    for user in ["alice", "bob", "carol"] {
        store.create_user(user.into(), user.into(), 1).await.unwrap();
    }
    let members = vec!["alice".into(), "bob".into(), "carol".into()];
    store.create_conversation("c".into(), "t".into(), "alice".into(), members, 1).await.unwrap().unwrap();
    let committed = store.commit_batch(vec![message("alice", "1", "c")].into(), 100).await.unwrap();
    let CommitOutcome::Stored { message, .. } = &committed[0] else { panic!("not stored") };
    let everyone = vec!["alice".to_owned(), "bob".to_owned(), "carol".to_owned()];
    assert!(store.stale_pending(everyone.clone(), 100).await.unwrap().is_empty(), "not older than the cutoff");
    assert_eq!(store.stale_pending(everyone.clone(), 101).await.unwrap(), vec!["bob", "carol"]);
    // Pushed to bob (in flight): only carol's is still pending.
    let claim = Claim { recipient: "bob".into(), message_id: message.id.clone(), seq: message.seq };
    store.mark_in_flight(vec![claim], 150).await.unwrap();
    assert_eq!(store.stale_pending(everyone, 101).await.unwrap(), vec!["carol"]);
    let pending_only = store.undelivered("bob".into(), 0, 10, false).await.unwrap();
    assert!(pending_only.entries.is_empty() && pending_only.last && pending_only.through == 0);
    let with_in_flight = store.undelivered("bob".into(), 0, 1, true).await.unwrap();
    assert_eq!((with_in_flight.entries.len(), with_in_flight.through, with_in_flight.last), (1, message.seq, false));
}

#[test]
fn undelivered_reads_use_the_partial_index() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap());
    let connection = rusqlite::Connection::open(dir.path().join("rampart.db")).unwrap();
    let queries = [
        format!("{SELECT_UNDELIVERED} ORDER BY d.message_seq LIMIT ?3"),
        format!("{SELECT_UNDELIVERED} AND d.state = 0 ORDER BY d.message_seq LIMIT ?3"),
    ];
    for query in queries {
        let mut plan = connection.prepare(&format!("EXPLAIN QUERY PLAN {query}")).unwrap();
        let details: Vec<String> =
            plan.query_map(params!["bob", 0, 10], |row| row.get::<_, String>(3)).unwrap().map(Result::unwrap).collect();
        assert!(details.iter().any(|detail| detail.contains("deliveries_undelivered")), "{query}: {details:?}");
    }
}

#[test]
fn a_database_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap());
    let connection = rusqlite::Connection::open(dir.path().join("rampart.db")).unwrap();
    connection.pragma_update(None, "user_version", 99).unwrap();
    drop(connection);
    let refused = SqliteChat::open(dir.path(), 1, WalPolicy::default()).err().expect("refused");
    assert!(refused.to_string().contains("newer"), "{refused}");
}

#[actix_rt::test]
async fn a_panicking_job_leaves_the_thread_serving() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
    let outcome: Result<(), StorageError> = store.db.write(|_| panic!("boom in a storage job")).await;
    assert!(matches!(outcome, Err(StorageError::Panicked(message)) if message.contains("boom")));
    assert!(store.create_user("carol".into(), "Carol".into(), 1).await.unwrap());
}
