//! The WebSocket handshake (RFC 6455 section 4.2) on hyper's upgrade,
//! handing the session tokio-tungstenite's stream over the upgraded
//! connection itself.
//!
//! axum's `WebSocketUpgrade` keeps the socket behind its own `WebSocket`
//! type; the session needs the socket to write the hub's pre-encoded frames
//! to it directly (see [`crate::wire`]). The refusals follow axum's: 405
//! for a method other than GET; 400 when `Connection` does not list
//! `upgrade` or `Upgrade` does not list `websocket` (as token lists, where
//! axum matches substrings), when `Sec-WebSocket-Version` is not 13 (with
//! a `Sec-WebSocket-Version: 13` header, RFC 6455 section 4.4) or when
//! `Sec-WebSocket-Key` is missing; 426 when hyper cannot upgrade the
//! connection (HTTP/1.0). No subprotocol is negotiated. The accept key is
//! tungstenite's.
//!
//! Over plain TCP, the upgraded connection is taken back out of hyper's
//! `Upgraded` (a boxed stream, with the bytes hyper read past the request
//! replayed by tungstenite), so the session holds the `TcpStream` itself
//! and writes the hub's frames with one `sendmsg` on it
//! ([`Socket::try_send_vectored`]), without tokio's readiness check: at
//! 10,000 subscribers that boxed stream and the registration's readiness
//! were memory every delivery had to fetch again. While the session is
//! idle it lends that socket's descriptor to its queue, for the hub's
//! writer ([`Socket::plain_fd`], see [`crate::direct`]). A TLS
//! connection's bytes must go through rustls; it stays an `Upgraded`.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;
use tracing::debug;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

/// The session's side of an upgraded connection.
pub struct Socket {
    /// tokio-tungstenite's stream over the connection: a plain TCP
    /// stream, or hyper's `Upgraded` over TLS.
    pub stream: WebSocketStream<Either<TcpStream, TokioIo<Upgraded>>>,
}

impl Socket {
    /// The plain TCP socket's descriptor, for lending to the connection's
    /// queue (see [`crate::direct`]); `None` over TLS.
    pub fn plain_fd(&self) -> Option<RawFd> {
        match self.stream.get_ref() {
            Either::Left(tcp) => Some(tcp.as_raw_fd()),
            Either::Right(_) => None,
        }
    }

    /// Writes what a plain TCP socket takes of `slices` at once, with one
    /// non-blocking `sendmsg`, bypassing tungstenite and tokio's readiness
    /// (tungstenite's own buffered bytes must have been flushed first).
    /// `None` over TLS; else the bytes taken, or `WouldBlock` when the
    /// send buffer is full. A caller that got `WouldBlock` waits through
    /// `stream`'s writer, whose next write finds the buffer full too and
    /// waits for room.
    pub fn try_send_vectored(&self, slices: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        match self.stream.get_ref() {
            Either::Left(tcp) => Some(crate::wire::send_nonblocking(tcp, slices)),
            Either::Right(_) => None,
        }
    }
}

/// A valid WebSocket upgrade request, not yet answered.
pub struct WsUpgrade {
    accept_key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug)]
pub struct WsUpgradeRejection {
    status: StatusCode,
    reason: &'static str,
    /// Answers `Sec-WebSocket-Version: 13`, the version spoken here.
    names_the_version: bool,
}

impl IntoResponse for WsUpgradeRejection {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.reason).into_response();
        if self.names_the_version {
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

fn refuse(status: StatusCode, reason: &'static str) -> WsUpgradeRejection {
    WsUpgradeRejection { status, reason, names_the_version: false }
}

/// True when the comma-separated header `name` lists `token` (any case).
fn header_lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|item| item.trim().eq_ignore_ascii_case(token)))
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = WsUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "Request method must be `GET`"));
        }
        if !header_lists(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refuse(StatusCode::BAD_REQUEST, "Connection header did not include 'upgrade'"));
        }
        if !header_lists(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse(StatusCode::BAD_REQUEST, "`Upgrade` header did not include 'websocket'"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            let reason = "`Sec-WebSocket-Version` header did not include '13'";
            return Err(WsUpgradeRejection {
                names_the_version: true,
                ..refuse(StatusCode::BAD_REQUEST, reason)
            });
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` header missing"));
        };
        let accept_key = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("a base64 accept key is a valid header value");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ));
        };
        Ok(Self { accept_key, on_upgrade })
    }
}

impl WsUpgrade {
    /// Answers 101 and, once hyper hands the connection over, runs
    /// `session` on it, on a task of its own. A connection that fails
    /// before that (the client went away) drops `session` unrun.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    debug!(error = %e, "the WebSocket upgrade did not complete");
                    return;
                }
            };
            // The listener serves plain connections as `TokioIo<TcpStream>`.
            let (io, read_ahead) = match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => (Either::Left(parts.io.into_inner()), parts.read_buf.to_vec()),
                Err(tls) => (Either::Right(TokioIo::new(tls)), Vec::new()),
            };
            let stream =
                WebSocketStream::from_partially_read(io, read_ahead, Role::Server, Some(config)).await;
            session(Socket { stream }).await;
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept_key);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connection and Upgrade are token lists, compared without case.
    #[test]
    fn header_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(header_lists(&headers, header::CONNECTION, "upgrade"));
        assert!(!header_lists(&headers, header::UPGRADE, "websocket"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(header_lists(&headers, header::UPGRADE, "websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!header_lists(&headers, header::CONNECTION, "upgrade"));
    }
}
