//! `/api/*`: users and conversations over HTTP (messages and search: `messages.rs`);
//! `/admin/dead-letters`.
//!
//! Every `/api` route except `POST /api/users` (admin token) authenticates a user by JWT; the
//! sender of a message is always the token's subject. Only members see or write a conversation.
//! Request and response bodies are the typed structs below; `openapi.rs` documents them from
//! these same types, so the contract cannot drift from the code.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{authenticate, check_admin_token, require_member};
use super::error::{ApiError, ErrorBody};
use super::messages::{page_limit, MessageBody};
use super::AppState;
use crate::auth::validate_user_id;
use crate::chat::Ack;
use crate::chat::SendError;
use crate::storage::{ms_to_rfc3339, now_ms, ConversationCursor, ConversationSummary, DeadLetterKind, NewMessage};

/// Most members a conversation may be created with.
const MAX_MEMBERS: usize = 1000;
const MAX_TITLE_CHARS: usize = 200;
const MAX_DEAD_LETTERS_LISTED: u32 = 1000;
const DEFAULT_DEAD_LETTERS_LISTED: u32 = 100;
const MAX_CONVERSATIONS_PAGE: u32 = 100;
const DEFAULT_CONVERSATIONS_PAGE: u32 = 50;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/api/me").get(me))
        .service(web::resource("/api/users").post(create_user))
        .service(web::resource("/api/conversations").get(list_conversations).post(create_conversation))
        .service(web::resource("/api/conversations/{id}").get(get_conversation));
}

/// The operator routes of this file, inside the `/admin` scope (which checks the admin token).
pub fn admin_routes(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/dead-letters").get(list_dead_letters))
        .service(web::resource("/dead-letters/{id}/retry").post(retry_dead_letter));
}

/// A user to provision.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.@-]+$")]
    id: String,
    /// Defaults to the id.
    #[schema(max_length = 200)]
    display_name: Option<String>,
}

/// A user.
#[derive(Serialize, ToSchema)]
pub(super) struct UserBody {
    id: String,
    display_name: String,
}

/// The user a token belongs to.
#[derive(Serialize, ToSchema)]
pub(super) struct MeBody {
    id: String,
    display_name: String,
    /// RFC 3339.
    created_at: String,
}

/// Who the bearer of this token is. A valid token for a user not provisioned yet is `404`.
#[utoipa::path(
    get, path = "/api/me", tag = "chat",
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The token's user", body = MeBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "The token is valid but its user does not exist", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(super) async fn me(request: HttpRequest, state: web::Data<AppState>) -> Result<web::Json<MeBody>, ApiError> {
    let chat = &state.chat;
    let user = authenticate(&request, &state.tokens, false).await?;
    let record = chat
        .store
        .user(user.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {user} is not provisioned (POST /api/users)")))?;
    Ok(web::Json(MeBody {
        id: record.id,
        display_name: record.display_name,
        created_at: ms_to_rfc3339(record.created_at_ms),
    }))
}

/// Provisions a user (admin token).
#[utoipa::path(
    post, path = "/api/users", tag = "chat",
    security(("admin_token" = [])),
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = UserBody),
        (status = 400, description = "Invalid id or display name, or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(super) async fn create_user(
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
    if let Err(message) = crate::chat::protocol::no_nul("display_name", &display_name) {
        return Err(ApiError::BadRequest(message));
    }
    let chat = &state.chat;
    if !chat.store.create_user(id.clone(), display_name.clone(), now_ms()).await? {
        return Err(ApiError::Conflict(format!("user {id} already exists")));
    }
    chat.directory.note_user(&id);
    crate::action!("api", "user created", user = id);
    Ok(HttpResponse::Created().json(UserBody { id, display_name }))
}

/// A conversation to create; the creator is always a member.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewConversation {
    /// User ids besides the creator (at most 1000 members in all).
    #[schema(max_items = 999)]
    members: Vec<UserId>,
    /// At most 200 characters, no U+0000.
    #[serde(default)]
    #[schema(max_length = 200, pattern = r"^[^\x00]*$")]
    title: String,
}

/// A user id: 1 to 64 of `[A-Za-z0-9_.@-]`.
#[derive(Deserialize)]
#[serde(transparent)]
pub(super) struct UserId(String);

impl utoipa::PartialSchema for UserId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(crate::auth::MAX_USER_ID_CHARS))
            .pattern(Some("^[A-Za-z0-9_.@-]+$"))
            .into()
    }
}

impl ToSchema for UserId {}

/// A created conversation.
#[derive(Serialize, ToSchema)]
pub(super) struct CreatedConversation {
    id: String,
    title: String,
    members: Vec<String>,
}

/// Creates a conversation.
#[utoipa::path(
    post, path = "/api/conversations", tag = "chat",
    security(("user_jwt" = [])),
    request_body = NewConversation,
    responses(
        (status = 201, description = "Created", body = CreatedConversation),
        (status = 400, description = "Invalid member ids, a title too long, or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 422, description = "Some members are not users (`unknown_members`; the message lists them)", body = ErrorBody),
        (status = 429, description = "More than `api.conversations_per_minute` (`limit_exceeded`, with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(super) async fn create_conversation(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<NewConversation>,
) -> Result<HttpResponse, ApiError> {
    let chat = &state.chat;
    let creator = authenticate(&request, &state.tokens, false).await?;
    if let Err(wait) = chat.conversation_rate.try_take(&creator) {
        crate::telemetry::limit_refused("conversations_per_minute");
        return Err(ApiError::LimitExceeded {
            message: format!(
                "more than {} conversations a minute (api.conversations_per_minute); try again in {}s",
                state.config.api.conversations_per_minute,
                wait.as_secs() + 1
            ),
            retry_after_secs: Some(wait.as_secs() + 1),
        });
    }
    let NewConversation { members, title } = body.into_inner();
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::BadRequest(format!("title must be at most {MAX_TITLE_CHARS} characters")));
    }
    if let Err(message) = crate::chat::protocol::no_nul("title", &title) {
        return Err(ApiError::BadRequest(message));
    }
    let mut all = vec![creator.clone()];
    for UserId(member) in members {
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
        return Err(ApiError::UnknownMembers(unknown));
    }
    chat.directory.note_conversation(&id, all.clone());
    Ok(HttpResponse::Created().json(CreatedConversation { id, title, members: all }))
}

/// A conversation as its members see it.
#[derive(Serialize, ToSchema)]
pub(super) struct ConversationBody {
    id: String,
    title: String,
    created_by: String,
    /// RFC 3339.
    created_at: String,
    members: Vec<String>,
    /// The newest message, if any.
    latest_message: Option<MessageBody>,
    /// The newest message's time, or the creation time: listings are ordered by it.
    last_activity_at: String,
}

impl From<ConversationSummary> for ConversationBody {
    fn from(summary: ConversationSummary) -> Self {
        Self {
            id: summary.id,
            title: summary.title,
            created_by: summary.created_by,
            created_at: ms_to_rfc3339(summary.created_at_ms),
            members: summary.members,
            latest_message: summary.latest.as_ref().map(MessageBody::from),
            last_activity_at: ms_to_rfc3339(summary.activity_ms),
        }
    }
}

/// A page of conversations.
#[derive(Serialize, ToSchema)]
pub(super) struct ConversationPage {
    conversations: Vec<ConversationBody>,
    /// Pass as `before` for the next page; `null` on the last page.
    next_before: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ConversationsQuery {
    /// The `next_before` of the previous page.
    #[param(max_length = 200, pattern = r"^-?[0-9]{1,18}\..+$")]
    before: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// The caller's conversations, most recently active first, with members and latest message.
#[utoipa::path(
    get, path = "/api/conversations", tag = "chat",
    security(("user_jwt" = [])),
    params(ConversationsQuery),
    responses(
        (status = 200, description = "One page", body = ConversationPage),
        (status = 400, description = "Bad `limit` or `before`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(super) async fn list_conversations(
    request: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ConversationsQuery>,
) -> Result<web::Json<ConversationPage>, ApiError> {
    let chat = &state.chat;
    let user = authenticate(&request, &state.tokens, false).await?;
    let ConversationsQuery { before, limit } = query.into_inner();
    let limit = page_limit(limit, DEFAULT_CONVERSATIONS_PAGE, MAX_CONVERSATIONS_PAGE)?;
    let cursor = before.as_deref().map(parse_cursor).transpose()?;
    let page = chat.store.conversations_page(user, cursor, limit).await?;
    let next_before = match page.last() {
        Some(last) if page.len() == limit as usize => Some(format!("{}.{}", last.activity_ms, last.id)),
        _ => None,
    };
    Ok(web::Json(ConversationPage {
        conversations: page.into_iter().map(ConversationBody::from).collect(),
        next_before,
    }))
}

/// `<activity_ms>.<conversation id>`, as `next_before` writes it.
fn parse_cursor(before: &str) -> Result<ConversationCursor, ApiError> {
    let invalid = || ApiError::BadRequest("`before` must be the `next_before` of a previous page".into());
    let (activity, id) = before.split_once('.').ok_or_else(invalid)?;
    let activity_ms = activity.parse::<i64>().map_err(|_| invalid())?;
    if id.is_empty() {
        return Err(invalid());
    }
    Ok(ConversationCursor { activity_ms, id: id.to_owned() })
}

/// One conversation. Members only: anyone else gets `403`, whether or not it exists.
#[utoipa::path(
    get, path = "/api/conversations/{id}", tag = "chat",
    security(("user_jwt" = [])),
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The conversation", body = ConversationBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not a member (or no such conversation)", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(super) async fn get_conversation(
    request: HttpRequest,
    state: web::Data<AppState>,
    conversation: web::Path<String>,
) -> Result<web::Json<ConversationBody>, ApiError> {
    let chat = &state.chat;
    let user = authenticate(&request, &state.tokens, false).await?;
    let conversation = conversation.into_inner();
    require_member(chat, &conversation, &user).await?;
    let summary = chat
        .store
        .conversation(conversation)
        .await?
        .ok_or_else(|| ApiError::Forbidden("not a member of this conversation (or it does not exist)".into()))?;
    Ok(web::Json(summary.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeadLetterQuery {
    /// Most entries (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Something rampart gave up on and kept.
#[derive(Serialize, ToSchema)]
pub(super) struct DeadLetterBody {
    id: String,
    /// `message`, `delivery`, `quarantine` or `index`.
    #[schema(value_type = String)]
    kind: DeadLetterKind,
    reason: String,
    attempts: u32,
    /// A message (`message`), `{"recipient","message_id"}` (`delivery`), the quarantined
    /// message's debug text (`quarantine`), or `{"message_id"}` of a stored message the search
    /// engine refused (`index`).
    payload: Value,
    /// RFC 3339.
    at: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct DeadLetterList {
    dead_letters: Vec<DeadLetterBody>,
}

/// Dead letters, newest first.
#[utoipa::path(
    get, path = "/admin/dead-letters", tag = "admin",
    security(("admin_token" = [])),
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "Newest first", body = DeadLetterList),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(super) async fn list_dead_letters(
    state: web::Data<AppState>,
    query: web::Query<DeadLetterQuery>,
) -> Result<web::Json<DeadLetterList>, ApiError> {
    let limit = page_limit(query.limit, DEFAULT_DEAD_LETTERS_LISTED, MAX_DEAD_LETTERS_LISTED)?;
    let letters = state.chat.store.dead_letters(limit).await?;
    let dead_letters = letters
        .into_iter()
        .map(|letter| DeadLetterBody {
            at: ms_to_rfc3339(letter.at_ms),
            id: letter.id,
            kind: letter.kind,
            reason: letter.reason,
            attempts: letter.attempts,
            payload: letter.payload,
        })
        .collect();
    Ok(web::Json(DeadLetterList { dead_letters }))
}

/// What a retry did.
#[derive(Serialize, ToSchema)]
pub(super) struct RetryOutcome {
    /// The dead letter's id (now removed).
    retried: String,
    /// For a message: its ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    ack: Option<Ack>,
    /// For a delivery: the recipient it is pending for again.
    #[serde(skip_serializing_if = "Option::is_none")]
    requeued_for: Option<String>,
    /// For an index dead letter: the message now in the search index.
    #[serde(skip_serializing_if = "Option::is_none")]
    reindexed: Option<String>,
}

/// Re-injects one dead letter: a message goes through the pipeline again (same id, so it is
/// stored at most once); a delivery goes back to pending; a message the search engine refused
/// is indexed again. Removed from the list once accepted.
#[utoipa::path(
    post, path = "/admin/dead-letters/{id}/retry", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "Re-injected and removed from the list", body = RetryOutcome),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 409, description = "Its payload cannot be replayed", body = ErrorBody),
        (status = 422, description = "Refused again (back in dead letters under a new id)", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "Not stored: retry again", body = ErrorBody),
    )
)]
pub(super) async fn retry_dead_letter(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<RetryOutcome>, ApiError> {
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
                Ok(ack) => RetryOutcome { retried: id.clone(), ack: Some(ack), requeued_for: None, reindexed: None },
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
            RetryOutcome { retried: id.clone(), ack: None, requeued_for: Some(recipient), reindexed: None }
        }
        DeadLetterKind::Index => {
            let Some(message_id) = letter.payload.get("message_id").and_then(Value::as_str).map(str::to_owned) else {
                return Err(ApiError::Conflict("this dead letter's payload is not a message id".into()));
            };
            let message = chat
                .store
                .message(message_id.clone())
                .await?
                .ok_or_else(|| ApiError::Conflict("the message no longer exists".into()))?;
            let outcome =
                chat.search.index(vec![message]).await.map_err(|error| ApiError::Unavailable(error.to_string()))?;
            if let Some(error) = outcome.incomplete {
                return Err(ApiError::Unavailable(error.to_string()));
            }
            // Refused again: the dead letter stays.
            if let Some((_, reason)) = outcome.rejected.into_iter().next() {
                return Err(ApiError::Send(SendError::Rejected(reason)));
            }
            RetryOutcome { retried: id.clone(), ack: None, requeued_for: None, reindexed: Some(message_id) }
        }
    };
    chat.store.remove_dead_letter(id).await?;
    Ok(web::Json(outcome))
}
