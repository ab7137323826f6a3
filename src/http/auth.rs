//! Who a request is from: the bearer token of a user (a JWT, checked by `crate::auth`) or of
//! the operator (the admin token, compared in constant time).
//!
//! Owns: reading `Authorization: Bearer`, the `?token=` fallback for browser WebSockets, and the
//! middleware in front of every `/admin` route. Each resource file registers its own routes and
//! calls these checks; none of them knows another's.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::auth::Tokens;
use crate::chat::Chat;

/// Middleware of the `/admin` scope: only requests with the admin token get through.
pub(super) async fn require_admin_token(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let Some(state) = state else {
        return Err(ApiError::Unavailable("application state missing".into()).into());
    };
    check_admin_token(request.headers(), &state.config.admin.token)?;
    next.call(request).await
}

/// `Ok` when the request carries the configured admin bearer token.
pub(super) fn check_admin_token(headers: &header::HeaderMap, token: &str) -> Result<(), ApiError> {
    let expected = token.as_bytes();
    if expected.is_empty() {
        return Err(ApiError::AdminDisabled);
    }
    let presented = bearer_token(headers).unwrap_or("");
    // Constant time in the token's content; a length mismatch is rejected by ct_eq too.
    if !bool::from(presented.as_bytes().ct_eq(expected)) {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

/// The token of an `Authorization: Bearer …` header.
fn bearer_token(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The user a request is made by: a valid `Authorization: Bearer <jwt>`, or (`allow_query`, for
/// browser WebSockets, which cannot set headers) `?token=<jwt>`.
pub(super) async fn authenticate(
    request: &HttpRequest,
    tokens: &Tokens,
    allow_query: bool,
) -> Result<String, ApiError> {
    let from_query =
        || web::Query::<TokenQuery>::from_query(request.query_string()).ok().and_then(|query| query.into_inner().token);
    let token = match bearer_token(request.headers()) {
        Some(token) => token.to_owned(),
        None if allow_query => from_query().ok_or(ApiError::Unauthorized)?,
        None => return Err(ApiError::Unauthorized),
    };
    tokens.verify(&token).await.map_err(|error| {
        tracing::debug!(%error, "token refused");
        ApiError::Unauthorized
    })
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Only members see or write a conversation; anyone else is told it may not exist.
pub(super) async fn require_member(chat: &Chat, conversation: &str, user: &str) -> Result<(), ApiError> {
    if chat.directory.is_member(conversation, user).await? {
        Ok(())
    } else {
        Err(ApiError::Forbidden("not a member of this conversation (or it does not exist)".into()))
    }
}
