//! `orapush subscribe`: a command-line WebSocket client for operators and
//! scripts (the compose end-to-end test uses it). It subscribes to channels
//! on `/ws`, prints every server frame as one JSON line, and exits 0 after
//! `count` messages, or 1 when the connection ends or `timeout` passes first.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

pub struct SubscribeOptions {
    pub url: String,
    pub channels: Vec<String>,
    /// Stop after this many `message` frames (None: until closed).
    pub count: Option<usize>,
    pub timeout: Option<Duration>,
}

pub async fn subscribe(options: SubscribeOptions) -> anyhow::Result<()> {
    let run = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(&options.url)
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
                    if frame["type"] == "message" {
                        messages += 1;
                    }
                }
                Some(Ok(Message::Close(frame))) => bail!("the server closed the connection: {frame:?}"),
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
