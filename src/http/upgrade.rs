//! WebSocket handshakes on actix-http's upgrade path.
//!
//! Owns: the upgrade service every worker's HTTP service is built with. actix-http hands it each
//! request that asks for a WebSocket (and any `CONNECT`) together with the connection itself.
//! The request still goes through the whole application (routing, authentication, the boundary
//! middleware: request id, metrics, panic containment), which answers it as for any request; a
//! handler that accepts a socket answers `101` with a [`SocketPlan`] attached. The answer is
//! written on the connection, and the plan then serves the socket on it (`http::socket`). Any
//! other answer is written and the connection closed.
//!
//! Why not a streaming response, as actix-web's WebSocket helpers do: a response that ends
//! leaves the connection to actix-http's linger (`http.disconnect_timeout`, ≥ 500 ms) instead of
//! closing it when the close handshake is done, and a client that stops reading holds the
//! response, and its queued frames, until the TCP connection dies.

use std::rc::Rc;

use actix_codec::Framed;
use actix_http::body::MessageBody;
use actix_http::{h1, ConnectionType, Request, Response, StatusCode};
use actix_rt::net::TcpStream;
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use actix_web::dev::{AppConfig, ServiceResponse};
use futures_util::future::LocalBoxFuture;

use super::socket::WsFramed;

/// How to serve the socket of an accepted handshake; attached to its `101` response by the
/// handler (response extensions) and run once the response is written.
pub(super) struct SocketPlan {
    max_frame_bytes: usize,
    serve: Box<dyn FnOnce(WsFramed) -> LocalBoxFuture<'static, ()>>,
}

impl SocketPlan {
    pub(super) fn new(
        max_frame_bytes: usize,
        serve: impl FnOnce(WsFramed) -> LocalBoxFuture<'static, ()> + 'static,
    ) -> Self {
        Self { max_frame_bytes, serve: Box::new(serve) }
    }
}

/// The upgrade service factory: one application instance per worker, built by `app`.
pub(super) fn factory<F, T>(
    app: F,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    F: Fn() -> T + 'static,
    T: ServiceFactory<Request, Config = AppConfig, Error = actix_web::Error, InitError = ()> + 'static,
    T::Response: Into<ServiceResponseLike>,
{
    let app = Rc::new(app);
    fn_factory(move || {
        let app = app.as_ref()();
        async move {
            let service = Rc::new(app.new_service(AppConfig::default()).await?);
            Ok::<_, ()>(fn_service(move |(request, framed): (Request, Framed<TcpStream, h1::Codec>)| {
                let service = service.clone();
                async move {
                    let response = match service.call(request).await {
                        Ok(response) => response.into().0,
                        Err(error) => Response::from(error.error_response()),
                    };
                    serve(response, framed).await;
                    Ok::<_, actix_web::Error>(())
                }
            }))
        }
    })
}

/// An application's answer, boxed (whatever its body type).
pub(super) struct ServiceResponseLike(Response<actix_http::body::BoxBody>);

impl<B: MessageBody + 'static> From<ServiceResponse<B>> for ServiceResponseLike {
    fn from(response: ServiceResponse<B>) -> Self {
        Self(Response::from(response.into_parts().1.map_into_boxed_body()))
    }
}

/// Writes the answer; then serves the socket if it accepted one, else closes the connection.
async fn serve(mut response: Response<actix_http::body::BoxBody>, framed: Framed<TcpStream, h1::Codec>) {
    let plan = response.extensions_mut().remove::<SocketPlan>();
    let accepted = response.status() == StatusCode::SWITCHING_PROTOCOLS && plan.is_some();
    if !accepted {
        response.head_mut().set_connection_type(ConnectionType::Close);
    }
    // Handshake answers and errors are small: their body is collected, so what is written is
    // plain bytes.
    let (response, body) = response.into_parts();
    let body = match actix_http::body::to_bytes(body).await {
        Ok(body) => body,
        Err(error) => {
            tracing::debug!(%error, "could not read a WebSocket handshake's answer");
            return;
        }
    };
    let framed = match h1::SendResponse::new(framed, response.set_body(body)).await {
        Ok(framed) => framed,
        Err(error) => {
            tracing::debug!(%error, "could not answer a WebSocket handshake");
            return;
        }
    };
    if let (true, Some(plan)) = (accepted, plan) {
        let codec = actix_http::ws::Codec::new().max_size(plan.max_frame_bytes);
        (plan.serve)(framed.replace_codec(codec)).await;
    }
}

/// The `101` answer to a valid WebSocket handshake. A handshake with a body (chunked) would not
/// reach the upgrade path: refused.
pub(super) fn handshake(
    request: &actix_web::HttpRequest,
) -> Result<actix_web::HttpResponseBuilder, super::error::ApiError> {
    let headers = request.headers();
    let has_body = headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.to_str().map_or(true, |length| length.trim() != "0"));
    if has_body {
        return Err(super::error::ApiError::BadRequest("not a WebSocket handshake: a handshake has no body".into()));
    }
    actix_web_actors::ws::handshake(request)
        .map_err(|error| super::error::ApiError::BadRequest(format!("not a WebSocket handshake: {error}")))
}
