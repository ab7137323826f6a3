//! `storage.kind = "mongodb"` (with `search.kind = "elasticsearch"`) against real servers:
//! FerretDB on PostgreSQL and OpenSearch from `scripts/services.sh up`. The tests read
//! `RAMPART_TEST_MONGODB_URI` and `RAMPART_TEST_ELASTICSEARCH_URL` and skip without them, unless
//! `RAMPART_REQUIRE_SERVICES=1` (CI). Each test has a database and an index of its own, so they
//! run side by side; a MongoDB "outage" is a proxy of the test's that stops passing connections.
//!
//! The embedded suite's black-box scenarios run here unchanged (`chat::*_on`), then what only a
//! shared store has: an outage, two processes on one database, query plans.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rampart::storage::{ConversationStore as _, DeliveryStore as _, MessageStore as _, RoomStore as _, UserStore as _};
use serde_json::{json, Value};

use crate::chat;
use crate::chat_client::{Backend, ChatServer, ADMIN_TOKEN};
use crate::support::eventually;

/// The embedded suite's scenario `$scenario` (`chat::<scenario>_on`, or `<module>::<scenario>_on`),
/// run on the scale-out backends with a database and index named after `$name`.
macro_rules! on_scale_out {
    ($($test:ident: $name:literal => $($scenario:ident)::+;)*) => {$(
        #[actix_rt::test]
        async fn $test() {
            let Some(backend) = Backend::scale_out($name) else { return };
            on_scale_out!(@call $($scenario)::+)(&backend).await;
        }
    )*};
    (@call $scenario:ident) => { chat::$scenario };
    (@call $module:ident :: $scenario:ident) => { crate::$module::$scenario };
}

on_scale_out! {
    mongodb_send_ack_history_and_search: "send" => send_ack_history_and_search_on;
    mongodb_a_resent_message_gets_the_original_ack_and_is_stored_once: "resend" =>
        a_resent_message_gets_the_original_ack_and_is_stored_once_on;
    mongodb_online_pushes_and_backlog_in_order: "backlog" =>
        online_recipients_get_pushes_and_a_reconnecting_one_gets_its_backlog_in_order_on;
    mongodb_the_cleanup_job_requeues_a_delivery_nobody_confirmed: "cleanup" =>
        the_cleanup_job_requeues_a_delivery_nobody_confirmed_on;
    mongodb_a_poison_message_is_bisected_out_to_dead_letters: "poison" =>
        a_poison_message_is_bisected_out_to_dead_letters_while_the_rest_are_acked_on;
    mongodb_an_unknown_sender_is_dead_lettered_and_can_be_retried: "unknown" =>
        an_unknown_sender_is_dead_lettered_and_can_be_retried_on;
    mongodb_batch_writer_panics_during_load_lose_and_duplicate_nothing: "writer_panics" =>
        batch_writer_panics_during_load_lose_and_duplicate_nothing_acked_on;
    mongodb_acked_messages_survive_kill_9: "kill9" => acked_messages_survive_kill_9_on;
    mongodb_a_batch_that_stalls_while_the_store_is_healthy_is_bisected: "stall" =>
        a_batch_that_stalls_while_the_store_is_healthy_is_bisected_and_its_poison_dead_lettered_on;
    mongodb_an_unannounced_message_reaches_its_connected_recipient: "unannounced" =>
        live_delivery::an_unannounced_message_reaches_its_connected_recipient_on;
    mongodb_a_delivery_crash_with_an_announcement_in_hand_loses_no_push: "hub_crash" =>
        live_delivery::a_delivery_crash_with_an_announcement_in_hand_loses_no_push_on;
    mongodb_commits_that_timed_out_but_landed_reach_online_members: "timed_out" =>
        live_delivery::commits_that_timed_out_but_landed_reach_online_members_on;
    mongodb_every_acked_message_reaches_a_connected_member_through_pipeline_panics: "live_panics" =>
        live_delivery::every_acked_message_reaches_a_connected_member_through_pipeline_panics_on;
}

#[actix_rt::test]
async fn mongodb_a_message_stored_by_another_process_reaches_a_member_connected_here() {
    // Without the Kafka transport, a commit is announced only on the process that stored it: a
    // member connected to another process gets it from the delivery backstop, live.
    let Some(backend) = Backend::scale_out("other_process") else { return };
    let env = [("RAMPART__DELIVERY__STALE_AFTER", "2s"), ("RAMPART__DELIVERY__CLEANUP_INTERVAL", "500ms")];
    let first = backend.start(&env);
    let second = backend.start(&env);
    first.create_user("alice").await;
    first.create_user("bob").await;
    let conversation = first.conversation("alice", &["bob"]).await;
    let mut bob = second.ws("bob").await;
    // Bob is live on the second process once a message sent there reaches him.
    let (status, _) = second.post_message(&second.token("alice"), &conversation, "here", "via the second").await;
    assert_eq!(status, 201);
    let first_push = bob.next_json().await;
    assert_eq!(first_push["body"], "via the second");
    bob.send_json(json!({"type": "delivered", "id": first_push["id"]})).await;
    let (status, ack) = first.post_message(&first.token("alice"), &conversation, "there", "via the first").await;
    assert_eq!(status, 201, "{ack}");
    let acked = Instant::now();
    // (At least once: anything else that comes first is skipped, as clients dedupe.)
    let pushed = loop {
        let frame = bob.next_json().await;
        if frame["id"] == ack["id"] {
            break frame;
        }
    };
    assert_eq!(pushed["body"], "via the first");
    eprintln!("pushed by the other process {:?} after the ack", acked.elapsed());
}

#[actix_rt::test]
async fn mongodb_a_delivery_record_without_its_message_does_not_end_a_backlog_replay() {
    // Suspect (confirmed): a backlog page held fewer messages than delivery records when a
    // record's message was missing (a record written before its message, or a failed batch's
    // stray), and the hub took the short page for the last one: the rest of the backlog was
    // never replayed. Strays are written here with seqs below bob's real backlog.
    let Some(backend) = Backend::scale_out("strays") else { return };
    let chat = backend.start(&[]);
    let (conversation, mut alice) = chat.alice_and_bob().await;
    let ids: Vec<String> = (0..300).map(|n| format!("m{n}")).collect();
    let answers = alice.send_burst(&conversation, &ids, "backlog").await;
    assert_eq!(answers.acked.len(), 300, "{:?}", answers.refused.first());
    let uri = backend.get("RAMPART__MONGODB__URI").unwrap_or_default();
    let database = backend.get("RAMPART__MONGODB__DATABASE").unwrap_or_default();
    let client = mongodb::Client::with_uri_str(uri).await.expect("mongodb client");
    let deliveries = client.database(database).collection::<mongodb::bson::Document>("deliveries");
    let strays: Vec<mongodb::bson::Document> = (0..20)
        .map(|n| {
            mongodb::bson::doc! {
                "_id": format!("00000000-0000-0000-0000-{n:012}:bob"), "recipient": "bob",
                "message_id": format!("00000000-0000-0000-0000-{n:012}"), "seq": 1_i64 + n, "state": 0, "attempts": 0,
            }
        })
        .collect();
    deliveries.insert_many(strays).await.expect("strays");
    let mut bob = chat.ws("bob").await;
    let mut received = HashSet::new();
    while received.len() < 300 {
        let frame = bob.next_json().await;
        assert_eq!(frame["type"], "message", "{frame}");
        received.insert(frame["id"].as_str().unwrap_or_default().to_owned());
    }
    let acked: HashSet<String> = answers.acked.into_iter().map(|(_, id)| id).collect();
    assert_eq!(received, acked);
}

/// The chat store itself on `uri`/`database`, with users alice and bob and their conversation `c`.
async fn store_with_alice_and_bob(uri: &str, database: &str) -> rampart::storage::mongodb::MongoChat {
    let config = rampart::storage::mongodb::MongoConfig {
        uri: uri.to_owned(),
        database: database.to_owned(),
        ..Default::default()
    };
    let store = rampart::storage::mongodb::MongoChat::open(&config, false).await.expect("store");
    for user in ["alice", "bob"] {
        store.create_user(user.into(), user.into(), 1).await.expect("user");
    }
    let members = vec!["alice".to_owned(), "bob".to_owned()];
    store.create_conversation("c".into(), "t".into(), "alice".into(), members, 1).await.expect("store").expect("users");
    store
}

#[actix_rt::test]
async fn mongodb_recommitting_stored_messages_costs_a_few_requests_not_one_per_message() {
    // The root cause of a Kafka partition that stopped for good: after a restart the writer
    // re-reads records it had stored, and each duplicate cost an `update_many` of its own (a scan
    // of the deliveries on FerretDB), so a batch of 400 took longer than `storage_timeout`, and
    // every retry did it all again. Counted here in MongoDB requests through a proxy.
    let Some(backend) = Backend::scale_out("recommit") else { return };
    let uri = backend.get("RAMPART__MONGODB__URI").unwrap_or_default();
    let database = backend.get("RAMPART__MONGODB__DATABASE").unwrap_or_default();
    let upstream = uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap_or_default().to_owned();
    let proxy = crate::support::Proxy::start(&upstream).await;
    let through_proxy = format!("mongodb://{}/?directConnection=true", proxy.address.trim_start_matches("http://"));
    let store = store_with_alice_and_bob(&through_proxy, database).await;
    let batch: Vec<rampart::storage::NewMessage> = (0..400)
        .map(|n| rampart::chat::new_message("alice".into(), "c".into(), format!("m{n}"), format!("body {n}")))
        .collect();
    let batch: std::sync::Arc<[rampart::storage::NewMessage]> = batch.into();
    let first = store.commit_batch_inspected(batch.clone(), 10, Box::new(|_| {})).await.expect("first commit");
    assert!(first.iter().all(|o| matches!(o, rampart::storage::CommitOutcome::Stored { duplicate: false, .. })));
    let (before, started) = (proxy.mongodb_requests(), Instant::now());
    let again = store.commit_batch_inspected(batch, 20, Box::new(|_| {})).await.expect("second commit");
    let (requests, took) = (proxy.mongodb_requests() - before, started.elapsed());
    eprintln!("re-committing 400 stored messages: {requests} MongoDB requests, {took:?}");
    assert!(again.iter().all(|o| matches!(o, rampart::storage::CommitOutcome::Stored { duplicate: true, .. })));
    // insert_many, deliveries, the conversation's activity, members, the originals (plus a
    // heartbeat or two of the driver's monitor).
    assert!(requests <= 12, "{requests} requests to re-commit 400 stored messages");
}

#[actix_rt::test]
async fn mongodb_a_claim_finds_its_record_whatever_seq_the_record_carries() {
    // Suspect (confirmed): a commit that timed out while its retry ran could leave the delivery
    // records with the first attempt's seq and the message with the second's; claims matched
    // (recipient, seq), so that record was never marked in flight (and never requeued). The
    // state is made directly here: the record's seq differs from its message's.
    let Some(backend) = Backend::scale_out("claims") else { return };
    let uri = backend.get("RAMPART__MONGODB__URI").unwrap_or_default();
    let database = backend.get("RAMPART__MONGODB__DATABASE").unwrap_or_default();
    let store = store_with_alice_and_bob(uri, database).await;
    let message = rampart::chat::new_message("alice".into(), "c".into(), "1".into(), "hi".into());
    let committed =
        store.commit_batch_inspected(vec![message.clone()].into(), 10, Box::new(|_| {})).await.expect("commit");
    let rampart::storage::CommitOutcome::Stored { message: stored, .. } = &committed[0] else { panic!("not stored") };
    let client = mongodb::Client::with_uri_str(uri).await.expect("mongodb client");
    let deliveries = client.database(database).collection::<mongodb::bson::Document>("deliveries");
    let key = format!("{}:bob", stored.id);
    deliveries
        .update_one(mongodb::bson::doc! {"_id": &key}, mongodb::bson::doc! {"$set": {"seq": stored.seq - 1000}})
        .await
        .expect("first attempt's seq");
    let claim = rampart::storage::Claim { recipient: "bob".into(), message_id: stored.id.clone(), seq: stored.seq };
    store.mark_in_flight(vec![claim], 20).await.expect("claim");
    let record = deliveries.find_one(mongodb::bson::doc! {"_id": &key}).await.expect("read").expect("record");
    assert_eq!(record.get_i32("state").ok(), Some(1), "the claim marked the record in flight: {record}");
}

#[actix_rt::test]
async fn mongodb_a_nul_in_a_body_is_refused_alone_and_its_batch_neighbours_are_acked() {
    // Regression: FerretDB refuses a whole insert_many when one document holds U+0000
    // (PostgreSQL jsonb), so a NUL body failed every batch it joined, for as long as its sender
    // resent it. It is refused at the protocol now, before it can join a batch.
    let Some(backend) = Backend::scale_out("nul") else { return };
    let chat = backend.start(&[("RAMPART__PIPELINE__BATCH_MAX_DELAY", "50ms")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    let mut ws = chat.ws("alice").await;
    for n in 0..20 {
        let body = if n == 7 { "nul \u{0} inside".to_owned() } else { format!("fine {n}") };
        ws.send_message(&conversation, &format!("n{n}"), &body).await;
    }
    let mut acked = 0;
    let mut refused = Vec::new();
    for _ in 0..20 {
        let frame = ws.next_json().await;
        match frame["type"].as_str() {
            Some("ack") => acked += 1,
            _ => refused.push(frame),
        }
    }
    assert_eq!(acked, 19, "{refused:?}");
    assert_eq!((refused[0]["code"].as_str(), refused[0]["client_msg_id"].as_str()), (Some("invalid"), Some("n7")));
    assert_eq!(chat.all_messages("alice", &conversation).await.len(), 19);
    let (status, body) = chat.post_message(&chat.token("alice"), &conversation, "h", "over http \u{0}").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
}

#[actix_rt::test]
async fn mongodb_with_the_embedded_search_index_indexes_by_settled_seq() {
    // One process on MongoDB with its own FTS5 index: the indexer reads seqs older than
    // mongodb.index_settle.
    let Some(backend) = Backend::scale_out("fts") else { return };
    let chat = backend.start(&[("RAMPART__SEARCH__KIND", "sqlite"), ("RAMPART__MONGODB__INDEX_SETTLE", "500ms")]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    for n in 0..30 {
        let (status, _) =
            chat.post_message(&chat.token("alice"), &conversation, &format!("s{n}"), "settled words").await;
        assert_eq!(status, 201);
    }
    eventually("all 30 are searchable", Duration::from_secs(30), || async {
        let (status, body) =
            chat.http.get(&chat.url("/api/search?q=settled&limit=100"), Some(&chat.token("alice"))).await;
        status == 200 && body["hits"].as_array().map(Vec::len) == Some(30)
    })
    .await;
}

/// Every acked id (client id → message id) is stored exactly once, and nothing twice.
async fn assert_stored_once(chat: &ChatServer, user: &str, conversation: &str, acked: &HashMap<String, String>) {
    let stored = chat.all_messages(user, conversation).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for message in &stored {
        *counts.entry(message["id"].as_str().unwrap_or_default()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    for (client_msg_id, id) in acked {
        assert_eq!(counts.get(id.as_str()), Some(&1), "acked {client_msg_id} ({id}) not stored");
    }
}

#[actix_rt::test]
async fn mongodb_panics_in_every_chat_actor_during_load_lose_and_duplicate_nothing() {
    let Some(backend) = Backend::scale_out("chaos") else { return };
    let chat = backend.start(&[
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__WS__RATE_LIMIT_PER_SEC", "100000"),
        ("RAMPART__WS__BURST", "100000"),
    ]);
    let (conversation, mut alice) = chat.alice_and_bob().await;
    let actors = [
        "/root/chat/validator",
        "/root/chat/batch_writer",
        "/root/chat/delivery",
        "/root/chat/indexer",
        "/root/chat/cleanup",
        "/root/chat/dead_letters",
    ];
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut refused = Vec::new();
    let mut panicked: HashSet<&str> = HashSet::new();
    for round in 0..12 {
        let ids: Vec<String> = (0..50).map(|n| format!("r{round}-{n}")).collect();
        let actor = actors[round % actors.len()];
        // The panic lands while the burst is in the pipeline.
        let send = alice.send_burst(&conversation, &ids, "under fire");
        let panic_url = chat.url("/admin/chaos/panic");
        let panic = chat.http.post(&panic_url, Some(ADMIN_TOKEN), json!({"actor": actor}));
        let (answers, (status, body)) = futures_util::future::join(send, panic).await;
        if status == 202 {
            panicked.insert(actor);
        } else {
            assert_eq!(status, 409, "{body}"); // restarting at that instant
        }
        acked.extend(answers.acked);
        refused.extend(answers.refused);
    }
    assert!(panicked.len() >= 4, "most actors were made to panic: {panicked:?}");
    for refusal in &refused {
        assert_eq!(refusal.code, "unavailable", "only retryable refusals: {refusal:?}");
    }
    assert!(acked.len() >= 500, "{} acked, refused: {:?}", acked.len(), &refused[..refused.len().min(5)]);
    assert_stored_once(&chat, "bob", &conversation, &acked).await;
    // Every stored message is searchable once, and the restarts are visible.
    let stored = chat.all_messages("bob", &conversation).await.len() as u64;
    eventually("the index holds every stored message once", Duration::from_secs(60), || async {
        backend.indexed(&chat.http).await == stored
    })
    .await;
    chat.assert_restarted(panicked).await;
}

#[actix_rt::test]
async fn mongodb_an_outage_refuses_sends_acks_nothing_falsely_and_resumes_by_itself() {
    let Some(backend) = Backend::scale_out("outage") else { return };
    let (proxy, chat) = backend
        .start_behind_mongodb_proxy(&[("RAMPART__WS__RATE_LIMIT_PER_SEC", "100000"), ("RAMPART__WS__BURST", "100000")])
        .await;
    let (conversation, mut alice) = chat.alice_and_bob().await;

    let mut acked: HashMap<String, String> = HashMap::new();
    let mut refused: Vec<String> = Vec::new();
    let mut codes: HashMap<String, usize> = HashMap::new();
    let started = Instant::now();
    let (down_at, up_at) = (Duration::from_secs(2), Duration::from_secs(12));
    let mut saw_warn = false;
    let mut round = 0;
    // Load before, during and after a 10 s outage.
    while started.elapsed() < up_at + Duration::from_secs(3) {
        proxy.set_up(!(down_at..up_at).contains(&started.elapsed()));
        let ids: Vec<String> = (0..20).map(|n| format!("o{round}-{n}")).collect();
        round += 1;
        let answers = alice.send_burst(&conversation, &ids, "through the outage").await;
        acked.extend(answers.acked);
        for refusal in answers.refused {
            *codes.entry(refusal.code.clone()).or_default() += 1;
            refused.push(refusal.client_msg_id);
        }
        if !saw_warn && (down_at..up_at).contains(&started.elapsed()) {
            let (status, body) = chat.http.get(&chat.url("/ready"), None).await;
            saw_warn = status == 200 && body["checks"]["circuit:storage"][0]["observedValue"] == "open";
        }
    }
    proxy.set_up(true);
    eprintln!("outage: {} acked, refused by code {codes:?}, {round} rounds", acked.len());
    assert!(!refused.is_empty(), "the outage was seen by senders");
    assert_eq!(codes.keys().collect::<Vec<_>>(), vec!["unavailable"], "refusals tell the client to resend");
    assert!(saw_warn, "readiness showed the storage breaker open during the outage");

    // The pipeline resumes by itself; resending the refused ones stores each exactly once.
    eventually("sends are acked again", Duration::from_secs(60), || async {
        let (status, _) = chat.post_message(&chat.token("alice"), &conversation, "after", "after the outage").await;
        status == 201
    })
    .await;
    // As a client would: resend each refused message until acked (503 while the breaker is
    // still half-open and its trial calls are taken).
    let token = chat.token("alice");
    for client_msg_id in &refused {
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            let (status, ack) = chat.post_message(&token, &conversation, client_msg_id, "resent").await;
            if status == 201 {
                break ack["id"].as_str().unwrap_or_default().to_owned();
            }
            assert!(status == 503 && Instant::now() < deadline, "{status} {ack}");
            tokio::time::sleep(Duration::from_millis(100)).await; // poll: Retry-After, shortened
        };
        acked.insert(client_msg_id.clone(), id);
    }
    assert_stored_once(&chat, "bob", &conversation, &acked).await;
    let stored = chat.all_messages("bob", &conversation).await;
    assert_eq!(stored.len(), acked.len() + 1, "nothing stored but what was acked (and 'after')");
}

#[actix_rt::test]
async fn mongodb_two_processes_on_one_database_serve_one_history_and_backlog() {
    let Some(backend) = Backend::scale_out("two") else { return };
    let first = backend.start(&[]);
    let second = backend.start(&[]);
    first.create_user("alice").await;
    second.create_user("bob").await;
    let conversation = first.conversation("alice", &["bob"]).await;
    let mut alice = first.ws("alice").await;
    for n in 0..10 {
        alice.send_message(&conversation, &format!("a{n}"), &format!("from the first process {n}")).await;
        assert_eq!(alice.next_json().await["type"], "ack");
    }
    let (status, ack) = second.post_message(&second.token("bob"), &conversation, "b0", "from the second").await;
    assert_eq!(status, 201, "{ack}");
    // One history, newest first, on both.
    for server in [&first, &second] {
        let messages = server.all_messages("alice", &conversation).await;
        assert_eq!(messages.len(), 11);
        assert_eq!(messages[0]["body"], "from the second");
        assert_eq!(messages[10]["body"], "from the first process 0");
    }
    // Bob connects to the second process: alice's messages (sent through the first) are his
    // backlog there, in order.
    let mut bob = second.ws("bob").await;
    let mut received = Vec::new();
    for _ in 0..10 {
        let frame = bob.next_json().await;
        assert_eq!(frame["type"], "message", "{frame}");
        received.push(frame["body"].as_str().unwrap_or_default().to_owned());
        bob.send_json(json!({"type": "delivered", "id": frame["id"]})).await;
    }
    let expected: Vec<String> = (0..10).map(|n| format!("from the first process {n}")).collect();
    assert_eq!(received, expected);
    // Users and conversations are shared too.
    let (status, listing) = first.http.get(&first.url("/api/conversations"), Some(&first.token("bob"))).await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["conversations"][0]["id"], conversation.as_str(), "{listing}");
    assert_eq!(listing["conversations"][0]["latest_message"]["body"], "from the second", "{listing}");
}

/// The stages of a query plan, flattened (`stage` values, with `indexName` where present).
fn stages(plan: &Value, out: &mut Vec<String>) {
    match plan {
        Value::Object(map) => {
            if let Some(stage) = map.get("stage").and_then(Value::as_str) {
                let index = map.get("indexName").and_then(Value::as_str).unwrap_or("");
                out.push(format!("{stage}:{index}").trim_end_matches(':').to_owned());
            }
            map.values().for_each(|value| stages(value, out));
        }
        Value::Array(items) => items.iter().for_each(|value| stages(value, out)),
        _ => {}
    }
}

#[actix_rt::test]
async fn mongodb_operator_rooms_are_one_list_for_every_process() {
    let Some(backend) = Backend::scale_out("rooms") else { return };
    let config = rampart::storage::mongodb::MongoConfig {
        uri: backend.get("RAMPART__MONGODB__URI").unwrap_or_default().to_owned(),
        database: backend.get("RAMPART__MONGODB__DATABASE").unwrap_or_default().to_owned(),
        ..Default::default()
    };
    // Two handles on one database, as two rampart processes of a deployment have.
    let one = rampart::storage::mongodb::MongoChat::open(&config, true).await.expect("open");
    let other = rampart::storage::mongodb::MongoChat::open(&config, true).await.expect("open");
    assert!(one.create_room("town-hall".into(), 1).await.expect("create"));
    assert!(!other.create_room("town-hall".into(), 2).await.expect("create again"), "one room, created once");
    assert!(other.create_room("all-hands".into(), 3).await.expect("create"));
    assert_eq!(one.rooms().await.expect("rooms"), vec!["all-hands".to_owned(), "town-hall".to_owned()]);
    assert!(other.room_exists("town-hall".into()).await.expect("exists"));
    assert!(other.delete_room("town-hall".into()).await.expect("delete"));
    assert!(!one.delete_room("town-hall".into()).await.expect("delete again"));
    assert!(!one.room_exists("town-hall".into()).await.expect("exists"));
}

#[actix_rt::test]
async fn mongodb_history_and_membership_queries_use_their_indexes() {
    let Some(backend) = Backend::scale_out("explain") else { return };
    let chat = backend.start(&[]);
    chat.create_user("alice").await;
    let conversation = chat.conversation("alice", &[]).await;
    for n in 0..20 {
        let (status, _) = chat.post_message(&chat.token("alice"), &conversation, &format!("e{n}"), "plan").await;
        assert_eq!(status, 201);
    }
    let config = rampart::storage::mongodb::MongoConfig {
        uri: backend.get("RAMPART__MONGODB__URI").unwrap_or_default().to_owned(),
        database: backend.get("RAMPART__MONGODB__DATABASE").unwrap_or_default().to_owned(),
        ..Default::default()
    };
    let store = rampart::storage::mongodb::MongoChat::open(&config, true).await.expect("open");
    let info = store.build_info().await.expect("buildInfo");
    let (history, membership) = store.explain_reads(&conversation, "alice").await.expect("explain");
    if let Some(version) = info.get("ferretdbVersion") {
        // FerretDB 1.24 on PostgreSQL makes every filter a jsonb containment test that its
        // btree indexes cannot serve (a sequential scan) and sorts in memory: index use cannot
        // be had there. What can be checked: the filters are simple enough to be pushed down to
        // PostgreSQL (not every document shipped to FerretDB and filtered in Go). On MongoDB
        // the index assertions below apply.
        eprintln!(
            "FerretDB {version}: index-use check not applicable (no index can serve its filters)\n\
             history plan {history}\nmembership plan {membership}"
        );
        assert_eq!(history["filterPushdown"], true, "{history}");
        assert_eq!(membership["filterPushdown"], true, "{membership}");
        return;
    }
    let mut history_stages = Vec::new();
    stages(&history["queryPlanner"]["winningPlan"], &mut history_stages);
    assert!(history_stages.contains(&"IXSCAN:conversation_created_at_id".to_owned()), "{history_stages:?}");
    assert!(!history_stages.iter().any(|s| s == "COLLSCAN" || s == "SORT"), "{history_stages:?}");
    let mut membership_stages = Vec::new();
    stages(&membership["queryPlanner"]["winningPlan"], &mut membership_stages);
    assert!(membership_stages.contains(&"IXSCAN:members_activity_id".to_owned()), "{membership_stages:?}");
    assert!(!membership_stages.iter().any(|s| s == "COLLSCAN" || s == "SORT"), "{membership_stages:?}");
}
