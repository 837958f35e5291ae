//! The accept loop: TCP (or TLS, with `server.tls_cert`/`tls_key`), HTTP/1.1
//! through hyper (WebSockets upgrade over HTTP/1.1; the routes need nothing
//! more), WebSocket upgrades, the peer address for the per-IP limit, and a
//! graceful stop.
//!
//! A client must finish its TLS handshake and send its request headers
//! within `server.handshake_timeout_ms`, or the connection is closed
//! (slowloris). Upgraded WebSockets leave hyper at the upgrade; their
//! sessions are tracked and stopped by [`crate::server`].
//!
//! Each accepted socket gets `TCP_NODELAY` and, unless
//! `server.socket_send_buffer_bytes` is 0, a fixed kernel send buffer: a
//! client that stops reading fills it (16 KiB by default, which Linux
//! doubles) and then its connection's queue, and the hub closes it (1013),
//! instead of the kernel growing the buffer to `net.ipv4.tcp_wmem`'s
//! maximum (4 MiB by default) for every stalled client, at the cost of
//! every other one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Builds the TLS acceptor from PEM files; errors name the key at fault.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .with_context(|| format!("`server.tls_cert` = {}: not a PEM certificate chain", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("`server.tls_key` = {}: not a PEM private key", key.display()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("`server.tls_cert` and `server.tls_key` do not make a usable pair")?;
    // WebSockets upgrade over HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How accepted connections are set up and stopped.
#[derive(Debug, Clone, Copy)]
pub struct AcceptOptions {
    /// `server.handshake_timeout_ms`: TLS and request headers.
    pub handshake_timeout: Duration,
    /// `server.socket_send_buffer_bytes`: the kernel's send buffer per
    /// socket (0: the kernel's autotuning).
    pub send_buffer_bytes: usize,
    /// How long in-flight HTTP requests may finish after the stop.
    pub drain: Duration,
}

/// Serves `app` on `listener` until `stop` fires, then lets in-flight HTTP
/// requests finish for up to `options.drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    options: AcceptOptions,
    stop: CancellationToken,
    metrics: Metrics,
) {
    let AcceptOptions { handshake_timeout, send_buffer_bytes, drain } = options;
    let connections = TaskTracker::new();
    let mut builder = Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(handshake_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: back off, do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Pushes are small and latency-bound: never let Nagle hold one back.
        let _ = stream.set_nodelay(true);
        if send_buffer_bytes > 0 {
            set_send_buffer(&stream, send_buffer_bytes, peer);
        }
        let connection =
            Connection { stream, peer, app: app.clone(), tls: tls.clone(), builder: builder.clone() };
        let stop = stop.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            if let Err(why) = connection.serve(stop, handshake_timeout).await {
                if why == "handshake_timeout" {
                    metrics.limit_hit("handshake_timeout");
                }
                debug!(%peer, why, "connection ended early");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait()).await.is_err() {
        warn!("some HTTP requests were still running at shutdown");
    }
}

/// Gives `stream` a fixed kernel send buffer of `bytes`. Linux caps it at
/// `net.core.wmem_max` without an error (and reports twice what it keeps),
/// so the value is read back, and a cut is logged once.
fn set_send_buffer(stream: &TcpStream, bytes: usize, peer: SocketAddr) {
    static CUT_LOGGED: AtomicBool = AtomicBool::new(false);
    let socket = socket2::SockRef::from(stream);
    if let Err(e) = socket.set_send_buffer_size(bytes) {
        debug!(%peer, error = %e, "could not set the socket's send buffer");
        return;
    }
    let kept = match socket.send_buffer_size() {
        Ok(reported) if cfg!(target_os = "linux") => reported / 2,
        Ok(reported) => reported,
        Err(_) => return,
    };
    if kept < bytes && !CUT_LOGGED.swap(true, Ordering::Relaxed) {
        warn!(
            asked = bytes,
            kept,
            "the kernel cut server.socket_send_buffer_bytes (raise net.core.wmem_max, or lower the key)"
        );
    }
}

/// One accepted connection, served until it ends or the stop drains it.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    builder: Builder,
}

impl Connection {
    /// Serves the connection; on stop, lets the request in hand finish.
    async fn serve(self, stop: CancellationToken, handshake_timeout: Duration) -> Result<(), &'static str> {
        let Connection { stream, peer, app, tls, builder } = self;
        let service = WithPeer { app, peer };
        // Plain and TLS streams stay separate types: an enum of both would
        // make every plain connection as large as a TLS one.
        match tls {
            None => drive(&builder, stream, service, stop).await,
            Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => drive(&builder, stream, service, stop).await,
                Ok(Err(_)) => Err("tls handshake failed"),
                Err(_) => Err("handshake_timeout"),
            },
        }
    }
}

/// The router, with the peer address added to every request (for the
/// per-IP limit, read through axum's `ConnectInfo`).
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let mut app = self.app.clone();
        tower::Service::call(&mut app, request)
    }
}

/// Runs one HTTP/1.1 connection (with upgrades) until it ends or `stop`.
async fn drive<I>(
    builder: &Builder,
    io: I,
    service: WithPeer,
    stop: CancellationToken,
) -> Result<(), &'static str>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result.map_err(http_failure),
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await.map_err(http_failure)
        }
    }
}

/// Names a connection's failure; hyper's header-read timeout is the slowloris limit.
fn http_failure(e: hyper::Error) -> &'static str {
    if e.is_timeout() {
        "handshake_timeout"
    } else {
        "http error"
    }
}
