//! rampart's own web client (`/`) and operator console (`/console`): plain HTML, JS modules and
//! CSS from `web/`, compiled into the binary (no build step, nothing fetched from another
//! origin), served under `/static/`.
//!
//! Must never: serve anything but the files listed here, or let a page load code from elsewhere
//! (a strict Content-Security-Policy goes with every page).

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::error::{ApiError, ErrorBody};

/// Same-origin only: scripts, styles, fetch and the WebSocket.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: &str = include_str!("../../web/index.html");
const CONSOLE: &str = include_str!("../../web/console.html");

/// Everything under `/static/`.
const ASSETS: &[Asset] = &[
    Asset {
        path: "css/rampart.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/css/rampart.css"),
    },
    Asset {
        path: "js/api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/js/api.js"),
    },
    Asset {
        path: "js/socket.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/js/socket.js"),
    },
    Asset {
        path: "js/chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/js/chat.js"),
    },
    Asset {
        path: "js/video.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/js/video.js"),
    },
    Asset {
        path: "js/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/js/console.js"),
    },
];

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/").get(index))
        .service(web::resource("/console").get(console))
        .service(web::resource("/static/{path:.*}").get(asset));
}

fn page(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // The binary is the version: revalidate rather than run stale code after an upgrade.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// The web client: sign in with a token, conversations, chat over `/ws`, history, search.
#[utoipa::path(
    get, path = "/", tag = "web",
    responses((status = 200, description = "The web client", content_type = "text/html", body = String))
)]
pub(super) async fn index() -> HttpResponse {
    page(INDEX, "text/html; charset=utf-8")
}

/// The operator console (it asks for the admin token and uses the admin API).
#[utoipa::path(
    get, path = "/console", tag = "web",
    responses((status = 200, description = "The console", content_type = "text/html", body = String))
)]
pub(super) async fn console() -> HttpResponse {
    page(CONSOLE, "text/html; charset=utf-8")
}

/// The web client's scripts and styles.
#[utoipa::path(
    get, path = "/static/{path}", tag = "web",
    params(("path" = String, Path, description = "e.g. `js/chat.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
pub(super) async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let path = path.into_inner();
    let asset = ASSETS
        .iter()
        .find(|asset| asset.path == path)
        .ok_or_else(|| ApiError::NotFound(format!("no static file {path}")))?;
    Ok(page(asset.body, asset.content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file a page or a module imports is served (a missing one breaks the page silently).
    #[test]
    fn every_referenced_file_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|asset| asset.path).collect();
        let mut texts: Vec<&str> = vec![INDEX, CONSOLE];
        texts.extend(ASSETS.iter().map(|asset| asset.body));
        for text in texts {
            for reference in
                text.split(['"', '\'']).filter(|part| part.starts_with("/static/") || part.starts_with("./"))
            {
                let path = reference.trim_start_matches("/static/").trim_start_matches("./");
                let path = if reference.starts_with("./") { format!("js/{path}") } else { path.to_owned() };
                assert!(served.contains(&path.as_str()), "{reference} is referenced but not served");
            }
        }
    }
}
