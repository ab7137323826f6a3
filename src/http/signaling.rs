//! `GET /rtc` (SFU signaling over WebSocket) and `/admin/rooms`.
//!
//! Owns: the handshake of SFU peers — provisioned users only (403), at most
//! `sfu.max_sockets_per_user` sockets each (429) — answered `101` with the plan that serves the
//! socket (the same reader and writer as `/ws`, `http::socket`, its outbox from the same byte
//! budget); the SFU itself is `crate::sfu`. A build without the `sfu` feature, or with
//! `sfu.enabled = false`, answers 501 with how to get it.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::AppState;

/// The operator routes of this file, inside the `/admin` scope (which checks the admin token).
pub fn admin_routes(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/rooms").get(list_rooms).post(create_room))
        .service(web::resource("/rooms/{name}").delete(delete_room));
}

/// The signaling WebSocket of the SFU (protocol in README, "Video rooms"): authenticate with
/// `Authorization: Bearer` or `?token=`, then upgrade.
#[utoipa::path(
    get, path = "/rtc", tag = "sfu", operation_id = "sfu_signaling",
    security(("user_jwt" = [])),
    params(("token" = Option<String>, Query, description = "The JWT, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Switching to the signaling protocol v1"),
        (status = 400, description = "Not a WebSocket handshake", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 403, description = "The token's user is not provisioned", body = super::error::ErrorBody),
        (status = 429, description = "The user has `sfu.max_sockets_per_user` sockets open", body = super::error::ErrorBody),
        (status = 501, description = "This build or configuration has no SFU", body = super::error::ErrorBody),
        (status = 503, description = "Not accepting connections (shutting down)", body = super::error::ErrorBody),
    )
)]
pub async fn upgrade(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let user = super::auth::authenticate(&request, &state.tokens, true).await?;
    imp::upgrade(request, state, user).await
}

/// Another instance of the deployment relaying a participant of a room placed here
/// (`sfu.cluster`): the same protocol as `/rtc`, for the user in `x-rampart-relay-user`, vouched
/// for by `x-rampart-relay` (an expiry and HMAC-SHA256 with `sfu.cluster.secret`).
#[utoipa::path(
    get, path = "/rtc/relay", tag = "sfu", operation_id = "sfu_relay",
    security(("relay_credential" = [])),
    params(("x-rampart-relay-user" = String, Header, description = "The relayed participant's user")),
    responses(
        (status = 101, description = "Switching to the signaling protocol v1"),
        (status = 400, description = "Not a WebSocket handshake", body = super::error::ErrorBody),
        (status = 401, description = "Missing, expired or wrongly signed relay credential", body = super::error::ErrorBody),
        (status = 403, description = "The user is not provisioned", body = super::error::ErrorBody),
        (status = 429, description = "The user has `sfu.max_sockets_per_user` sockets open", body = super::error::ErrorBody),
        (status = 501, description = "This build or configuration has no SFU", body = super::error::ErrorBody),
        (status = 503, description = "Not accepting connections (shutting down)", body = super::error::ErrorBody),
    )
)]
pub async fn relay(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let (Some(user), Some(credential)) = (header("x-rampart-relay-user"), header("x-rampart-relay")) else {
        return Err(ApiError::Unauthorized);
    };
    imp::relay(request, state, user, credential).await
}

/// A room anyone authenticated may join (not only a conversation's members).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRoom {
    /// 1 to 128 characters, no control characters, not only whitespace (trimmed).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$"
    )]
    name: String,
}

/// The open rooms (participants, their tracks, subscribers and forwarded packets) and the
/// operators' rooms, open or not.
#[utoipa::path(
    get, path = "/admin/rooms", tag = "sfu",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Open rooms and operators' rooms", body = Object),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 501, description = "This build or configuration has no SFU", body = super::error::ErrorBody),
    )
)]
pub(super) async fn list_rooms(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    imp::list_rooms(state).await
}

/// Creates an operator's room: any authenticated user may join it.
#[utoipa::path(
    post, path = "/admin/rooms", tag = "sfu",
    security(("admin_token" = [])),
    request_body = NewRoom,
    responses(
        (status = 201, description = "Created", body = Object),
        (status = 200, description = "Already existed", body = Object),
        (status = 400, description = "Invalid name", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 501, description = "This build or configuration has no SFU", body = super::error::ErrorBody),
        (status = 503, description = "The store is unavailable", body = super::error::ErrorBody),
    )
)]
pub(super) async fn create_room(
    state: web::Data<AppState>,
    body: web::Json<NewRoom>,
) -> Result<HttpResponse, ApiError> {
    let name = room_name(&body.into_inner().name)?;
    imp::create_room(state, name).await
}

/// Takes an operator's room back: only members of the conversation of that name may join it from
/// now on; participants in it stay until they leave.
#[utoipa::path(
    delete, path = "/admin/rooms/{name}", tag = "sfu",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The room's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "No operator's room of that name", body = super::error::ErrorBody),
        (status = 501, description = "This build or configuration has no SFU", body = super::error::ErrorBody),
        (status = 503, description = "The store is unavailable", body = super::error::ErrorBody),
    )
)]
pub(super) async fn delete_room(state: web::Data<AppState>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    // No validation: a name that could not have been created is simply not found.
    imp::delete_room(state, name.trim().to_owned()).await
}

/// A room name as operators give it: trimmed, 1 to 128 characters, none of them a control.
fn room_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("name must be 1 to 128 printable characters".into()));
    }
    Ok(name.to_owned())
}

#[cfg(not(feature = "sfu"))]
mod imp {
    use super::*;

    fn not_built() -> ApiError {
        ApiError::NotImplemented("this build has no SFU (video rooms): build rampart with `--features sfu`".into())
    }

    pub async fn upgrade(_: HttpRequest, _: web::Data<AppState>, _: String) -> Result<HttpResponse, ApiError> {
        Err(not_built())
    }

    pub async fn relay(_: HttpRequest, _: web::Data<AppState>, _: String, _: String) -> Result<HttpResponse, ApiError> {
        Err(not_built())
    }

    pub async fn list_rooms(_: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
        Err(not_built())
    }

    pub async fn create_room(_: web::Data<AppState>, _: String) -> Result<HttpResponse, ApiError> {
        Err(not_built())
    }

    pub async fn delete_room(_: web::Data<AppState>, _: String) -> Result<HttpResponse, ApiError> {
        Err(not_built())
    }
}

#[cfg(feature = "sfu")]
mod imp {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::http::socket::{serve, ActorLink, Socket};
    use crate::http::upgrade::SocketPlan;
    use crate::sfu::{Sfu, Signal};
    use crate::socket::Outbox;

    impl Socket for Signal {
        fn outbox(&self) -> &Outbox {
            &self.outbox
        }

        fn touch(&self) {
            *self.last_seen.lock() = Instant::now();
        }
    }

    fn sfu(state: &AppState) -> Result<&Arc<Sfu>, ApiError> {
        state.sfu.as_ref().ok_or_else(|| ApiError::NotImplemented("the SFU is disabled (sfu.enabled = false)".into()))
    }

    pub async fn upgrade(
        request: HttpRequest,
        state: web::Data<AppState>,
        user: String,
    ) -> Result<HttpResponse, ApiError> {
        serve_socket(request, state, user, false).await
    }

    pub async fn relay(
        request: HttpRequest,
        state: web::Data<AppState>,
        user: String,
        credential: String,
    ) -> Result<HttpResponse, ApiError> {
        if !sfu(&state)?.verify_relay(&user, &credential) {
            return Err(ApiError::Unauthorized);
        }
        serve_socket(request, state, user, true).await
    }

    async fn serve_socket(
        request: HttpRequest,
        state: web::Data<AppState>,
        user: String,
        relayed: bool,
    ) -> Result<HttpResponse, ApiError> {
        let sfu = sfu(&state)?.clone();
        if state.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ApiError::Unavailable("shutting down".into()));
        }
        let mut response = crate::http::upgrade::handshake(&request)?;
        // A valid token is not enough: rooms, limits and membership are a provisioned user's.
        if !state.chat.directory.user_exists(&user).await? {
            return Err(ApiError::Forbidden(format!("user {user} is not provisioned (POST /api/users)")));
        }
        let Some(slot) = sfu.sockets_per_user.acquire(&user) else {
            crate::telemetry::limit_refused("rtc_sockets_per_user");
            return Err(ApiError::LimitExceeded {
                message: format!(
                    "{user} has {} signaling sockets open (sfu.max_sockets_per_user); close one first",
                    sfu.sockets_per_user.limit()
                ),
                retry_after_secs: None,
            });
        };
        let (outbox, receiver) = state.chat.outboxes.outbox();
        let signal = Signal::new(outbox);
        let peer = sfu
            .connect(user.clone(), signal.clone(), relayed)
            .map_err(|error| ApiError::Unavailable(format!("not accepting connections: {error}")))?;
        crate::action!("rtc", "connected", user = user, peer = peer.path(), relayed = relayed);
        let max_frame_bytes = sfu.core.config.max_frame_bytes;
        let plan = SocketPlan::new(max_frame_bytes, move |framed| {
            Box::pin(serve(framed, signal, receiver, slot, ActorLink(peer), max_frame_bytes))
        });
        let mut response = response.finish();
        response.extensions_mut().insert(plan);
        Ok(response)
    }

    pub async fn list_rooms(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
        let sfu = sfu(&state)?;
        let operator_rooms = sfu.admin_rooms().await?;
        let rooms = sfu.rooms(&operator_rooms).await;
        let placements = sfu.placements().await.transpose()?;
        Ok(HttpResponse::Ok().json(serde_json::json!({
            "rooms": rooms,
            "operator_rooms": operator_rooms,
            "media_tasks": sfu.media_tasks(),
            // With sfu.cluster: every room of the deployment and the instance it runs on.
            "instance": sfu.instance(),
            "placements": placements,
        })))
    }

    pub async fn create_room(state: web::Data<AppState>, name: String) -> Result<HttpResponse, ApiError> {
        let created = sfu(&state)?.create_admin_room(&name).await?;
        let body = serde_json::json!({ "name": name, "created": created });
        Ok(if created { HttpResponse::Created().json(body) } else { HttpResponse::Ok().json(body) })
    }

    pub async fn delete_room(state: web::Data<AppState>, name: String) -> Result<HttpResponse, ApiError> {
        if sfu(&state)?.delete_admin_room(&name).await? {
            Ok(HttpResponse::NoContent().finish())
        } else {
            Err(ApiError::NotFound(format!("no operator's room named {name:?}")))
        }
    }
}
