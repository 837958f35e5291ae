//! WebSocket endpoints: the upgrade (Origin check, buffer and size limits)
//! for `/ws` (the orapush protocol) and `/` (the seed server's protocol).
//! Each upgraded connection runs [`session::run`] under the process's task
//! tracker, so shutdown can wait for every socket to close.

pub mod protocol;
pub mod session;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;
use session::Mode;

/// Bytes tungstenite gathers before it writes to the socket.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Upgrades the request and runs the session.
pub fn upgrade(state: &AppState, upgrade: WebSocketUpgrade, headers: &HeaderMap, mode: Mode) -> Response {
    if !origin_allowed(state, headers) {
        return (StatusCode::FORBIDDEN, "Origin not allowed (server.allowed_origins)\n").into_response();
    }
    let settings = &state.settings.server;
    let conn = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let ctx = state.session.clone();
    let tracker = state.tracker.clone();
    upgrade
        .read_buffer_size(settings.read_buffer_bytes)
        // Queued frames are flushed together once the queue is empty; a
        // small buffer still batches them into few syscalls, and an idle
        // connection never allocates it.
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(settings.max_message_bytes * 4 + 64 * 1024)
        .max_message_size(settings.max_message_bytes)
        .max_frame_size(settings.max_message_bytes)
        .on_upgrade(move |socket| tracker.track_future(session::run(socket, conn, mode, ctx)))
}

/// False when `server.allowed_origins` is set and the Origin is not in it.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let allowed = &state.settings.server.allowed_origins;
    if allowed.is_empty() {
        return true;
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    origin.is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

/// The `channel` values of a query string (`?channel=a&channel=b`).
pub fn channels_from_query(query: Option<&str>) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "channel")
        .map(|(_, v)| v.into_owned())
        .collect()
}

pub type SharedContext = Arc<session::SessionContext>;
