//! The accept loop: TCP (or TLS, with `server.tls_cert`/`tls_key`), HTTP/1
//! and HTTP/2 through hyper, WebSocket upgrades, the peer address for the
//! per-IP limit, and a graceful stop.
//!
//! A client must finish its TLS handshake and send its request headers
//! within `server.handshake_timeout_ms`, or the connection is closed
//! (slowloris). Upgraded WebSockets leave hyper at the upgrade; their
//! sessions are tracked and stopped by [`crate::server`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
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

/// Serves `app` on `listener` until `stop` fires, then lets in-flight HTTP
/// requests finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    stop: CancellationToken,
    drain: Duration,
    metrics: Metrics,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(handshake_timeout);
    builder.http2().timer(TokioTimer::new());
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
        let connection =
            Connection { stream, peer, app: app.clone(), tls: tls.clone(), builder: builder.clone() };
        let watcher = graceful.watcher();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(why) = connection.serve(watcher, handshake_timeout).await {
                if why == "handshake_timeout" {
                    metrics.limit_hit("handshake_timeout");
                }
                debug!(%peer, why, "connection ended early");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        warn!("some HTTP requests were still running at shutdown");
    }
}

/// One accepted connection, served until it ends or the stop drains it.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    builder: Builder<TokioExecutor>,
}

impl Connection {
    async fn serve(self, watcher: Watcher, handshake_timeout: Duration) -> Result<(), &'static str> {
        let Connection { stream, peer, app, tls, builder } = self;
        let service = TowerToHyperService::new(app.map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        }));
        match tls {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                watcher.watch(conn).await.map_err(|_| "http error")
            }
            Some(acceptor) => {
                let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(_)) => return Err("tls handshake failed"),
                    Err(_) => return Err("handshake_timeout"),
                };
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                watcher.watch(conn).await.map_err(|_| "http error")
            }
        }
    }
}
