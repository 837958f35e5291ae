//! `orapush subscribe`: a command-line WebSocket client for operators and
//! scripts (the compose end-to-end test uses it). It subscribes to channels
//! on `/ws`, prints every server frame as one JSON line, and exits 0 after
//! `count` messages. It exits 1, with a sentence on standard error, when the
//! server refuses a subscription or the token, when the connection ends, or
//! when `timeout` passes first.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::config::Settings;

pub struct SubscribeOptions {
    pub url: String,
    /// Sent as `?token=` when set.
    pub token: Option<String>,
    pub channels: Vec<String>,
    /// Stop after this many `message` frames (None: until closed).
    pub count: Option<usize>,
    pub timeout: Option<Duration>,
}

/// The `/ws` URL of the orapush a configuration describes: its
/// `server.listen` (a wildcard address is reached on loopback), `wss` when it
/// serves TLS.
pub fn url_for(settings: &Settings) -> anyhow::Result<String> {
    let mut addr = settings.listen_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if settings.server.tls_cert.is_some() { "wss" } else { "ws" };
    Ok(format!("{scheme}://{addr}/ws"))
}

/// The URL with the token appended as `?token=` (or `&token=`).
fn with_token(url: &str, token: Option<&str>) -> String {
    match token {
        None => url.to_owned(),
        Some(token) => {
            let encoded: String = form_urlencoded::byte_serialize(token.trim().as_bytes()).collect();
            let glue = if url.contains('?') { '&' } else { '?' };
            format!("{url}{glue}token={encoded}")
        }
    }
}

/// A close frame as a sentence: `server closed the connection (1001, going away)`.
pub fn describe_close(frame: Option<&CloseFrame>) -> String {
    let Some(frame) = frame else {
        return "server closed the connection (no close code)".into();
    };
    let code = u16::from(frame.code);
    let reason = if frame.reason.is_empty() { close_code_meaning(code) } else { frame.reason.as_str() };
    format!("server closed the connection ({code}, {reason})")
}

fn close_code_meaning(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1007 => "invalid data",
        1008 => "policy violation",
        1009 => "message too big",
        1011 => "server error",
        1013 => "try again later",
        4000 => "idle timeout",
        4001 => "token expired",
        _ => "no reason given",
    }
}

pub async fn subscribe(options: SubscribeOptions) -> anyhow::Result<()> {
    let url = with_token(&options.url, options.token.as_deref());
    let run = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("cannot connect to {}", options.url))?;
        for channel in &options.channels {
            let frame = serde_json::json!({ "op": "subscribe", "channel": channel });
            ws.send(Message::text(frame.to_string())).await?;
        }
        let mut messages = 0;
        while options.count.is_none_or(|n| messages < n) {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    println!("{text}");
                    let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    match frame["type"].as_str() {
                        Some("message") => messages += 1,
                        // This client only subscribes: any error is a refusal
                        // of what it asked for, and waiting would hang.
                        Some("error") => bail!(
                            "the server refused: {} ({})",
                            frame["message"].as_str().unwrap_or("no message"),
                            frame["code"].as_str().unwrap_or("no code")
                        ),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => bail!("{}", describe_close(frame.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("connection failed: {e}"),
                None => bail!("the connection ended"),
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    };
    match options.timeout {
        Some(limit) => tokio::time::timeout(limit, run)
            .await
            .with_context(|| format!("timed out after {} ms", limit.as_millis()))?,
        None => run.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    /// Close frames read as sentences, with the standard meaning when the server gave no reason.
    #[test]
    fn close_frames_read_as_sentences() {
        let frame =
            |code: u16, reason: &str| CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        assert_eq!(describe_close(Some(&frame(1001, ""))), "server closed the connection (1001, going away)");
        assert_eq!(
            describe_close(Some(&frame(1008, "bad token"))),
            "server closed the connection (1008, bad token)"
        );
        assert_eq!(describe_close(None), "server closed the connection (no close code)");
    }

    /// The token joins the URL's query, encoded.
    #[test]
    fn token_goes_on_the_url() {
        assert_eq!(with_token("ws://h/ws", Some("a.b+c\n")), "ws://h/ws?token=a.b%2Bc");
        assert_eq!(with_token("ws://h/ws?channel=x", Some("t")), "ws://h/ws?channel=x&token=t");
        assert_eq!(with_token("ws://h/ws", None), "ws://h/ws");
    }

    /// Without --url, the configuration's listen address is the target; a wildcard is reached on loopback.
    #[test]
    fn url_from_the_configuration() {
        let mut settings = Settings::default();
        settings.server.listen = "0.0.0.0:9000".into();
        assert_eq!(url_for(&settings).unwrap(), "ws://127.0.0.1:9000/ws");
        settings.server.listen = "localhost:9001".into();
        assert_eq!(url_for(&settings).unwrap(), "ws://127.0.0.1:9001/ws");
    }
}
