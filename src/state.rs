//! The cheap-clone handle every HTTP and WebSocket handler shares.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::broker::SharedBroker;
use crate::config::Settings;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::source::SourceStatus;
use crate::ws::{ConnectionLimits, SharedContext};

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub hub: Hub,
    /// The shared broker (`broker.kind = "redis"`), or None: the hub numbers.
    pub broker: Option<SharedBroker>,
    pub metrics: Metrics,
    /// Whether the source is connected (for `/readyz`).
    pub source_status: SourceStatus,
    /// What every session shares: hub, limits, the shutdown token.
    pub session: SharedContext,
    /// Tracks every WebSocket session so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Source of connection ids.
    pub next_conn_id: Arc<AtomicU64>,
    /// Set once shutdown began; `/readyz` then answers 503.
    pub shutting_down: Arc<AtomicBool>,
    /// The address actually bound (port 0 resolved).
    pub local_addr: SocketAddr,
    /// Counter for ids of messages published over HTTP.
    pub next_http_id: Arc<AtomicU64>,
    /// Open WebSocket connections, in total and per client IP.
    pub connections: Arc<ConnectionLimits>,
    /// When the server started (for `/api/status`'s uptime).
    pub started: std::time::Instant,
}

impl AppState {
    /// True when the listener only accepts local connections.
    pub fn listens_on_loopback(&self) -> bool {
        self.local_addr.ip().is_loopback()
    }
}
