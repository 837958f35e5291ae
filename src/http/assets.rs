//! The browser client (`/orapush.js`), the demo page (`/`) and the status
//! page (`/status`), compiled into the binary so the single executable
//! serves them.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const CLIENT_JS: &str = include_str!("../../web/orapush.js");
const DEMO_PAGE: &str = include_str!("../../web/index.html");
const STATUS_PAGE: &str = include_str!("../../web/status.html");

pub async fn client_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        CLIENT_JS,
    )
        .into_response()
}

pub fn demo_page() -> Response {
    Html(DEMO_PAGE).into_response()
}

pub async fn status_page() -> Response {
    Html(STATUS_PAGE).into_response()
}
