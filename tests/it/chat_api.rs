//! The HTTP API a client needs besides sending: who am I, my conversations (most recent first,
//! paginated, with members and the latest message), one conversation; and the error contract
//! (405 with `Allow`, 404 for a `before` that is not in the conversation, 422 for members that
//! are not users).

use serde_json::json;

use crate::chat_client::{ChatServer, ADMIN_TOKEN};

#[actix_rt::test]
async fn me_answers_who_the_token_belongs_to() {
    let chat = ChatServer::start(&[]);
    chat.create_user("alice").await;
    let (status, me) = chat.http.get(&chat.url("/api/me"), Some(&chat.token("alice"))).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!((me["id"].as_str(), me["display_name"].as_str()), (Some("alice"), Some("alice")));
    assert!(me["created_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{me}");
    let (status, body) = chat.http.get(&chat.url("/api/me"), Some(&chat.token("nobody"))).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "a valid token, no user: {body}");
    let (status, _) = chat.http.get(&chat.url("/api/me"), None).await;
    assert_eq!(status, 401);
}

#[actix_rt::test]
async fn my_conversations_are_listed_by_recent_activity_in_pages() {
    let chat = ChatServer::start(&[]);
    for user in ["alice", "bob", "carol"] {
        chat.create_user(user).await;
    }
    let first = chat.conversation("alice", &["bob"]).await;
    let second = chat.conversation("alice", &["carol"]).await;
    let third = chat.conversation("bob", &["alice", "carol"]).await;
    // Activity moves the first conversation to the top.
    let alice = chat.token("alice");
    let (status, ack) = chat.post_message(&alice, &first, "c-1", "latest words").await;
    assert_eq!(status, 201, "{ack}");

    let (status, page) = chat.http.get(&chat.url("/api/conversations?limit=2"), Some(&alice)).await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["conversations"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first.as_str(), third.as_str()], "most recent activity first: {page}");
    let top = &page["conversations"][0];
    assert_eq!(top["members"], json!(["alice", "bob"]));
    assert_eq!(top["latest_message"]["id"], ack["id"]);
    assert_eq!(top["latest_message"]["body"], "latest words");
    assert_eq!(top["last_activity_at"], top["latest_message"]["created_at"]);
    assert!(page["conversations"][1]["latest_message"].is_null(), "no messages yet: {page}");
    let next = page["next_before"].as_str().expect("a next page").to_owned();

    let (status, rest) =
        chat.http.get(&chat.url(&format!("/api/conversations?limit=2&before={next}")), Some(&alice)).await;
    assert_eq!(status, 200, "{rest}");
    let ids: Vec<&str> = rest["conversations"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str()]);
    assert!(rest["next_before"].is_null(), "last page: {rest}");

    // Only your own.
    let (_, carols) = chat.http.get(&chat.url("/api/conversations"), Some(&chat.token("carol"))).await;
    let ids: Vec<&str> =
        carols["conversations"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [third.as_str(), second.as_str()]);

    for bad in ["?limit=0", "?limit=101", "?before=nonsense", "?color=red"] {
        let (status, body) = chat.http.get(&chat.url(&format!("/api/conversations{bad}")), Some(&alice)).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{bad}: {body}");
    }
}

#[actix_rt::test]
async fn one_conversation_is_for_its_members_only() {
    let chat = ChatServer::start(&[]);
    for user in ["alice", "bob", "mallory"] {
        chat.create_user(user).await;
    }
    let conversation = chat.conversation("alice", &["bob"]).await;
    let url = chat.url(&format!("/api/conversations/{conversation}"));
    let (status, body) = chat.http.get(&url, Some(&chat.token("bob"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["id"].as_str(), body["title"].as_str()), (Some(conversation.as_str()), Some("t")));
    assert_eq!((body["created_by"].as_str(), body["members"].clone()), (Some("alice"), json!(["alice", "bob"])));
    let (status, body) = chat.http.get(&url, Some(&chat.token("mallory"))).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = chat.http.get(&chat.url("/api/conversations/no-such-thing"), Some(&chat.token("bob"))).await;
    assert_eq!(status, 403, "existence is not revealed");
}

#[actix_rt::test]
async fn error_contract_for_methods_cursors_and_unknown_members() {
    let chat = ChatServer::start(&[]);
    chat.create_user("alice").await;
    let alice = chat.token("alice");
    // Regression: a known path with an unsupported method was an empty 405.
    let (status, body) = chat.http.request(awc::http::Method::DELETE, &chat.url("/api/me"), Some(&alice), None).await;
    assert_eq!((status, body["error"].as_str()), (405, Some("method_not_allowed")), "{body}");
    let request = awc::Client::new().put(chat.url("/admin/actors"));
    let response = request.insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405, "inside the admin scope too");
    assert_eq!(response.headers().get("allow").unwrap(), "GET");

    let (status, body) =
        chat.http.post(&chat.url("/api/conversations"), Some(&alice), json!({"members": ["ghost", "phantom"]})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("unknown_members")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("ghost, phantom"), "{body}");

    let conversation = chat.conversation("alice", &[]).await;
    let query = "?before=0f8fad5b-d9cb-469f-a165-70867728950e";
    let (status, body) = chat.history("alice", &conversation, query).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
}
