//! The dashboard built into the binary (see `build.rs`): served when `server.web_root` is not
//! a directory, so `tickgate` started from any directory still has its dashboard and embeds.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

use crate::error::ApiError;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The embedded file at `path` (`""` is `index.html`).
pub fn find(path: &str) -> Option<&'static [u8]> {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    WEB_ASSETS
        .iter()
        .find(|(name, _)| *name == path)
        .map(|(_, bytes)| *bytes)
}

/// The chart library embedded at build time, if it was installed then.
pub fn chart_module() -> Option<&'static [u8]> {
    CHART_MODULE
}

pub fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// `GET` of any path not taken by a route: the embedded file, or the API's JSON 404.
pub async fn serve(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = request.path();
    let readable = matches!(
        *request.method(),
        actix_web::http::Method::GET | actix_web::http::Method::HEAD
    );
    let Some(bytes) = find(path).filter(|_| readable) else {
        return Err(ApiError::not_found("no such route"));
    };
    let name = if path.trim_start_matches('/').is_empty() {
        "index.html"
    } else {
        path
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type(name))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(bytes::Bytes::from_static(bytes)))
}
