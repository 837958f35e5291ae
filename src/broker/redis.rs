//! The Redis broker's publish and recovery (see [`super`]).
//!
//! Keys of one channel share a hash tag, the channel name in braces, behind
//! a configurable prefix (several deployments can share one Redis, and a
//! later Redis Cluster mode needs no key migration):
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:{<channel>}:meta` | hash | `epoch`, `offset` (the last one given) |
//! | `<prefix>:{<channel>}:stream` | stream | the frames, id `<offset>-1`, capped at the history size |
//! | `<prefix>:{<channel>}:row:<source row>` | string | `epoch:offset` a source row got (idempotency) |
//! | `<prefix>:{<channel>}:live` | pub/sub channel | each frame as published |
//!
//! Channel names go to the script as keys and arguments, never into its
//! source. The stream expires `hub.history_ttl_s` after the channel's last
//! message, like the memory hub's history; the numbering (meta) and a row's
//! idempotency key live a day ([`ROW_KEY_TTL_S`]), so a quiet channel keeps
//! its epoch and no redelivery gets a second offset.
//!
//! A live message on the pub/sub channel is `<epoch>:<offset>:<n>:<target
//! user, n bytes><frame>`, so a node reads the numbering and the target
//! without parsing the frame ([`decode_live`]).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};
use serde_json::value::RawValue;

use crate::hub::Position;
use crate::message::Message;

/// How long a source row keeps the offset it got: far longer than a row
/// can wait to be handed over again after a crash.
pub const ROW_KEY_TTL_S: u64 = 24 * 3600;

/// Numbers one message, appends it to the channel's stream and publishes it
/// (or gives back what the row got before). See the module doc.
const PUBLISH_LUA: &str = r#"
-- KEYS: 1 meta, 2 stream, 3 row key (ignored unless ARGV[10] == '1')
-- ARGV: 1 live channel, 2 epoch if new, 3 history size, 4 ttl seconds,
--       5 channel (JSON string), 6 id (JSON string), 7 data (JSON),
--       8 target user key ('' for none), 9 row key ttl, 10 has row key
if ARGV[10] == '1' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, sep - 1), tonumber(string.sub(seen, sep + 1)), 0}
  end
end
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2]) == 1 then
  -- A new numbering: whatever stream is left belongs to the old one.
  redis.call('DEL', KEYS[2])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local frame = '{"type":"message","channel":' .. ARGV[5] .. ',"epoch":"' .. epoch .. '","offset":' .. offset
  .. ',"id":' .. ARGV[6] .. ',"data":' .. ARGV[7] .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-1', 'f', frame, 'u', ARGV[8])
-- The numbering outlives the history (ARGV[9], a day): a quiet channel
-- keeps its epoch, like in the memory hub; the frames go after the ttl.
redis.call('EXPIRE', KEYS[1], math.max(tonumber(ARGV[4]), tonumber(ARGV[9])))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. offset .. ':' .. string.len(ARGV[8]) .. ':' .. ARGV[8] .. frame)
if ARGV[10] == '1' then
  redis.call('SET', KEYS[3], epoch .. ':' .. offset, 'EX', ARGV[9])
end
return {epoch, offset, 1}
"#;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("Redis answered something unexpected: {0}")]
    Protocol(String),
}

/// Key names (see the module doc).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn meta(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:meta", self.prefix)
    }
    pub fn stream(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:stream", self.prefix)
    }
    pub fn live(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:live", self.prefix)
    }
    pub fn row(&self, channel: &str, row: &str) -> String {
        format!("{}:{{{channel}}}:row:{row}", self.prefix)
    }
}

/// One message to publish, with the source row it came from (None for
/// messages published over HTTP, which have no row to redeliver).
pub struct Publication<'a> {
    pub message: &'a Message,
    /// The row's identity across redeliveries, e.g. `sqlite:42`.
    pub row: Option<String>,
    /// `target_user` in the form `auth.user_case` compares.
    pub target_key: Option<String>,
}

/// The number a message got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub epoch: String,
    pub offset: u64,
    /// False when the row had been published before and got its number back.
    pub fresh: bool,
}

/// A channel's history after a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The channel's epoch (None: Redis has no numbering for it).
    pub epoch: Option<String>,
    /// The last offset given.
    pub offset: u64,
    /// True when `since` was given and every message after it is in `frames`.
    pub recovered: bool,
    /// `(offset, target user key, frame)`, in order.
    pub frames: Vec<(u64, Option<String>, String)>,
}

/// A live message as it arrives on a channel's pub/sub channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFrame<'a> {
    pub epoch: &'a str,
    pub offset: u64,
    pub target_key: Option<&'a str>,
    pub frame: &'a str,
}

/// Reads a live message (see the module doc); None when malformed.
pub fn decode_live(payload: &[u8]) -> Option<LiveFrame<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    let (epoch, rest) = text.split_once(':')?;
    let (offset, rest) = rest.split_once(':')?;
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let target = rest.get(..len)?;
    let frame = rest.get(len..)?;
    Some(LiveFrame {
        epoch,
        offset: offset.parse().ok()?,
        target_key: (!target.is_empty()).then_some(target),
        frame,
    })
}

/// Publishing and recovery on one Redis (reconnecting on its own). Cheap to
/// clone: clones share the connection.
#[derive(Clone)]
pub struct RedisBroker {
    conn: ConnectionManager,
    keys: Keys,
    script: Script,
    history_size: usize,
    history_ttl: Duration,
}

impl RedisBroker {
    /// Connects to `url` (`redis://`, `rediss://` for TLS, `redis+unix://`;
    /// a password in the URL is never logged).
    pub async fn connect(
        url: &str,
        prefix: &str,
        history_size: usize,
        history_ttl: Duration,
    ) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager().await?;
        Ok(Self {
            conn,
            keys: Keys::new(prefix),
            script: Script::new(PUBLISH_LUA),
            history_size,
            history_ttl,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A handle on the command connection (reconnecting on its own).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Numbers, keeps and publishes a batch, in order, in one round trip
    /// (one script call per message, pipelined). The batch is published when
    /// this returns Ok: only then may its rows leave the outbox.
    pub async fn publish(&mut self, batch: &[Publication<'_>]) -> Result<Vec<Numbered>, BrokerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match self.publish_pipelined(batch).await {
            // Redis restarted and forgot the script: load it and run the
            // batch again (rows keep their offsets: idempotent).
            Err(BrokerError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.script.prepare_invoke().load_async(&mut self.conn).await?;
                self.publish_pipelined(batch).await
            }
            other => other,
        }
    }

    async fn publish_pipelined(&mut self, batch: &[Publication<'_>]) -> Result<Vec<Numbered>, BrokerError> {
        let mut pipe = redis::pipe();
        let new_epoch = format!("{:08x}", rand::random::<u32>());
        for p in batch {
            let m = p.message;
            let channel_json = serde_json::to_string(&m.channel).expect("strings serialise");
            let id_json = serde_json::to_string(&m.id).expect("strings serialise");
            let row_key = p.row.as_deref().map(|row| self.keys.row(&m.channel, row));
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(3)
                .arg(self.keys.meta(&m.channel))
                .arg(self.keys.stream(&m.channel))
                .arg(row_key.as_deref().unwrap_or(&self.keys.meta(&m.channel)))
                .arg(self.keys.live(&m.channel))
                .arg(&new_epoch)
                .arg(self.history_size.max(1))
                .arg(self.history_ttl.as_secs().max(1))
                .arg(channel_json)
                .arg(id_json)
                .arg(RawValue::get(&m.data))
                .arg(p.target_key.as_deref().unwrap_or(""))
                .arg(ROW_KEY_TTL_S)
                .arg(if row_key.is_some() { "1" } else { "0" });
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn).await?;
        replies.iter().map(numbered).collect()
    }

    /// The channel's numbering and, after `since`, its history: everything
    /// after `since.offset` (`recovered`), or nothing when the stream cannot
    /// cover it (another epoch, a trimmed or expired stream).
    pub async fn history(&mut self, channel: &str, since: Option<&Position>) -> Result<History, BrokerError> {
        let from = since.map_or(u64::MAX, |s| s.offset.saturating_add(1));
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HMGET").arg(self.keys.meta(channel)).arg("epoch").arg("offset");
        if from != u64::MAX {
            pipe.cmd("XRANGE").arg(self.keys.stream(channel)).arg(format!("{from}-0")).arg("+");
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn).await?;
        let (epoch, offset): (Option<String>, Option<u64>) = redis::from_redis_value(replies[0].clone())
            .map_err(|e| BrokerError::Protocol(format!("HMGET: {e}")))?;
        let offset = offset.unwrap_or(0);
        let Some(since) = since else {
            return Ok(History { epoch, offset, recovered: false, frames: Vec::new() });
        };
        let same_epoch = epoch.as_deref() == Some(since.epoch.as_str());
        if !same_epoch || since.offset > offset {
            return Ok(History { epoch, offset, recovered: false, frames: Vec::new() });
        }
        let frames = stream_frames(&replies[1])?;
        // Recovered only when the stream still starts right after `since`.
        let complete =
            since.offset == offset || frames.first().is_some_and(|(o, _, _)| *o == since.offset + 1);
        let frames = if complete { frames } else { Vec::new() };
        Ok(History { epoch, offset, recovered: complete, frames })
    }
}

/// One script reply: `{epoch, offset, fresh}`.
fn numbered(reply: &Value) -> Result<Numbered, BrokerError> {
    let (epoch, offset, fresh): (String, u64, u8) = redis::from_redis_value(reply.clone())
        .map_err(|e| BrokerError::Protocol(format!("script reply: {e}")))?;
    Ok(Numbered { epoch, offset, fresh: fresh == 1 })
}

/// XRANGE entries `[id, [field, value, …]]` as `(offset, target, frame)`.
fn stream_frames(reply: &Value) -> Result<Vec<(u64, Option<String>, String)>, BrokerError> {
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::from_redis_value(reply.clone()).map_err(|e| BrokerError::Protocol(format!("XRANGE: {e}")))?;
    entries
        .into_iter()
        .map(|(id, fields)| {
            let offset = id
                .split_once('-')
                .and_then(|(o, _)| o.parse().ok())
                .ok_or_else(|| BrokerError::Protocol(format!("stream id {id:?}")))?;
            let mut frame = None;
            let mut target = None;
            for (name, value) in fields {
                match name.as_str() {
                    "f" => frame = Some(value),
                    "u" if !value.is_empty() => target = Some(value),
                    _ => {}
                }
            }
            let frame =
                frame.ok_or_else(|| BrokerError::Protocol(format!("stream entry {id} has no frame")))?;
            Ok((offset, target, frame))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of a channel shares its hash tag; the prefix leads.
    #[test]
    fn keys_share_the_channel_hash_tag() {
        let keys = Keys::new("app1");
        for key in [keys.meta("emp"), keys.stream("emp"), keys.live("emp"), keys.row("emp", "sqlite:42")] {
            assert!(key.starts_with("app1:{emp}:"), "{key}");
        }
    }

    /// The channel reaches the script only as a key or an argument.
    #[test]
    fn channel_names_are_never_script_source() {
        assert!(!PUBLISH_LUA.contains("{channel}"));
        assert!(PUBLISH_LUA.contains("KEYS[1]") && PUBLISH_LUA.contains("ARGV[5]"));
    }

    /// Live messages carry epoch, offset and target before the frame.
    #[test]
    fn live_messages_decode() {
        let live = decode_live(b"0a1b2c3d:7:5:scott{\"type\":\"message\"}").unwrap();
        assert_eq!(
            live,
            LiveFrame {
                epoch: "0a1b2c3d",
                offset: 7,
                target_key: Some("scott"),
                frame: "{\"type\":\"message\"}"
            }
        );
        let untargeted = decode_live(b"e:1:0:{}").unwrap();
        assert_eq!((untargeted.target_key, untargeted.frame), (None, "{}"));
        for bad in [&b"nope"[..], b"e:x:0:{}", b"e:1:9:ab", b"\xff:1:0:{}"] {
            assert!(decode_live(bad).is_none(), "{bad:?}");
        }
    }
}
