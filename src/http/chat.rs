//! `/api/*`: users, conversations, messages and search over HTTP; `/admin/dead-letters`.
//!
//! Every `/api` route except `POST /api/users` (admin token) authenticates a user by JWT; the
//! sender of a message is always the token's subject. Only members see or write a conversation.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{bearer_token, check_admin_token};
use super::error::ApiError;
use super::AppState;
use crate::auth::validate_user_id;
use crate::chat::protocol::{validate_body, validate_client_msg_id};
use crate::chat::{message_id, Chat, SendError};
use crate::resilience::Outcome;
use crate::storage::{ms_to_rfc3339, now_ms, DeadLetterKind, NewMessage, StoredMessage};

/// Most members a conversation may be created with.
const MAX_MEMBERS: usize = 1000;
const MAX_TITLE_CHARS: usize = 200;
const MAX_HISTORY_PAGE: u32 = 200;
const DEFAULT_HISTORY_PAGE: u32 = 50;
const MAX_SEARCH_HITS: u32 = 100;
const DEFAULT_SEARCH_HITS: u32 = 20;
const MAX_QUERY_CHARS: usize = 256;
const MAX_DEAD_LETTERS_LISTED: u32 = 1000;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/users", web::post().to(create_user))
        .route("/api/conversations", web::post().to(create_conversation))
        .route("/api/conversations/{id}/messages", web::post().to(post_message))
        .route("/api/conversations/{id}/messages", web::get().to(history))
        .route("/api/search", web::get().to(search));
}

/// The user a request is made by: a valid `Authorization: Bearer <jwt>`, or (`allow_query`, for
/// browser WebSockets, which cannot set headers) `?token=<jwt>`.
pub(super) async fn authenticate(request: &HttpRequest, chat: &Chat, allow_query: bool) -> Result<String, ApiError> {
    let from_query =
        || web::Query::<TokenQuery>::from_query(request.query_string()).ok().and_then(|query| query.into_inner().token);
    let token = match bearer_token(request.headers()) {
        Some(token) => token.to_owned(),
        None if allow_query => from_query().ok_or(ApiError::Unauthorized)?,
        None => return Err(ApiError::Unauthorized),
    };
    chat.tokens.verify(&token).await.map_err(|error| {
        tracing::debug!(%error, "token refused");
        ApiError::Unauthorized
    })
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    id: String,
    display_name: Option<String>,
}

async fn create_user(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    check_admin_token(request.headers(), &state.config.admin.token)?;
    let NewUser { id, display_name } = body.into_inner();
    validate_user_id(&id).map_err(ApiError::BadRequest)?;
    let display_name = display_name.unwrap_or_else(|| id.clone());
    if display_name.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::BadRequest(format!("display_name must be at most {MAX_TITLE_CHARS} characters")));
    }
    let chat = &state.chat;
    if !chat.store.create_user(id.clone(), display_name.clone(), now_ms()).await? {
        return Err(ApiError::Conflict(format!("user {id} already exists")));
    }
    chat.directory.note_user(&id);
    crate::action!("api", "user created", user = id);
    Ok(HttpResponse::Created().json(json!({ "id": id, "display_name": display_name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewConversation {
    members: Vec<String>,
    #[serde(default)]
    title: String,
}

async fn create_conversation(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<NewConversation>,
) -> Result<HttpResponse, ApiError> {
    let chat = &state.chat;
    let creator = authenticate(&request, chat, false).await?;
    let NewConversation { members, title } = body.into_inner();
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::BadRequest(format!("title must be at most {MAX_TITLE_CHARS} characters")));
    }
    let mut all = vec![creator.clone()];
    for member in members {
        validate_user_id(&member).map_err(|error| ApiError::BadRequest(format!("member {member:?}: {error}")))?;
        if !all.contains(&member) {
            all.push(member);
        }
    }
    if all.len() > MAX_MEMBERS {
        return Err(ApiError::BadRequest(format!("a conversation has at most {MAX_MEMBERS} members")));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let created = chat.store.create_conversation(id.clone(), title.clone(), creator, all.clone(), now_ms()).await?;
    if let Err(unknown) = created {
        return Err(ApiError::BadRequest(format!("unknown members: {}", unknown.join(", "))));
    }
    chat.directory.note_conversation(&id, all.clone());
    Ok(HttpResponse::Created().json(json!({ "id": id, "title": title, "members": all })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    client_msg_id: String,
    body: String,
}

async fn post_message(
    request: HttpRequest,
    state: web::Data<AppState>,
    conversation: web::Path<String>,
    body: web::Json<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let chat = &state.chat;
    let sender = authenticate(&request, chat, false).await?;
    let PostMessage { client_msg_id, body } = body.into_inner();
    validate_client_msg_id(&client_msg_id).map_err(ApiError::BadRequest)?;
    validate_body(&body).map_err(|(_, message)| ApiError::BadRequest(message))?;
    let conversation = conversation.into_inner();
    let message = NewMessage { id: message_id(&sender, &client_msg_id), conversation, sender, client_msg_id, body };
    let ack = chat.submit(message).await.map_err(ApiError::Send)?;
    Ok(HttpResponse::Created().json(ack))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    before: Option<String>,
    limit: Option<u32>,
}

async fn history(
    request: HttpRequest,
    state: web::Data<AppState>,
    conversation: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let chat = &state.chat;
    let user = authenticate(&request, chat, false).await?;
    let conversation = conversation.into_inner();
    let HistoryQuery { before, limit } = query.into_inner();
    let limit = page_limit(limit, DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE)?;
    require_member(chat, &conversation, &user).await?;
    let messages = chat
        .store
        .history(conversation, before, limit)
        .await?
        .ok_or_else(|| ApiError::BadRequest("`before` is not a message of this conversation".into()))?;
    let messages: Vec<Value> = messages.iter().map(message_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "messages": messages })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: String,
    conversation: Option<String>,
    limit: Option<u32>,
}

async fn search(
    request: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    let chat = &state.chat;
    let user = authenticate(&request, chat, false).await?;
    let SearchQuery { q, conversation, limit } = query.into_inner();
    let limit = page_limit(limit, DEFAULT_SEARCH_HITS, MAX_SEARCH_HITS)?;
    if q.trim().is_empty() || q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::BadRequest(format!("q must be 1 to {MAX_QUERY_CHARS} characters")));
    }
    let scope = match conversation {
        Some(conversation) => {
            require_member(chat, &conversation, &user).await?;
            vec![conversation]
        }
        None => chat.store.conversations_of(user).await?,
    };
    let permit = chat
        .search_breaker
        .try_acquire()
        .map_err(|_| ApiError::Unavailable("search is unavailable (circuit open); try again later".into()))?;
    let result = chat.search.search(q, scope, limit).await;
    chat.search_breaker.record(permit, if result.is_ok() { Outcome::Success } else { Outcome::Failure });
    let hits: Vec<Value> = result?
        .into_iter()
        .map(|hit| {
            json!({
                "id": hit.id,
                "conversation": hit.conversation,
                "sender": hit.sender,
                "body": hit.body,
                "created_at": ms_to_rfc3339(hit.created_at_ms),
                "highlight": hit.highlight,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "hits": hits })))
}

/// `limit` (or `default`), refused outside 1..=`max`.
fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadRequest(format!("limit must be 1 to {max}")))
    }
}

async fn require_member(chat: &Chat, conversation: &str, user: &str) -> Result<(), ApiError> {
    if chat.directory.is_member(conversation, user).await? {
        Ok(())
    } else {
        Err(ApiError::Forbidden("not a member of this conversation (or it does not exist)".into()))
    }
}

fn message_json(message: &StoredMessage) -> Value {
    json!({
        "id": message.id,
        "conversation": message.conversation,
        "sender": message.sender,
        "body": message.body,
        "created_at": ms_to_rfc3339(message.created_at_ms),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeadLetterQuery {
    limit: Option<u32>,
}

pub(super) async fn list_dead_letters(
    state: web::Data<AppState>,
    query: web::Query<DeadLetterQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_DEAD_LETTERS_LISTED);
    let letters = state.chat.store.dead_letters(limit).await?;
    let letters: Vec<Value> = letters
        .iter()
        .map(|letter| {
            json!({
                "id": letter.id,
                "kind": letter.kind,
                "reason": letter.reason,
                "attempts": letter.attempts,
                "payload": letter.payload,
                "at": ms_to_rfc3339(letter.at_ms),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "dead_letters": letters })))
}

/// Re-injects one dead letter: a message goes through the pipeline again (same id, so it is
/// stored at most once); a delivery goes back to pending. Removed from the list once accepted.
pub(super) async fn retry_dead_letter(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let chat = &state.chat;
    let id = id.into_inner();
    let letter =
        chat.store.dead_letter(id.clone()).await?.ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    crate::action!("admin", "dead letter retry", id = id);
    let outcome = match letter.kind {
        DeadLetterKind::Message | DeadLetterKind::Quarantine => {
            let message: NewMessage = serde_json::from_value(letter.payload.clone())
                .map_err(|_| ApiError::Conflict("this dead letter's payload is not a replayable message".into()))?;
            match chat.submit(message).await {
                Ok(ack) => json!({ "retried": id, "ack": ack }),
                // Refused again: it is back in dead letters under a new id.
                Err(error @ (SendError::Rejected(_) | SendError::UnknownSender(_))) => {
                    chat.store.remove_dead_letter(id.clone()).await?;
                    return Err(ApiError::Send(error));
                }
                Err(error) => return Err(ApiError::Send(error)),
            }
        }
        DeadLetterKind::Delivery => {
            let field = |name: &str| letter.payload.get(name).and_then(Value::as_str).map(str::to_owned);
            let (Some(recipient), Some(message_id)) = (field("recipient"), field("message_id")) else {
                return Err(ApiError::Conflict("this dead letter's payload is not a delivery".into()));
            };
            if !chat.store.requeue_delivery(recipient.clone(), message_id).await? {
                return Err(ApiError::Conflict("the delivery record no longer exists".into()));
            }
            chat.redeliver(recipient.clone());
            json!({ "retried": id, "requeued_for": recipient })
        }
    };
    chat.store.remove_dead_letter(id).await?;
    Ok(HttpResponse::Ok().json(outcome))
}
