//! A WebSocket handshake written by hand on a plain TCP socket, for peers
//! that must misbehave (tests) or must cost almost nothing (the bench).
//! Shared by `tests/common` and `benches/bridge.rs`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends the upgrade request and reads up to the end of the 101 response.
pub async fn upgrade_raw(stream: &mut TcpStream, host: &str, path: &str) {
    try_upgrade_raw(stream, host, path).await.unwrap();
}

/// [`upgrade_raw`], giving back an I/O error (a connection reset while a
/// loopback accept queue overflowed) instead of panicking.
pub async fn try_upgrade_raw(stream: &mut TcpStream, host: &str, path: &str) -> std::io::Result<()> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let head = read_response_head(stream).await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    Ok(())
}

/// Reads an HTTP response head, up to and including its blank line, and
/// nothing after it (the WebSocket frames that follow stay unread).
pub async fn read_response_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
