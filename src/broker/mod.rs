//! The broker: numbering (a channel's epoch and offsets), history, and
//! delivery between orapush nodes. The hub keeps the local fan-out
//! (sockets, per-connection queues, the overflow policy); a broker decides
//! what number a message gets and where its history lives.
//!
//! Today the hub numbers and keeps history itself, in memory (the
//! `memory` broker, the default). [`redis`] is the shared one for several
//! nodes, following Centrifugo's Redis broker: one Lua script per message
//! keeps the channel's epoch and offset in a hash, appends the frame to a
//! capped stream and PUBLISHes it; a source row handed over again after a
//! crash gets its first offset back instead of a second one. [`node`] is a
//! node's side: listening, gap filling, recovery, outages, reports.

pub mod node;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Settings;
use crate::hub::Hub;
use crate::metrics::Metrics;
use node::RedisNode;

/// The shared broker as the rest of the process sees it: set once Redis was
/// first reached (the node starts and serves without it, not ready, and
/// keeps trying in the background).
#[derive(Clone, Default)]
pub struct SharedBroker {
    node: Arc<OnceCell<RedisNode>>,
}

impl SharedBroker {
    /// The node, once connected at least once.
    pub fn node(&self) -> Option<&RedisNode> {
        self.node.get()
    }

    /// True while Redis is reachable for delivery.
    pub fn ready(&self) -> bool {
        self.node().is_some_and(RedisNode::connected)
    }

    /// Connects to Redis in the background, retrying with capped backoff
    /// until it answers (or `stop` fires).
    pub fn start(settings: &Settings, hub: Hub, metrics: Metrics, stop: CancellationToken) -> Self {
        let shared = Self::default();
        let cell = shared.node.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = RedisNode::start(
                    &settings.redis,
                    settings.source.kind,
                    hub.clone(),
                    settings.hub.history_size,
                    Duration::from_secs(settings.hub.history_ttl_s),
                    settings.auth.user_case,
                    metrics.clone(),
                    stop.clone(),
                );
                let result = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = started => r,
                };
                match result {
                    Ok(node) => {
                        info!(redis = %settings.redis.describe(), "Redis broker connected");
                        let _ = cell.set(node);
                        return;
                    }
                    Err(e) => {
                        warn!(redis = %settings.redis.describe(), error = %e, "Redis unreachable; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        shared
    }
}
