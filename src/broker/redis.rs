//! The Redis broker's publish and recovery (see [`super`]).
//!
//! Keys of one channel share a hash tag, the channel name in braces, behind
//! a configurable prefix (several deployments can share one Redis, and a
//! later Redis Cluster mode needs no key migration):
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:{<channel>}:meta` | hash | `epoch`, `offset` (the last one given), `records` (the last record id given) |
//! | `<prefix>:{<channel>}:stream` | stream | one entry per script call: id `<its last offset>-1`, field `m` = the call's live message; trimmed to the entries holding the last `hub.history_size` offsets |
//! | `<prefix>:{<channel>}:rows` | hash | per script call, the source rows it numbered (a *record*), until the outbox deleted them (idempotency) |
//! | `<prefix>:{<channel>}:live` | pub/sub channel | one live message per script call |
//!
//! Channel names go to the script as keys and arguments, never into its
//! source. The stream expires `hub.history_ttl_s` after the channel's last
//! message, like the memory hub's history; the numbering (meta) and the
//! rows hash live a day after the last call ([`ROW_KEY_TTL_S`]), so a quiet
//! channel keeps its epoch and no redelivery gets a second offset. A call's
//! record leaves the rows hash once the outbox deleted its rows
//! ([`RedisBroker::forget`]): they can no longer be handed over again, so
//! the hash holds only the batch in flight (and what a crashed drainer left).
//!
//! **A live message** (also a stream entry's `m`) is
//! `<epoch>:<first offset>:` followed by one body per message, numbered on
//! from the first offset: `<t>:<target user key, t bytes><n>:<tail, n
//! bytes>`, where the tail is the frame after its offset
//! (`,"id":…,"data":…}`). orapush writes the bodies; the script only adds
//! the numbering, and each node rebuilds the frame
//! (`{"type":"message","channel":…,"epoch":…,"offset":…` + tail) with
//! [`decode_live`]. So Redis does no per-message string work.
//!
//! **A record** is a header `<epoch>:<first offset>:<unix time written>`
//! and one line per message of the call: a plain line (the row, or empty
//! for a message with none) takes the next offset; `<row>=<epoch>:<offset>`
//! is a row numbered before. A record older than [`ROW_KEY_TTL_S`] is
//! dropped when a call reads it (its rows were deleted and the forget was
//! lost in a crash).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};
use serde_json::value::RawValue;

use crate::hub::Position;
use crate::message::Message;

/// How long the numbering and the rows hash outlive a channel's last call:
/// far longer than a row can wait to be handed over again after a crash.
pub const ROW_KEY_TTL_S: u64 = 24 * 3600;

/// Numbers, appends and publishes the messages of one channel from one
/// batch, in order, giving a row numbered before its old number back. See
/// the module doc. One call per channel and batch, not per message, and
/// inside it a fixed number of Redis calls and no per-message string
/// building: a Lua call into Redis costs several times what the command
/// itself does, and this is what lets a backlog drain at tens of thousands
/// of rows a second. The whole call is atomic, as one call per message
/// would be.
const PUBLISH_LUA: &str = r#"
-- KEYS: 1 meta, 2 stream, 3 rows
-- ARGV: 1 live channel, 2 epoch if new, 3 history size, 4 ttl seconds,
--       5 rows ttl, 6 message count n, 7 the n bodies one after the other
--       (each '<t>:<target><n>:<tail>'), 8 the n source rows, one per line
--       ('' when the messages have none)
-- Returns {epoch, record id ('' for none), -first}: every message is new,
-- numbered on from first (the usual case); or {epoch, record id, n1, n2,
-- ...}: each message's offset under that epoch, or 'epoch:offset' for a
-- row numbered before.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- A new numbering: whatever stream is left belongs to the old one.
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local first = offset
local count = tonumber(ARGV[6])
local has_rows = ARGV[8] ~= ''

-- Rows numbered before: only records a crashed drainer left behind (the
-- records of committed batches are deleted), so this is usually empty.
local now = tonumber(redis.call('TIME')[1])
local known, holder, records = {}, {}, {}
local stored = redis.call('HGETALL', KEYS[3])
for j = 1, #stored, 2 do
  local id, record = stored[j], stored[j + 1]
  local rows = {}
  records[id] = rows
  local next_offset
  local record_epoch
  for line in string.gmatch(record .. '\n', '([^\n]*)\n') do
    if not next_offset then
      -- The header: epoch, first offset, when it was written.
      local sep = string.find(line, ':', 1, true)
      local sep2 = string.find(line, ':', sep + 1, true) or (#line + 1)
      record_epoch = string.sub(line, 1, sep - 1)
      next_offset = tonumber(string.sub(line, sep + 1, sep2 - 1))
      local written = tonumber(string.sub(line, sep2 + 1)) or now
      if now - written > tonumber(ARGV[5]) then
        -- Older than any redelivery: its rows were deleted and nobody
        -- could say so (a crash right after the commit).
        redis.call('HDEL', KEYS[3], id)
        records[id] = nil
        break
      end
    else
      local eq = string.find(line, '=', 1, true)
      local row, number
      if eq then
        row, number = string.sub(line, 1, eq - 1), string.sub(line, eq + 1)
      else
        row, number = line, record_epoch .. ':' .. next_offset
        next_offset = next_offset + 1
      end
      if row ~= '' then
        known[row] = number
        holder[row] = id
        rows[row] = number
      end
    end
  end
end

local replies, bodies, lines
if next(known) == nil then
  -- The usual case: no row was numbered before, every message is new, and
  -- the bodies and rows go on as orapush joined them: no per-message Lua.
  offset = first + count
  bodies = ARGV[7]
  lines = ARGV[8]
  replies = {epoch, '', -(first + 1)}
else
  -- Split the bodies (self-delimiting) and the rows (one per line).
  local body, row_of = {}, {}
  local pos = 1
  for i = 1, count do
    local c1 = string.find(ARGV[7], ':', pos, true)
    local target_end = c1 + tonumber(string.sub(ARGV[7], pos, c1 - 1))
    local c2 = string.find(ARGV[7], ':', target_end + 1, true)
    local body_end = c2 + tonumber(string.sub(ARGV[7], target_end + 1, c2 - 1))
    body[i] = string.sub(ARGV[7], pos, body_end)
    pos = body_end + 1
  end
  if has_rows then
    for row in string.gmatch(ARGV[8] .. '\n', '([^\n]*)\n') do
      row_of[#row_of + 1] = row
    end
  end
  replies = {epoch, ''}
  local fresh, line = {}, {}
  local touched = {}
  for i = 1, count do
    local row = row_of[i] or ''
    local before = row ~= '' and known[row]
    if before then
      replies[i + 2] = before
      line[i] = row .. '=' .. before
      records[holder[row]][row] = nil
      touched[holder[row]] = true
    else
      offset = offset + 1
      fresh[#fresh + 1] = body[i]
      line[i] = row
      replies[i + 2] = offset
    end
  end
  bodies = table.concat(fresh)
  lines = table.concat(line, '\n')
  -- Rows moved to this call's record leave the records they were in.
  for id in pairs(touched) do
    local left = {'-:0:' .. now}
    for row, number in pairs(records[id]) do
      left[#left + 1] = row .. '=' .. number
    end
    if #left == 1 then
      redis.call('HDEL', KEYS[3], id)
    else
      redis.call('HSET', KEYS[3], id, table.concat(left, '\n'))
    end
  end
end

if offset ~= first then
  local message = epoch .. ':' .. (first + 1) .. ':' .. bodies
  redis.call('HSET', KEYS[1], 'offset', offset)
  -- One entry for the call, named by its last offset; the trim keeps every
  -- entry that holds one of the last ARGV[3] offsets.
  redis.call('XADD', KEYS[2], offset .. '-1', 'm', message)
  local keep_from = offset - tonumber(ARGV[3]) + 1
  if keep_from > 1 then
    redis.call('XTRIM', KEYS[2], 'MINID', keep_from .. '-0')
  end
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('PUBLISH', ARGV[1], message)
end
if has_rows then
  local id = epoch .. ':' .. redis.call('HINCRBY', KEYS[1], 'records', 1)
  redis.call('HSET', KEYS[3], id, epoch .. ':' .. (first + 1) .. ':' .. now .. '\n' .. lines)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  replies[2] = id
end
-- The numbering outlives the history (ARGV[5], a day): a quiet channel
-- keeps its epoch, like in the memory hub; the frames go after the ttl.
redis.call('EXPIRE', KEYS[1], math.max(tonumber(ARGV[4]), tonumber(ARGV[5])))
return replies
"#;

/// The most messages one script call numbers: a call blocks Redis while it
/// runs, so a large batch of one channel is cut into calls of this size.
pub const MESSAGES_PER_CALL: usize = 500;

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
    pub fn rows(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:rows", self.prefix)
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

/// One frame of a live message, rebuilt (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFrame<'a> {
    pub epoch: &'a str,
    pub offset: u64,
    pub target_key: Option<&'a str>,
    pub frame: String,
}

/// The head of a channel's message frames, up to the epoch's value:
/// `{"type":"message","channel":<channel>,"epoch":"`.
pub fn frame_head(channel: &str) -> String {
    let channel_json = serde_json::to_string(channel).expect("strings serialise");
    format!(r#"{{"type":"message","channel":{channel_json},"epoch":""#)
}

/// Appends a message's body in a live message: `<t>:<target><n>:<tail>`.
fn push_body(out: &mut String, message: &Message, target_key: Option<&str>) {
    use std::fmt::Write;
    let id_json = serde_json::to_string(&message.id).expect("strings serialise");
    let data = RawValue::get(&message.data);
    let target = target_key.unwrap_or("");
    // The tail: `,"id":<id>,"data":<data>}`.
    let tail_len = r#","id":"#.len() + id_json.len() + r#","data":"#.len() + data.len() + 1;
    let _ = write!(out, "{}:{target}{tail_len}:,\"id\":{id_json},\"data\":{data}}}", target.len());
}

#[cfg(test)]
fn body(message: &Message, target_key: Option<&str>) -> String {
    let mut out = String::new();
    push_body(&mut out, message, target_key);
    out
}

/// Reads a live message of `channel` (see the module doc): its frames in
/// order, or None when any part is malformed.
pub fn decode_live<'a>(channel: &str, payload: &'a [u8]) -> Option<Vec<LiveFrame<'a>>> {
    let text = std::str::from_utf8(payload).ok()?;
    let (epoch, rest) = text.split_once(':')?;
    let (first, mut rest) = rest.split_once(':')?;
    let mut offset: u64 = first.parse().ok()?;
    let head = frame_head(channel);
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (target_len, after) = rest.split_once(':')?;
        let target = after.get(..target_len.parse::<usize>().ok()?)?;
        let (tail_len, after) = after[target.len()..].split_once(':')?;
        let tail = after.get(..tail_len.parse::<usize>().ok()?)?;
        rest = &after[tail.len()..];
        frames.push(LiveFrame {
            epoch,
            offset,
            target_key: (!target.is_empty()).then_some(target),
            frame: format!(r#"{head}{epoch}","offset":{offset}{tail}"#),
        });
        offset += 1;
    }
    (!frames.is_empty()).then_some(frames)
}

/// What [`RedisBroker::publish`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Each message's number, in batch order.
    pub numbers: Vec<Numbered>,
    /// `(channel, record id)` of the records that remember the batch's
    /// rows, for [`RedisBroker::forget`] once the outbox deleted them.
    pub records: Vec<(String, String)>,
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
    pub async fn publish(&mut self, batch: &[Publication<'_>]) -> Result<Published, BrokerError> {
        if batch.is_empty() {
            return Ok(Published { numbers: Vec::new(), records: Vec::new() });
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

    async fn publish_pipelined(&mut self, batch: &[Publication<'_>]) -> Result<Published, BrokerError> {
        let new_epoch = format!("{:08x}", rand::random::<u32>());
        let calls = calls_by_channel(batch);
        let mut pipe = redis::pipe();
        for call in &calls {
            let channel = &batch[call[0]].message.channel;
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.script.get_hash())
                .arg(3)
                .arg(self.keys.meta(channel))
                .arg(self.keys.stream(channel))
                .arg(self.keys.rows(channel))
                .arg(self.keys.live(channel))
                .arg(&new_epoch)
                .arg(self.history_size.max(1))
                .arg(self.history_ttl.as_secs().max(1))
                .arg(ROW_KEY_TTL_S)
                .arg(call.len());
            let mut bodies = String::new();
            for &i in call {
                let p = &batch[i];
                push_body(&mut bodies, p.message, p.target_key.as_deref());
            }
            let rows = if call.iter().any(|&i| batch[i].row.is_some()) {
                call.iter().map(|&i| batch[i].row.as_deref().unwrap_or("")).collect::<Vec<_>>().join("\n")
            } else {
                String::new()
            };
            cmd.arg(bodies).arg(rows);
            pipe.add_command(cmd);
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn).await?;
        if replies.len() != calls.len() {
            return Err(BrokerError::Protocol(format!(
                "{} replies to {} script calls",
                replies.len(),
                calls.len()
            )));
        }
        let mut numbered: Vec<Option<Numbered>> = vec![None; batch.len()];
        let mut records = Vec::new();
        for (call, reply) in calls.iter().zip(&replies) {
            let (record, numbers) = call_numbers(reply, call.len())?;
            if let Some(record) = record {
                records.push((batch[call[0]].message.channel.clone(), record));
            }
            for (&i, n) in call.iter().zip(numbers) {
                numbered[i] = Some(n);
            }
        }
        let numbers = numbered.into_iter().map(|n| n.expect("every message is in one call")).collect();
        Ok(Published { numbers, records })
    }

    /// Forgets the records of a published batch once the outbox deleted its
    /// rows (they cannot be handed over again): `(channel, record id)`.
    pub async fn forget(&mut self, records: &[(String, String)]) -> Result<(), BrokerError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (channel, record) in records {
            pipe.cmd("HDEL").arg(self.keys.rows(channel)).arg(record).ignore();
        }
        Ok(pipe.query_async(&mut self.conn).await?)
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
        // The stream keeps whole calls, so it may reach further back than
        // `hub.history_size`; recovery goes back exactly that far, as in
        // the memory hub.
        let within_history = offset - since.offset.min(offset) <= self.history_size as u64;
        if !same_epoch || since.offset > offset || !within_history {
            return Ok(History { epoch, offset, recovered: false, frames: Vec::new() });
        }
        let frames: Vec<_> =
            stream_frames(channel, &replies[1])?.into_iter().filter(|(o, _, _)| *o > since.offset).collect();
        // Recovered only when the stream still starts right after `since`.
        let complete =
            since.offset == offset || frames.first().is_some_and(|(o, _, _)| *o == since.offset + 1);
        let frames = if complete { frames } else { Vec::new() };
        Ok(History { epoch, offset, recovered: complete, frames })
    }
}

/// The script calls of a batch: the positions of each channel's messages,
/// in order, at most [`MESSAGES_PER_CALL`] per call, channels in the order
/// they first appear (per-channel order is what orapush promises).
fn calls_by_channel(batch: &[Publication<'_>]) -> Vec<Vec<usize>> {
    let mut calls: Vec<Vec<usize>> = Vec::new();
    let mut open: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, p) in batch.iter().enumerate() {
        let channel = p.message.channel.as_str();
        match open.get(channel) {
            Some(&call) if calls[call].len() < MESSAGES_PER_CALL => calls[call].push(i),
            _ => {
                open.insert(channel, calls.len());
                calls.push(vec![i]);
            }
        }
    }
    calls
}

/// A script call's reply (`{epoch, record id, -first}` or `{epoch, record
/// id, n1, n2, ...}`, see the script) as its record id and one number per
/// message.
fn call_numbers(reply: &Value, messages: usize) -> Result<(Option<String>, Vec<Numbered>), BrokerError> {
    let bad = || BrokerError::Protocol(format!("script reply: {reply:?}"));
    let Value::Array(items) = reply else { return Err(bad()) };
    if items.len() < 3 {
        return Err(bad());
    }
    let epoch: String = redis::from_redis_value(items[0].clone()).map_err(|_| bad())?;
    let record: String = redis::from_redis_value(items[1].clone()).map_err(|_| bad())?;
    let record = (!record.is_empty()).then_some(record);
    let fresh = |offset: u64| Numbered { epoch: epoch.clone(), offset, fresh: true };
    if let (3, Value::Int(negative)) = (items.len(), &items[2]) {
        if *negative < 0 {
            let first = negative.unsigned_abs();
            return Ok((record, (0..messages as u64).map(|k| fresh(first + k)).collect()));
        }
    }
    if items.len() != messages + 2 {
        return Err(bad());
    }
    let numbers = items[2..]
        .iter()
        .map(|item| match item {
            Value::Int(offset) if *offset > 0 => Ok(fresh(*offset as u64)),
            other => {
                let before: String = redis::from_redis_value(other.clone()).map_err(|_| bad())?;
                let (epoch, offset) = before.split_once(':').ok_or_else(bad)?;
                Ok(Numbered {
                    epoch: epoch.to_owned(),
                    offset: offset.parse().map_err(|_| bad())?,
                    fresh: false,
                })
            }
        })
        .collect::<Result<Vec<Numbered>, BrokerError>>()?;
    Ok((record, numbers))
}

/// One field of a stream entry: its name and value.
type StreamField = (String, Vec<u8>);

/// XRANGE entries `[id, [field, value, …]]` of `channel`'s stream (each
/// holding a live message in its `m` field) as `(offset, target, frame)`,
/// in order.
fn stream_frames(channel: &str, reply: &Value) -> Result<Vec<(u64, Option<String>, String)>, BrokerError> {
    let entries: Vec<(String, Vec<StreamField>)> =
        redis::from_redis_value(reply.clone()).map_err(|e| BrokerError::Protocol(format!("XRANGE: {e}")))?;
    let mut frames = Vec::new();
    for (id, fields) in entries {
        let message = fields
            .iter()
            .find(|(name, _)| name == "m")
            .ok_or_else(|| BrokerError::Protocol(format!("stream entry {id} has no message")))?;
        let decoded = decode_live(channel, &message.1)
            .ok_or_else(|| BrokerError::Protocol(format!("stream entry {id} is malformed")))?;
        frames.extend(decoded.into_iter().map(|f| (f.offset, f.target_key.map(str::to_owned), f.frame)));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of a channel shares its hash tag; the prefix leads.
    #[test]
    fn keys_share_the_channel_hash_tag() {
        let keys = Keys::new("app1");
        for key in [keys.meta("emp"), keys.stream("emp"), keys.live("emp"), keys.rows("emp")] {
            assert!(key.starts_with("app1:{emp}:"), "{key}");
        }
    }

    /// The channel reaches the script only as a key or an argument.
    #[test]
    fn channel_names_are_never_script_source() {
        assert!(!PUBLISH_LUA.contains("{channel}"));
        assert!(PUBLISH_LUA.contains("KEYS[1]") && PUBLISH_LUA.contains("ARGV[5]"));
    }

    /// A batch becomes one script call per channel (at most
    /// MESSAGES_PER_CALL messages each), each keeping its channel's order.
    #[test]
    fn a_batch_is_one_call_per_channel_in_order() {
        let messages: Vec<Message> = ["a", "b", "a", "c", "b", "a"]
            .iter()
            .enumerate()
            .map(|(i, ch)| Message::from_payload(i.to_string(), *ch, None, "{}", 1000).unwrap())
            .collect();
        let batch: Vec<Publication<'_>> =
            messages.iter().map(|m| Publication { message: m, row: None, target_key: None }).collect();
        assert_eq!(calls_by_channel(&batch), vec![vec![0, 2, 5], vec![1, 4], vec![3]]);

        let many: Vec<Message> = (0..MESSAGES_PER_CALL + 3)
            .map(|i| Message::from_payload(i.to_string(), "a", None, "{}", 1000).unwrap())
            .collect();
        let batch: Vec<Publication<'_>> =
            many.iter().map(|m| Publication { message: m, row: None, target_key: None }).collect();
        let calls = calls_by_channel(&batch);
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), vec![MESSAGES_PER_CALL, 3]);
        assert_eq!(calls.concat(), (0..MESSAGES_PER_CALL + 3).collect::<Vec<_>>());
    }

    /// A live message numbers its bodies on from its first offset; each
    /// node rebuilds the frames, which are the hub's frames.
    #[test]
    fn live_messages_decode() {
        let a = Message::from_payload("7", "emp", Some("scott".into()), r#"{"n":1}"#, 1000).unwrap();
        let b = Message::from_payload("8", "emp", None, "x", 1000).unwrap();
        let payload = format!("e1:41:{}{}", body(&a, Some("scott")), body(&b, None));
        let live = decode_live("emp", payload.as_bytes()).unwrap();
        assert_eq!(live.len(), 2);
        assert_eq!((live[0].epoch, live[0].offset, live[0].target_key), ("e1", 41, Some("scott")));
        assert_eq!((live[1].offset, live[1].target_key), (42, None));
        let frame: serde_json::Value = serde_json::from_str(&live[1].frame).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type":"message","channel":"emp","epoch":"e1","offset":42,"id":"8","data":{"message":"x"}})
        );
        let tail = r#","id":"1","data":1}"#;
        let odd = format!("e:1:0:{}:{tail}", tail.len());
        let odd = decode_live("a\"b", odd.as_bytes()).unwrap();
        let frame: serde_json::Value = serde_json::from_str(&odd[0].frame).unwrap();
        assert_eq!(frame["channel"], "a\"b");
        for bad in [
            &b"nope"[..],
            b"e:x:0:2:{}",
            b"e:1:9:ab",
            b"\xff:1:0:2:{}",
            b"e:1:0:3:{}",
            b"e:1:",
            b"e:1:0:2:{}e",
        ] {
            assert!(decode_live("c", bad).is_none(), "{bad:?}");
        }
    }
}
