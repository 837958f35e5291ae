//! WebSocket endpoints: the upgrade for `/ws` (the orapush protocol) and `/`
//! (the seed server's protocol). Before upgrading, in this order:
//! the Origin allow-list (403), the `?token=` (401 when it is bad), and the
//! connection limits, total and per client IP (503). Each upgraded
//! connection runs [`session::run`] under the process's task tracker, so
//! shutdown can wait for every socket to close.

pub mod protocol;
pub mod session;
pub mod upgrade;
mod wake_group;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use tungstenite::protocol::WebSocketConfig;

use crate::state::AppState;
use session::Mode;
use upgrade::WsUpgrade;

/// Bytes tungstenite gathers before it writes to the socket. Only the
/// session's own frames (replies, replays, pings, close) go through it; the
/// hub's frames are written from their shared bytes (see `session`).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Upgrades the request and runs the session.
pub fn upgrade(
    state: &AppState,
    upgrade: WsUpgrade,
    headers: &HeaderMap,
    peer: SocketAddr,
    query: Option<&str>,
    mode: Mode,
) -> Response {
    if !origin_allowed(state, headers) {
        state.metrics.limit_hit("origin");
        return (StatusCode::FORBIDDEN, "Origin not allowed (server.allowed_origins)\n").into_response();
    }
    let identity = match token_from_query(query) {
        Some(token) if state.session.access.enabled() => match state.session.access.verify(&token) {
            Ok(identity) => Some(identity),
            Err(e) => {
                state.metrics.limit_hit("bad_token");
                state.session.access.log_refusal(peer, &e);
                let body = Json(serde_json::json!({ "error": e.to_string() }));
                return (StatusCode::UNAUTHORIZED, body).into_response();
            }
        },
        _ => None,
    };
    let slot = match state.connections.acquire(peer.ip()) {
        Ok(slot) => slot,
        Err(limit) => {
            state.metrics.limit_hit(limit);
            let body = Json(
                serde_json::json!({ "error": format!("too many connections ({limit}); try again later") }),
            );
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
    };
    let settings = &state.settings.server;
    let conn = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let ctx = state.session.clone();
    let tracker = state.tracker.clone();
    let config = WebSocketConfig::default()
        .read_buffer_size(settings.read_buffer_bytes)
        // Replies and replays are flushed together once written; a small
        // buffer still batches them into few syscalls, and an idle
        // connection never allocates it.
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(settings.max_message_bytes * 4 + 64 * 1024)
        .max_message_size(Some(settings.max_message_bytes))
        .max_frame_size(Some(settings.max_message_bytes));
    upgrade.on_upgrade(config, move |socket| {
        tracker.track_future(async move {
            let _slot = slot;
            session::run(socket, conn, peer, mode, identity, ctx).await;
        })
    })
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
    query_values(query, "channel").collect()
}

fn token_from_query(query: Option<&str>) -> Option<String> {
    query_values(query, "token").next()
}

fn query_values<'a>(query: Option<&'a str>, key: &'a str) -> impl Iterator<Item = String> + 'a {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub type SharedContext = Arc<session::SessionContext>;

/// Counts open WebSocket connections, in total and per client IP.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place; giving it back happens on drop.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, open: Mutex::new((0, HashMap::new())) })
    }

    /// A slot, or the name of the limit that refused it.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max_total {
            return Err("connections");
        }
        let per_ip = open.1.entry(ip).or_insert(0);
        if *per_ip >= self.max_per_ip {
            return Err("connections_per_ip");
        }
        *per_ip += 1;
        open.0 += 1;
        Ok(ConnectionSlot { limits: self.clone(), ip })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots are limited in total and per IP, and come back on drop.
    #[test]
    fn connection_slots() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = limits.acquire(a).unwrap();
        let _s2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some("connections_per_ip"));
        let _s3 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).err(), Some("connections"));
        drop(s1);
        assert!(limits.acquire(a).is_ok());
    }

    /// Tokens and channels come from the query string.
    #[test]
    fn query_parsing() {
        assert_eq!(channels_from_query(Some("channel=a&token=t&channel=b")), vec!["a", "b"]);
        assert_eq!(token_from_query(Some("channel=a&token=t%2Bx")), Some("t+x".to_string()));
        assert_eq!(token_from_query(None), None);
    }
}
