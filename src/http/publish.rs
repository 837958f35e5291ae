//! Publishing over HTTP, straight into the hub (no outbox): the seed's
//! `POST /` and the JSON `POST /api/publish`.
//!
//! These are fire-and-forget like the seed server: a message published here
//! is not durable across a crash. The durable way is the outbox.
//!
//! Access rule (SPEC): when `api.publish_key` is set, a request must carry
//! `Authorization: Bearer <key>` (compared in constant time); when it is not
//! set, publishing is allowed only while the server listens on loopback.

use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::message::{validate_channel, Message};
use crate::state::AppState;

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Checks the publish key, or the loopback rule when no key is set.
/// The credentials of an `Authorization: Bearer <key>` header. The scheme
/// name is case-insensitive (RFC 7235 section 2.1): `bearer`, `BEARER`.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    match &state.settings.api.publish_key {
        Some(key) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_credentials)
                .unwrap_or("");
            if bool::from(given.as_bytes().ct_eq(key.expose().as_bytes())) {
                Ok(())
            } else {
                Err((
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong publish key (Authorization: Bearer <api.publish_key>)",
                ))
            }
        }
        None if state.listens_on_loopback() => Ok(()),
        None => Err((
            StatusCode::FORBIDDEN,
            "publishing over HTTP needs api.publish_key when the server does not listen on loopback",
        )),
    }
}

fn next_id(state: &AppState) -> String {
    format!("http-{}", state.next_http_id.fetch_add(1, Ordering::Relaxed) + 1)
}

/// `POST /` (seed-compatible): any body, JSON or not, to `legacy.publish_channel`.
pub async fn legacy(State(state): State<AppState>, headers: HeaderMap, body: String) -> Response {
    if let Err((status, why)) = authorize(&state, &headers) {
        return refuse(status, why);
    }
    let channel = &state.settings.legacy.publish_channel;
    let max = state.settings.server.max_message_bytes;
    let message = match Message::from_payload(next_id(&state), channel.as_str(), None, &body, max) {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
    };
    let delivered = match &state.broker {
        None => state.hub.publish(&message, None).delivered as u64,
        Some(_) => match publish_shared(&state, &message, true).await {
            Ok((_, reach)) => reach,
            Err(response) => return response,
        },
    };
    state.metrics.messages_published_http.inc();
    Json(json!({ "message": format!("Send to {delivered} clients") })).into_response()
}

/// Publishes through Redis: the message's number, and how many clients on
/// every node it reaches (from the nodes' last reports: at most
/// `redis.report_interval_ms` old). 503 while Redis is unreachable.
async fn publish_shared(
    state: &AppState,
    message: &Message,
    with_legacy: bool,
) -> Result<(crate::broker::redis::Numbered, u64), Response> {
    let unavailable = |why: String| refuse(StatusCode::SERVICE_UNAVAILABLE, why);
    let Some(node) = state.broker.as_ref().and_then(|b| b.node()) else {
        return Err(unavailable("Redis has not been reached yet; try again".into()));
    };
    let numbered = node.publish_one(message).await.map_err(|e| unavailable(format!("Redis: {e}")))?;
    let reach = node.reach(&message.channel, with_legacy).await.unwrap_or(0);
    Ok((numbered, reach))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    user: Option<String>,
}

/// `POST /api/publish` `{"channel": "c", "data": ..., "user": null}`.
pub async fn api(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Result<Json<PublishRequest>, JsonRejection>,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers) {
        return refuse(status, why);
    }
    let Json(request) = match request {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"channel\", \"data\", \"user\"}}: {}", e.body_text()),
            )
        }
    };
    if let Err(e) = validate_channel(&request.channel) {
        return refuse(StatusCode::BAD_REQUEST, e.to_string());
    }
    let max = state.settings.server.max_message_bytes;
    let size = request.data.get().len();
    if size > max {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("data is {size} bytes, over server.max_message_bytes ({max})"),
        );
    }
    let message = Message {
        id: next_id(&state),
        channel: request.channel,
        target_user: request.user,
        // `data` arrived as JSON and was checked by the extractor: use it as it is.
        data: request.data,
    };
    let (epoch, offset, delivered) = match &state.broker {
        None => {
            let published = state.hub.publish(&message, None);
            (published.epoch.to_string(), published.offset, published.delivered as u64)
        }
        Some(_) => match publish_shared(&state, &message, false).await {
            Ok((numbered, reach)) => (numbered.epoch, numbered.offset, reach),
            Err(response) => return response,
        },
    };
    state.metrics.messages_published_http.inc();
    Json(json!({
        "channel": message.channel,
        "epoch": epoch,
        "offset": offset,
        "delivered": delivered,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Bearer scheme matches in any case; other schemes do not.
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for header in ["Bearer k3y-k3y-k3y", "bearer k3y-k3y-k3y", "BEARER  k3y-k3y-k3y "] {
            assert_eq!(bearer_credentials(header), Some("k3y-k3y-k3y"), "{header}");
        }
        assert_eq!(bearer_credentials("Basic k3y"), None);
        assert_eq!(bearer_credentials("Bearer"), None);
    }
}
