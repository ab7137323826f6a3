//! `/api/conversations/{id}/messages` and `/api/search`: sending, history and full-text search
//! over HTTP. The sender of a message is always the token's subject; only members read or write
//! a conversation.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{authenticate, require_member};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::chat::protocol::{validate_body, validate_client_msg_id};
use crate::chat::Ack;
use crate::resilience::Outcome;
use crate::storage::{ms_to_rfc3339, StorageError, StoredMessage};

const MAX_HISTORY_PAGE: u32 = 200;
const DEFAULT_HISTORY_PAGE: u32 = 50;
const MAX_SEARCH_HITS: u32 = 100;
const DEFAULT_SEARCH_HITS: u32 = 20;
const MAX_QUERY_CHARS: usize = 256;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/api/conversations/{id}/messages").get(history).post(post_message))
        .service(web::resource("/api/search").get(search));
}

/// A message to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PostMessage {
    /// The sender's own id for the message: resending it returns the original ack and stores
    /// nothing. No U+0000.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\x00]*$")]
    client_msg_id: String,
    /// 1 to 16384 bytes of UTF-8, no U+0000.
    #[schema(min_length = 1, pattern = r"^[^\x00]*$")]
    body: String,
}

/// Sends a message; answers once it is committed to disk.
#[utoipa::path(
    post, path = "/api/conversations/{id}/messages", tag = "chat",
    security(("user_jwt" = [])),
    params(("id" = String, Path, description = "Conversation id")),
    request_body = PostMessage,
    responses(
        (status = 201, description = "Stored (or stored before, for a resend)", body = Ack),
        (status = 400, description = "Invalid `client_msg_id` or `body`, or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not a member (or no such conversation)", body = ErrorBody),
        (status = 422, description = "`unknown_sender` or `rejected` (dead-lettered)", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "Not stored (pipeline or storage unavailable): send again", body = ErrorBody),
    )
)]
pub(super) async fn post_message(
    request: HttpRequest,
    state: web::Data<AppState>,
    conversation: web::Path<String>,
    body: web::Json<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let chat = &state.chat;
    let sender = authenticate(&request, &state.tokens, false).await?;
    let PostMessage { client_msg_id, body } = body.into_inner();
    validate_client_msg_id(&client_msg_id).map_err(ApiError::BadRequest)?;
    validate_body(&body).map_err(|(_, message)| ApiError::BadRequest(message))?;
    let conversation = conversation.into_inner();
    let message = crate::chat::new_message(sender, conversation, client_msg_id, body);
    let ack: Ack = chat.submit(message).await.map_err(ApiError::Send)?;
    Ok(HttpResponse::Created().json(ack))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    /// A message id of this conversation: the page holds older messages (`404` when it is not
    /// a message of this conversation).
    #[param(format = Uuid)]
    before: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// A stored message.
#[derive(Serialize, ToSchema)]
pub(super) struct MessageBody {
    id: String,
    conversation: String,
    sender: String,
    body: String,
    /// RFC 3339.
    created_at: String,
}

impl From<&StoredMessage> for MessageBody {
    fn from(message: &StoredMessage) -> Self {
        Self {
            id: message.id.clone(),
            conversation: message.conversation.clone(),
            sender: message.sender.clone(),
            body: message.body.clone(),
            created_at: ms_to_rfc3339(message.created_at_ms),
        }
    }
}

/// A page of history, newest first.
#[derive(Serialize, ToSchema)]
pub(super) struct HistoryPage {
    messages: Vec<MessageBody>,
}

/// A conversation's messages, newest first.
#[utoipa::path(
    get, path = "/api/conversations/{id}/messages", tag = "chat",
    security(("user_jwt" = [])),
    params(("id" = String, Path, description = "Conversation id"), HistoryQuery),
    responses(
        (status = 200, description = "One page", body = HistoryPage),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not a member (or no such conversation)", body = ErrorBody),
        (status = 404, description = "`before` is not a message of this conversation", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(super) async fn history(
    request: HttpRequest,
    state: web::Data<AppState>,
    conversation: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<web::Json<HistoryPage>, ApiError> {
    let chat = &state.chat;
    let user = authenticate(&request, &state.tokens, false).await?;
    let conversation = conversation.into_inner();
    let HistoryQuery { before, limit } = query.into_inner();
    let limit = page_limit(limit, DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE)?;
    require_member(chat, &conversation, &user).await?;
    let messages = chat
        .store
        .history(conversation, before, limit)
        .await?
        .ok_or_else(|| ApiError::NotFound("`before` is not a message of this conversation".into()))?;
    Ok(web::Json(HistoryPage { messages: messages.iter().map(MessageBody::from).collect() }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// Words that must all match.
    #[param(min_length = 1, max_length = 256)]
    q: String,
    /// Only this conversation (you must be a member).
    conversation: Option<String>,
    /// Most hits (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// A search hit: a message plus its body with matches marked.
#[derive(Serialize, ToSchema)]
pub(super) struct SearchHitBody {
    id: String,
    conversation: String,
    sender: String,
    body: String,
    /// RFC 3339.
    created_at: String,
    /// The body with matched terms wrapped in `<mark>`…`</mark>`.
    highlight: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct SearchResults {
    hits: Vec<SearchHitBody>,
}

/// Full-text search over the conversations the caller belongs to.
#[utoipa::path(
    get, path = "/api/search", tag = "chat",
    security(("user_jwt" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "Hits, best first", body = SearchResults),
        (status = 400, description = "Empty or too long `q`, bad `limit`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not a member of `conversation`", body = ErrorBody),
        (status = 503, description = "Search unavailable (circuit open) or storage unavailable", body = ErrorBody),
    )
)]
pub(super) async fn search(
    request: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<SearchQuery>,
) -> Result<web::Json<SearchResults>, ApiError> {
    let chat = &state.chat;
    let user = authenticate(&request, &state.tokens, false).await?;
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
    // The engine refusing one user's query (it answered) says nothing about its health: such
    // failures must not open the breaker for every user.
    let healthy = matches!(result, Ok(_) | Err(StorageError::Refused(_)));
    chat.search_breaker.record(permit, if healthy { Outcome::Success } else { Outcome::Failure });
    let hits = result
        .map_err(|error| match error {
            StorageError::Refused(reason) => {
                tracing::warn!(reason, "the search engine refused a search");
                ApiError::BadRequest(format!("the search engine refused this search: {reason}"))
            }
            error => ApiError::from(error),
        })?
        .into_iter()
        .map(|hit| SearchHitBody {
            id: hit.id,
            conversation: hit.conversation,
            sender: hit.sender,
            body: hit.body,
            created_at: ms_to_rfc3339(hit.created_at_ms),
            highlight: hit.highlight,
        })
        .collect();
    Ok(web::Json(SearchResults { hits }))
}

/// `limit` (or `default`), refused outside 1..=`max`.
pub(super) fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadRequest(format!("limit must be 1 to {max}")))
    }
}
