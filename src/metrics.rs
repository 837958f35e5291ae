//! Prometheus counters and gauges, registered once and shared by handle.
//!
//! Every module that changes a number holds a clone of [`Metrics`]; the
//! `/metrics` route renders the registry in the Prometheus text format.

use std::sync::Arc;

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

pub struct Inner {
    registry: Registry,
    /// Open WebSocket connections (both `/ws` and legacy `/`).
    pub connections: IntGauge,
    /// Channel subscriptions over all connections.
    pub subscriptions: IntGauge,
    /// Rows taken from the source and handed to the hub.
    pub messages_drained: IntCounter,
    /// Messages published through the HTTP API or `POST /`.
    pub messages_published_http: IntCounter,
    /// Frames queued to a subscriber.
    pub deliveries: IntCounter,
    /// Frames dropped because a subscriber's queue was full.
    pub dropped: IntCounter,
    /// Connections closed for being too slow.
    pub slow_consumers: IntCounter,
    /// Writes of queued frames that found a connection's kernel send
    /// buffer full and waited for the client to read.
    pub send_buffer_full: IntCounter,
    /// Frames the hub's writer wrote straight to an idle connection's
    /// socket, without a turn of its task (see `crate::direct`).
    pub direct_writes: IntCounter,
    /// Rows moved to the dead-letter table.
    pub dead_lettered: IntCounter,
    /// Errors talking to the source database.
    pub source_errors: IntCounter,
    /// Claims (outbox reads, or AQ dequeues) the drainer made: how busy
    /// the database is kept while idle.
    pub outbox_claims: IntCounter,
    /// Age of the oldest row in the last claimed batch (0 when idle).
    pub outbox_lag_seconds: Gauge,
    /// 1 while this instance holds the outbox and drains it.
    pub source_active: IntGauge,
    /// 1 while the source is connected.
    pub source_connected: IntGauge,
    /// Channels the hub knows (with subscribers or history).
    pub hub_channels: IntGauge,
    /// Frames kept for recovery, all channels together, and their bytes.
    pub hub_history_messages: IntGauge,
    pub hub_history_bytes: IntGauge,
    /// 1 while this node's Redis pub/sub connection is up (`broker.kind = "redis"`).
    pub broker_connected: IntGauge,
    /// Times that connection was lost.
    pub broker_disconnects: IntCounter,
    /// Messages in the AQ exception queue (AQ$_ORAPUSH_QT_E), checked once a
    /// minute by the `oracle_aq` drainer; 0 for other sources.
    pub aq_exception_messages: IntGauge,
    /// Refusals by limit: connections, connections_per_ip, subscriptions,
    /// frame_rate, handshake_timeout, bad_token, origin.
    pub limits_hit: IntCounterVec,
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let lag = Gauge::new("orapush_outbox_lag_seconds", "Age of the oldest row in the last claimed batch")
            .expect("valid metric");
        registry.register(Box::new(lag.clone())).expect("unique metric");
        let limits_hit = IntCounterVec::new(
            Opts::new("orapush_limits_hit_total", "Requests, connections or frames refused by a limit"),
            &["limit"],
        )
        .expect("valid metric");
        registry.register(Box::new(limits_hit.clone())).expect("unique metric");
        Self(Arc::new(Inner {
            connections: gauge("orapush_connections", "Open WebSocket connections"),
            subscriptions: gauge("orapush_subscriptions", "Channel subscriptions"),
            messages_drained: counter("orapush_messages_drained_total", "Rows drained from the source"),
            messages_published_http: counter(
                "orapush_messages_published_http_total",
                "Messages published over HTTP",
            ),
            deliveries: counter("orapush_messages_delivered_total", "Frames queued to subscribers"),
            dropped: counter("orapush_messages_dropped_total", "Frames dropped for full subscriber queues"),
            slow_consumers: counter(
                "orapush_slow_consumers_disconnected_total",
                "Connections closed for being too slow",
            ),
            send_buffer_full: counter(
                "orapush_send_buffer_full_total",
                "Writes of queued frames that found a connection's send buffer full and waited",
            ),
            direct_writes: counter(
                "orapush_direct_writes_total",
                "Frames written straight to idle connections' sockets, without waking their tasks",
            ),
            dead_lettered: counter(
                "orapush_messages_dead_lettered_total",
                "Rows moved to the dead-letter table",
            ),
            source_errors: counter("orapush_source_errors_total", "Errors talking to the source database"),
            outbox_claims: counter(
                "orapush_outbox_claims_total",
                "Claims (outbox reads or dequeues) the drainer made",
            ),
            outbox_lag_seconds: lag,
            source_active: gauge("orapush_source_active", "1 while this instance drains the outbox"),
            source_connected: gauge("orapush_source_connected", "1 while the source is connected"),
            hub_channels: gauge("orapush_hub_channels", "Channels the hub knows (subscribers or history)"),
            hub_history_messages: gauge("orapush_hub_history_messages", "Frames kept for recovery"),
            hub_history_bytes: gauge("orapush_hub_history_bytes", "Bytes of the frames kept for recovery"),
            broker_connected: gauge("orapush_broker_connected", "1 while the Redis pub/sub connection is up"),
            broker_disconnects: counter(
                "orapush_broker_disconnects_total",
                "Times the Redis connection was lost",
            ),
            aq_exception_messages: gauge(
                "orapush_aq_exception_queue_messages",
                "Messages AQ moved to the exception queue AQ$_ORAPUSH_QT_E (oracle_aq)",
            ),
            limits_hit,
            registry,
        }))
    }

    /// Counts one refusal by `limit`.
    pub fn limit_hit(&self, limit: &str) {
        self.limits_hit.with_label_values(&[limit]).inc();
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
