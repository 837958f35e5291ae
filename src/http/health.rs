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
    if let Some(broker) = &state.broker {
        // Every node delivers what any node drains: ready while Redis is
        // there, draining or not.
        let redis = if broker.ready() { "connected" } else { "down" };
        let body = json!({
            "status": if broker.ready() { "ready" } else { "unavailable" },
            "role": status.role.as_str(),
            "source": source_name(&state),
            "redis": redis,
            "reason": if broker.ready() { None } else { Some("Redis is not reachable") },
        });
        let code = if broker.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return (code, Json(body)).into_response();
    }
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
