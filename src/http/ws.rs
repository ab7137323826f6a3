//! `GET /ws`: the WebSocket transport of protocol v1.
//!
//! Owns: the handshake — authentication, the per-user connection limit
//! (`ws.max_connections_per_user` → 429), the connection's registration in `Presence`, its
//! session actor and its backlog sync — answered `101` with the plan that serves the socket
//! (`http::socket`, on actix-http's upgrade path: `http::upgrade`). Nothing here is a supervised
//! actor: sockets cannot be restarted, sessions can.

use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::authenticate;
use super::error::ApiError;
use super::socket::{serve, ActorLink};
use super::upgrade::{handshake, SocketPlan};
use super::AppState;
use crate::chat::session::Session;
use crate::supervision::{ChildSpec, RestartType};

/// The WebSocket of protocol v1 (see README): authenticate with `Authorization: Bearer` or
/// `?token=` (browsers), then upgrade.
#[utoipa::path(
    get, path = "/ws", tag = "chat", operation_id = "chat_websocket",
    security(("user_jwt" = [])),
    params(("token" = Option<String>, Query, description = "The JWT, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol v1"),
        (status = 400, description = "Not a WebSocket handshake", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 429, description = "The user has `ws.max_connections_per_user` connections open", body = super::error::ErrorBody),
        (status = 503, description = "Not accepting connections (shutting down, delivery unavailable)", body = super::error::ErrorBody),
    )
)]
pub async fn upgrade(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let chat = state.chat.clone();
    let user = authenticate(&request, &state.tokens, true).await?;
    let mut response = handshake(&request)?;
    let config = &state.config.ws;
    let Some(slot) = chat.connections_per_user.acquire(&user) else {
        crate::telemetry::limit_refused("ws_connections_per_user");
        return Err(ApiError::LimitExceeded {
            message: format!(
                "{user} has {} WebSocket connections open (ws.max_connections_per_user); close one first",
                config.max_connections_per_user
            ),
            retry_after_secs: None,
        });
    };
    let (outbox, receiver) = chat.outboxes.outbox();
    let guard = chat.presence.connect(user.clone(), outbox, Some(slot));
    let connection = guard.connection.clone();
    let factory_connection = connection.clone();
    let deps = chat.session_deps.clone();
    let session = chat
        .sessions
        .spawn(
            ChildSpec::new(format!("ws-{}", connection.id), move || {
                Session::new(factory_connection.clone(), deps.clone())
            })
            .restart(RestartType::Transient),
        )
        .map_err(|error| ApiError::Unavailable(format!("not accepting connections: {error}")))?;
    if let Err(error) = chat.delivery.try_send(crate::chat::Attach(connection.clone())) {
        // Without a sync the client would miss its backlog: refuse rather than half-serve.
        return Err(ApiError::Unavailable(format!("delivery is not available: {error}")));
    }
    crate::action!("ws", "connected", user = user);
    let max_frame_bytes = config.max_frame_bytes;
    let plan = SocketPlan::new(max_frame_bytes, move |framed| {
        Box::pin(serve(framed, connection, receiver, guard, ActorLink(session), max_frame_bytes))
    });
    let mut response = response.finish();
    response.extensions_mut().insert(plan);
    Ok(response)
}
