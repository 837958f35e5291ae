//! `GET /api/status`: what an operator or DBA looks at, as JSON (the status
//! page `GET /status` reads it every 2 s, and scripts can too): role and
//! source, the outbox's backlog and lag, the dead letters of the last hour,
//! connections and subscriptions per channel, running totals (a client
//! derives messages per second from them), and the last source errors.
//!
//! The backlog and dead letters come from the database, read by the drainer
//! between passes (at most every 2 s, and only while someone asks: an idle
//! orapush that nobody watches runs no extra statement). So they lag by up
//! to one pass, are null until the first reading, and null on a standby.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::config::Named;
use crate::state::AppState;

pub async fn api_status(State(state): State<AppState>) -> Json<Value> {
    state.source_status.want_stats();
    let source = state.source_status.snapshot();
    let metrics = &state.metrics;
    let (backlog, lag, checked_at, dead) = match &source.stats {
        Some((stats, at)) => (
            json!(stats.backlog),
            json!(stats.oldest_seconds.unwrap_or_else(|| metrics.outbox_lag_seconds.get())),
            json!(at),
            json!(stats.dead_letters),
        ),
        None => (Value::Null, Value::Null, Value::Null, json!([])),
    };
    let channels: Vec<Value> = state
        .hub
        .channel_subscribers()
        .into_iter()
        .map(|(channel, subscribers)| json!({ "channel": channel, "subscribers": subscribers }))
        .collect();
    let errors: Vec<Value> =
        source.errors.iter().rev().map(|(at, message)| json!({ "at": at, "message": message })).collect();
    let ready = source.role == crate::source::Role::Active && !state.shutting_down.load(Ordering::Relaxed);
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "source": {
            "kind": state.settings.source.kind.name(),
            "role": source.role.as_str(),
            "ready": ready,
            "reason": source.reason,
        },
        "outbox": { "backlog": backlog, "lag_seconds": lag, "checked_at": checked_at },
        "dead_letters_last_hour": dead,
        "connections": metrics.connections.get(),
        "channels": channels,
        "totals": {
            "drained": metrics.messages_drained.get(),
            "delivered": metrics.deliveries.get(),
            "published_http": metrics.messages_published_http.get(),
            "dead_lettered": metrics.dead_lettered.get(),
            "dropped": metrics.dropped.get(),
            "source_errors": metrics.source_errors.get(),
        },
        "errors": errors,
    }))
}
