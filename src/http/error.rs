//! The one error type at the HTTP edge: every failure becomes a status and a JSON body
//! `{"error": "<code>", "message": "<sentence>"}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code to match on (`bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `unavailable`, `rate_limited`, `limit_exceeded`, `unknown_sender`, `rejected`,
    /// `internal`, ...).
    pub error: String,
    /// A sentence for humans.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the admin API is disabled: set admin.token (environment variable RAMPART__ADMIN__TOKEN) to enable it")]
    AdminDisabled,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Forbidden(String),
    /// Users named in a request that do not exist.
    #[error("unknown members: {}", .0.join(", "))]
    UnknownMembers(Vec<String>),
    /// The path exists, the method does not; carries the `Allow` header's value.
    #[error("this route accepts only {0}")]
    MethodNotAllowed(String),
    /// A message the pipeline refused; the code is the one WebSocket clients get.
    #[error("{0}")]
    Send(crate::chat::SendError),
    /// A capability this build or configuration leaves out (the SFU without `--features sfu`).
    #[error("{0}")]
    NotImplemented(String),
    /// A per-user limit (connections, sockets, conversations per minute); comes with
    /// `Retry-After` when waiting helps.
    #[error("{message}")]
    LimitExceeded { message: String, retry_after_secs: Option<u64> },
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> Self {
        ApiError::Unavailable(error.to_string())
    }
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::AdminDisabled => "admin_disabled",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::UnknownMembers(_) => "unknown_members",
            ApiError::Send(error) => error.code(),
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::LimitExceeded { .. } => "limit_exceeded",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::AdminDisabled | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnknownMembers(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::LimitExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Send(error) => {
                use crate::chat::SendError;
                match error {
                    SendError::Invalid(_) => StatusCode::BAD_REQUEST,
                    SendError::Forbidden => StatusCode::FORBIDDEN,
                    SendError::UnknownSender(_) | SendError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    SendError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                    SendError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                }
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            // Overload, a full pipeline or storage retrying: worth trying again shortly.
            ApiError::Send(crate::chat::SendError::Unavailable(_) | crate::chat::SendError::RateLimited) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::LimitExceeded { retry_after_secs: Some(seconds), .. } => {
                response.insert_header((header::RETRY_AFTER, seconds.to_string()));
            }
            _ => {}
        }
        response.json(ErrorBody { error: self.code().to_owned(), message: self.to_string() })
    }
}
