//! Hostile input from raw TCP sockets (not a WebSocket library, which would
//! refuse to send it), and the limits that protect the server: every abuse
//! gets its RFC 6455 close code or a timeout close, memory stays bounded,
//! nothing panics, and the connection count returns to its baseline.

mod common;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client frame: first byte (FIN, RSV, opcode), payload, masked or not,
/// and optionally a declared length that differs from the payload's.
fn frame(first: u8, payload: &[u8], masked: bool, declared: Option<u64>) -> Vec<u8> {
    let len = declared.unwrap_or(payload.len() as u64);
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as u64 {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Each protocol violation gets its RFC 6455 close code; memory stays bounded; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_abuse_gets_rfc6455_close_codes() {
    let server = Server::start_with(|s| s.server.max_message_bytes = 2048).await;
    let rss_before = rss_kib();
    let cases: Vec<(&str, Vec<Vec<u8>>, u16)> = vec![
        ("unmasked client frame", vec![frame(0x81, br#"{"op":"ping"}"#, false, None)], 1002),
        ("reserved bit RSV1", vec![frame(0xC1, br#"{"op":"ping"}"#, true, None)], 1002),
        ("reserved opcode 0x3", vec![frame(0x83, b"x", true, None)], 1002),
        ("control frame over 125 bytes", vec![frame(0x89, &[0u8; 126], true, None)], 1002),
        ("fragmented control frame", vec![frame(0x09, b"x", true, None)], 1002),
        ("invalid UTF-8 text", vec![frame(0x81, &[0xff, 0xfe, 0x41], true, None)], 1007),
        ("header declaring 100 MiB", vec![frame(0x81, b"", true, Some(100 * 1024 * 1024))], 1009),
        (
            "fragmented message over the limit",
            vec![frame(0x01, &[b'a'; 1500], true, None), frame(0x00, &[b'a'; 1500], true, None)],
            1009,
        ),
    ];
    for (what, frames, code) in cases {
        let mut raw = raw_websocket(server.addr, "/ws").await;
        for f in frames {
            raw.write_all(&f).await.unwrap();
        }
        let (got, _) = raw_read_until_close(&mut raw).await;
        assert_eq!(got, code, "{what}");
    }
    assert!(rss_kib() < rss_before + 64 * 1024, "memory grew by {} KiB", rss_kib() - rss_before);
    wait_for_metric(server.addr, "orapush_connections 0").await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    insert(&server.db, &[("emp", "still serving")]);
    assert_eq!(next_json(&mut ws).await["data"], json!({"message": "still serving"}));
    server.stop().await.unwrap();
}

/// A client that never finishes its handshake (or never speaks) is cut off after server.handshake_timeout_ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_handshakes_time_out() {
    let server = Server::start_with(|s| s.server.handshake_timeout_ms = 300).await;
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").await.unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    for stream in [&mut partial, &mut silent] {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(PATIENCE, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // a 408 may come first
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the slow client was never cut off");
    }
    wait_for_metric(server.addr, "orapush_limits_hit_total{limit=\"handshake_timeout\"} 2").await;
    server.stop().await.unwrap();
}

/// Over server.max_connections (or per IP) the upgrade gets 503, and the connections already open keep receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_with_503() {
    let server = Server::start_with(|s| {
        s.server.max_connections = 3;
        s.server.max_connections_per_ip = 2;
    })
    .await;
    let mut a = connect(&server.ws_url("/ws?channel=emp")).await;
    let mut b = connect(&server.ws_url("/ws?channel=emp")).await;
    let refused = tokio_tungstenite::connect_async(server.ws_url("/ws")).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503),
        "per IP"
    );
    // Another source address has its own per-IP budget, until the total cap.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(socket.connect(server.addr).await.unwrap());
    let (mut c, _) = tokio_tungstenite::client_async(server.ws_url("/ws?channel=emp"), stream).await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let refused = tokio_tungstenite::client_async(server.ws_url("/ws"), stream).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503),
        "total"
    );
    for ws in [&mut a, &mut b] {
        assert_eq!(next_json(ws).await["type"], "subscribed");
    }
    assert_eq!(next_json(&mut c).await["type"], "subscribed");
    let ids = insert(&server.db, &[("emp", "x")]);
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(next_json(ws).await["id"], ids[0].to_string());
    }
    let metrics = http_body(server.addr, "/metrics").unwrap();
    assert!(metrics.contains("orapush_limits_hit_total{limit=\"connections\"} 1"), "{metrics}");
    assert!(metrics.contains("orapush_limits_hit_total{limit=\"connections_per_ip\"} 1"), "{metrics}");
    drop(a);
    wait_for_metric(server.addr, "orapush_connections 2").await;
    connect(&server.ws_url("/ws")).await;
    server.stop().await.unwrap();
}

/// Subscriptions per connection and frames per second are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_and_frame_rate_limits() {
    let server = Server::start_with(|s| {
        s.server.max_subscriptions_per_connection = 2;
        s.server.max_frames_per_second = 5;
    })
    .await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "a").await;
    subscribe(&mut ws, "b").await;
    send_json(&mut ws, json!({"op": "subscribe", "channel": "c"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "limit");
    // Three frames so far; a burst of 100 more exceeds 5 per second. The
    // server closes while frames are still coming: the client must still
    // read the error and the close frame (not a reset). Sends after the
    // close may fail, and that is fine.
    for _ in 0..100 {
        use futures_util::SinkExt;
        let ping = tokio_tungstenite::tungstenite::Message::text(json!({"op": "ping"}).to_string());
        if ws.send(ping).await.is_err() {
            break;
        }
    }
    let mut saw_rate_limited = false;
    let code = loop {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => saw_rate_limited |= t.contains("rate_limited"),
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert!(saw_rate_limited);
    assert_eq!(code, Some(1008));
    server.stop().await.unwrap();
}

/// With server.tls_cert/tls_key, orapush serves wss:// directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss() {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let server = Server::start_unready(dir, db, |s| {
        s.server.tls_cert = Some(fixtures.join("tls_cert.pem"));
        s.server.tls_key = Some(fixtures.join("tls_key.pem"));
    })
    .await;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixtures.join("tls_cert.pem")).unwrap()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let url = format!("wss://localhost:{}/ws?channel=secure", server.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let reply: serde_json::Value = {
        use futures_util::StreamExt;
        let msg = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap().unwrap().unwrap();
        serde_json::from_str(msg.to_text().unwrap()).unwrap()
    };
    assert_eq!(reply["type"], "subscribed");
    // Plain HTTP on the TLS port is not served.
    assert_eq!(http_status(server.addr, "/healthz"), None);
    server.stop().await.unwrap();
}
