//! HTTP routes: the WebSocket endpoints, health, readiness, metrics, the
//! status API and page, the publish API (seed-compatible `POST /` and
//! `POST /api/publish`) and the static browser client and demo page.

mod assets;
mod health;
mod publish;
mod status;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;
use crate::ws::upgrade::{WsUpgrade, WsUpgradeRejection};
use crate::ws::{self, session::Mode};

pub fn router(state: AppState) -> Router {
    // A body may carry one payload plus JSON framing.
    let body_limit = state.settings.server.max_message_bytes + 4096;
    Router::new()
        .route("/", get(root).post(publish::legacy))
        .route("/ws", get(ws_endpoint))
        .route("/api/publish", post(publish::api))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/status", get(assets::status_page))
        .route("/api/status", get(status::api_status))
        .route("/orapush.js", get(assets::client_js))
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// `GET /`: a WebSocket upgrade joins the legacy broadcast; a plain GET gets the demo page.
async fn root(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WsUpgrade, WsUpgradeRejection>,
) -> Response {
    match upgrade {
        Ok(upgrade) => ws::upgrade(&state, upgrade, &headers, peer, query.as_deref(), Mode::Legacy),
        Err(_) => assets::demo_page(),
    }
}

/// `GET /ws`: the orapush protocol, with optional `?channel=` subscriptions.
async fn ws_endpoint(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: WsUpgrade,
) -> Response {
    let auto_subscribe = ws::channels_from_query(query.as_deref());
    ws::upgrade(&state, upgrade, &headers, peer, query.as_deref(), Mode::Protocol { auto_subscribe })
}
