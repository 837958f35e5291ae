//! [`run`]: starts the source, the hub and the HTTP/WebSocket server on a
//! listener the caller bound, and owns the one shutdown path.
//!
//! Shutdown (the caller's future resolves, or the source fails fatally):
//! 1. the drainer stops claiming and finishes the batch in hand (hand-over,
//!    delete, commit), so no row is deleted that the hub did not get;
//! 2. every session writes what is already queued and closes with 1001;
//! 3. the listener stops; `run` returns once all sessions are done.
//!
//! The whole of it, from the request to `run`'s return, fits in
//! `server.shutdown_timeout_ms` plus [`SHUTDOWN_MARGIN`], whatever the
//! clients do: a socket that reads nothing is cut off at the deadline, and a
//! source still inside a database wait is left behind (its unfinished batch
//! stays in the outbox: at-least-once).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Access;
use crate::broker::SharedBroker;
use crate::config::BrokerKind;
use crate::config::{Settings, SourceKind};
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;
use crate::source::drain::{self, DrainConfig, Handoff};
use crate::source::oracle::aq::OracleAq;
use crate::source::oracle::outbox::OracleOutbox;
use crate::source::oracle::SessionSource;
use crate::source::postgres::PgOutbox;
use crate::source::sqlite::SqliteOutbox;
use crate::source::{OutboxStore, SourceError, SourceStatus, Stopper};
use crate::state::AppState;
use crate::ws::session::{SessionConfig, SessionContext};
use crate::ws::ConnectionLimits;

/// What shutdown may take beyond `server.shutdown_timeout_ms`: stopping the
/// listener and returning.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_millis(250);

/// Runs orapush until `shutdown` resolves (Ok) or the source fails fatally (Err).
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let local_addr = listener.local_addr().context("reading the listener's address")?;
    let metrics = Metrics::new();
    let hub = Hub::new(
        HubConfig::from_settings(&settings.hub, settings.auth.user_case),
        settings.legacy_patterns(),
        metrics.clone(),
    );
    if let Some(path) = settings.hub_state_path() {
        match hub.load(&path) {
            Ok(0) => {}
            Ok(channels) => {
                info!(path = %path.display(), channels, "resumed the channels saved at the last stop")
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not load the saved channels; starting new epochs")
            }
        }
    }
    let sweeper = tokio::spawn(sweep_history(hub.clone()));
    let source_status = SourceStatus::default();

    // Stops the broker's tasks; cancelled after the sockets are closed.
    let broker_stop = CancellationToken::new();
    let broker = (settings.broker.kind == BrokerKind::Redis)
        .then(|| SharedBroker::start(&settings, hub.clone(), metrics.clone(), broker_stop.clone()));

    let (handoff, batches) = Handoff::channel();
    let flush_wait = Duration::from_millis(settings.source.flush_wait_ms);
    let dispatcher = tokio::spawn(drain::dispatch(
        batches,
        hub.clone(),
        broker.clone(),
        metrics.clone(),
        flush_wait,
        settings.hub_state_path(),
    ));
    let stopper = Stopper::default();
    let mut drainer_done =
        start_source(&settings, handoff, source_status.clone(), metrics.clone(), stopper.clone())
            .context("starting the source")?;

    let access = Access::from_settings(&settings.auth).context("authentication settings")?;
    let tls = match (&settings.server.tls_cert, &settings.server.tls_key) {
        (Some(cert), Some(key)) => Some(crate::listener::tls_acceptor(cert, key)?),
        _ => None,
    };
    let sessions_stop = CancellationToken::new();
    let server = &settings.server;
    let session = Arc::new(SessionContext {
        hub: hub.clone(),
        broker: broker.clone(),
        metrics: metrics.clone(),
        access,
        config: Arc::new(SessionConfig {
            ping_interval: Duration::from_millis(server.ping_interval_ms),
            client_timeout: Duration::from_millis(server.client_timeout_ms),
            write_timeout: Duration::from_millis(server.write_timeout_ms),
            queue_size: settings.hub.subscriber_queue_size,
            shutdown_flush: Duration::from_millis(server.shutdown_timeout_ms),
            max_subscriptions: server.max_subscriptions_per_connection,
            frames_per_second: server.max_frames_per_second,
        }),
        shutdown: sessions_stop.clone(),
    });
    let tracker = TaskTracker::new();
    let state = AppState {
        settings: settings.clone(),
        hub: hub.clone(),
        broker,
        metrics,
        source_status,
        session,
        tracker: tracker.clone(),
        next_conn_id: Arc::new(AtomicU64::new(1)),
        shutting_down: Arc::new(AtomicBool::new(false)),
        local_addr,
        next_http_id: Arc::new(AtomicU64::new(0)),
        connections: ConnectionLimits::new(server.max_connections, server.max_connections_per_ip),
        started: std::time::Instant::now(),
    };
    let listener_stop = CancellationToken::new();
    let http = tokio::spawn(crate::listener::serve(
        listener,
        crate::http::router(state.clone()),
        tls,
        crate::listener::AcceptOptions {
            handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
            send_buffer_bytes: server.socket_send_buffer_bytes,
            drain: Duration::from_millis(server.shutdown_timeout_ms),
        },
        listener_stop.clone(),
        state.metrics.clone(),
    ));
    info!(addr = %local_addr, source = ?settings.source.kind, "orapush running");

    tokio::pin!(shutdown);
    let shutdown_timeout = Duration::from_millis(settings.server.shutdown_timeout_ms);
    let (source_result, deadline) = tokio::select! {
        _ = &mut shutdown => {
            info!("shutdown requested; finishing the batch in hand");
            let deadline = Instant::now() + shutdown_timeout;
            stopper.stop();
            match tokio::time::timeout_at(deadline, &mut drainer_done).await {
                Ok(result) => (result, deadline),
                Err(_) => {
                    warn!("the source did not stop in time; a batch in hand stays in the outbox");
                    (Ok(Ok(())), deadline)
                }
            }
        }
        result = &mut drainer_done => (result, Instant::now() + shutdown_timeout),
    };
    state.shutting_down.store(true, Ordering::Relaxed);
    stopper.stop();
    let source_result =
        source_result.unwrap_or_else(|_| Err(SourceError::fatal("the source thread panicked")));

    // The source is quiet now: close the sockets, then the listener.
    sessions_stop.cancel();
    listener_stop.cancel();
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
        warn!("some connections did not close in time; cutting them off");
    }
    match tokio::time::timeout_at(deadline + SHUTDOWN_MARGIN, http).await {
        Ok(Err(e)) => warn!(error = %e, "HTTP server task failed"),
        Err(_) => warn!("HTTP server did not stop in time"),
        Ok(Ok(())) => {}
    }
    dispatcher.abort();
    sweeper.abort();
    broker_stop.cancel();
    info!("orapush stopped");
    source_result.map_err(|e| anyhow::anyhow!("source: {e}"))
}

/// Applies the history's time limit and memory budget once a second.
async fn sweep_history(hub: Hub) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        hub.sweep();
    }
}

/// Starts the configured source's drainer thread, which connects by itself;
/// the receiver resolves when the thread ends (a fatal error ends it early,
/// and `run` with it).
fn start_source(
    settings: &Arc<Settings>,
    handoff: Handoff,
    status: SourceStatus,
    metrics: Metrics,
    stopper: Stopper,
) -> anyhow::Result<oneshot::Receiver<Result<(), SourceError>>> {
    let config = DrainConfig {
        batch_size: settings.source.batch_size,
        max_message_bytes: settings.server.max_message_bytes,
        poll_interval: settings.source.poll_interval(),
        max_backoff: Duration::from_millis(settings.source.max_backoff_ms),
        standby_retry: Duration::from_millis(settings.source.standby_retry_ms),
    };
    let drainer = Drainer { handoff, config, status, metrics, stopper };
    match settings.source.kind {
        SourceKind::Sqlite => {
            let sqlite = settings.sqlite.clone();
            info!(path = %sqlite.path.display(), "SQLite outbox");
            drainer.spawn(move || SqliteOutbox::open_for_draining(&sqlite))
        }
        SourceKind::Postgres => {
            let pg = settings.postgres.clone();
            info!(url = %PgOutbox::describe(&pg), schema = %pg.schema, "PostgreSQL outbox");
            drainer.spawn(move || PgOutbox::connect(&pg))
        }
        SourceKind::OracleOutbox => {
            let mut sessions = SessionSource::new(&settings.oracle, "drain outbox");
            info!(connect = %settings.oracle.connect_string, schema = %settings.oracle.schema, "Oracle outbox");
            drainer.spawn(move || OracleOutbox::connect(&mut sessions))
        }
        SourceKind::OracleAq => {
            let mut sessions = SessionSource::new(&settings.oracle, "dequeue");
            let metrics = drainer.metrics.clone();
            info!(connect = %settings.oracle.connect_string, queue = %settings.oracle.qualified_queue(), "Oracle AQ");
            drainer.spawn(move || OracleAq::connect(&mut sessions, metrics.clone()))
        }
    }
}

/// What every drainer thread gets, whatever its store.
struct Drainer {
    handoff: Handoff,
    config: DrainConfig,
    status: SourceStatus,
    metrics: Metrics,
    stopper: Stopper,
}

impl Drainer {
    fn spawn<S, F>(self, connect: F) -> anyhow::Result<oneshot::Receiver<Result<(), SourceError>>>
    where
        S: OutboxStore + 'static,
        F: FnMut() -> Result<S, SourceError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new().name("orapush-source".into()).spawn(move || {
            let Drainer { handoff, config, status, metrics, stopper } = self;
            let result = drain::run_drainer(connect, handoff, config, status, metrics, stopper);
            let _ = done_tx.send(result);
        })?;
        Ok(done_rx)
    }
}
