//! Liveness, readiness and metrics.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::Named;
use crate::source::Role;
use crate::state::AppState;

/// 200 while the process runs.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 while this instance drains its source; 503 while the source is
/// down, while another instance drains it (standby: its clients would get
/// nothing, so a load balancer should send them to the active one), or
/// while shutting down.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        return unavailable("shutting down", "shutting down");
    }
    let status = state.source_status.snapshot();
    match status.role {
        Role::Active => Json(json!({ "status": "ready", "role": "active", "source": source_name(&state) }))
            .into_response(),
        role => unavailable(role.as_str(), status.reason.as_deref().unwrap_or("source not connected yet")),
    }
}

fn unavailable(role: &str, reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "unavailable", "role": role, "reason": reason })),
    )
        .into_response()
}

fn source_name(state: &AppState) -> &'static str {
    state.settings.source.kind.name()
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
        .into_response()
}
