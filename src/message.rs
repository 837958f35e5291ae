//! The one type that crosses modules: a row drained from a source, and the
//! [`Message`] it becomes on its way to the hub.
//!
//! The payload rule is the seed server's: a payload that is valid JSON is the
//! message's `data` as it is; anything else becomes `{"message": "<payload>"}`.
//! Channel names are checked here too, once, for every path that publishes.

use std::fmt;

use serde_json::value::RawValue;

/// Longest channel name accepted (the Oracle column is VARCHAR2(200)).
pub const MAX_CHANNEL_LEN: usize = 200;

/// A row as a source read it from its outbox (or a message from its queue).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// The row's id (for a queue: the message's position in this batch).
    pub id: i64,
    /// What clients see as the message `id` when it is not `id` (AQ msgid).
    pub message_id: Option<String>,
    pub channel: String,
    pub payload: String,
    pub target_user: Option<String>,
    /// Seconds between the row's `created_at` and the moment it was claimed.
    pub age_seconds: f64,
    /// Set by a store that could not decode the row at all (why).
    pub defect: Option<String>,
}

impl OutboxRow {
    /// A plain table row (tests and stores use this).
    pub fn new(
        id: i64,
        channel: impl Into<String>,
        payload: impl Into<String>,
        target_user: Option<String>,
    ) -> Self {
        Self {
            id,
            message_id: None,
            channel: channel.into(),
            payload: payload.into(),
            target_user,
            age_seconds: 0.0,
            defect: None,
        }
    }
}

/// A message ready for the hub.
#[derive(Debug, Clone)]
pub struct Message {
    /// Source-side identity (the outbox row id, or an AQ message id), sent to
    /// clients so they can de-duplicate after an at-least-once redelivery.
    pub id: String,
    pub channel: String,
    /// When set, only connections authenticated as this user receive it.
    pub target_user: Option<String>,
    /// The JSON text that becomes the frame's `data`.
    pub data: Box<RawValue>,
}

/// Why a row can never be delivered; it goes to the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undeliverable {
    #[error("{0}")]
    Malformed(String),
    #[error("invalid channel: {0}")]
    Channel(ChannelError),
    #[error("payload is {size} bytes, over server.max_message_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
}

impl Message {
    /// Builds a message from a payload text, applying the seed's JSON rule.
    pub fn from_payload(
        id: impl Into<String>,
        channel: impl Into<String>,
        target_user: Option<String>,
        payload: &str,
        max_bytes: usize,
    ) -> Result<Self, Undeliverable> {
        let channel = channel.into();
        validate_channel(&channel).map_err(Undeliverable::Channel)?;
        if payload.len() > max_bytes {
            return Err(Undeliverable::TooLarge { size: payload.len(), limit: max_bytes });
        }
        Ok(Self { id: id.into(), channel, target_user, data: payload_to_data(payload) })
    }

    /// Builds a message from an outbox row.
    pub fn from_row(row: &OutboxRow, max_bytes: usize) -> Result<Self, Undeliverable> {
        if let Some(defect) = &row.defect {
            return Err(Undeliverable::Malformed(defect.clone()));
        }
        let id = row.message_id.clone().unwrap_or_else(|| row.id.to_string());
        Self::from_payload(id, &row.channel, row.target_user.clone(), &row.payload, max_bytes)
    }
}

/// The seed rule: valid JSON stays as it is, anything else is wrapped.
pub fn payload_to_data(payload: &str) -> Box<RawValue> {
    let trimmed = payload.trim();
    match RawValue::from_string(trimmed.to_owned()) {
        Ok(raw) => raw,
        Err(_) => {
            let wrapped = serde_json::json!({ "message": payload }).to_string();
            RawValue::from_string(wrapped).expect("serde_json output is valid JSON")
        }
    }
}

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    Empty,
    TooLong(usize),
    BadCharacter(char),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("channel name is empty"),
            Self::TooLong(n) => write!(f, "channel name is {n} characters, over {MAX_CHANNEL_LEN}"),
            Self::BadCharacter(c) => {
                write!(f, "channel name has {c:?}; allowed are letters, digits and _ . : @ -")
            }
        }
    }
}

/// A channel is 1 to 200 characters of `[A-Za-z0-9_.:@-]`.
pub fn validate_channel(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    let len = name.chars().count();
    if len > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong(len));
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.:@-".contains(*c))) {
        Some(c) => Err(ChannelError::BadCharacter(c)),
        None => Ok(()),
    }
}

/// A channel pattern: `*` (every channel), `prefix*`, or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelPattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl ChannelPattern {
    pub fn parse(pattern: &str) -> Result<Self, ChannelError> {
        if pattern == "*" {
            return Ok(Self::Any);
        }
        match pattern.strip_suffix('*') {
            Some(prefix) => {
                validate_channel(prefix)?;
                Ok(Self::Prefix(prefix.to_owned()))
            }
            None => {
                validate_channel(pattern)?;
                Ok(Self::Exact(pattern.to_owned()))
            }
        }
    }

    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(p) => channel.starts_with(p.as_str()),
            Self::Exact(e) => channel == e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid JSON passes through untouched; anything else is wrapped as the seed did.
    #[test]
    fn payload_rule_is_the_seeds() {
        assert_eq!(payload_to_data(r#"{"message":"REFRESH"}"#).get(), r#"{"message":"REFRESH"}"#);
        assert_eq!(payload_to_data("[1,2]").get(), "[1,2]");
        assert_eq!(payload_to_data("REFRESH").get(), r#"{"message":"REFRESH"}"#);
        assert_eq!(payload_to_data(r#"say "hi""#).get(), r#"{"message":"say \"hi\""}"#);
        assert_eq!(payload_to_data("").get(), r#"{"message":""}"#);
    }

    /// The channel alphabet and length limit are enforced.
    #[test]
    fn channel_names() {
        assert!(validate_channel("emp").is_ok());
        assert!(validate_channel("a.b:c@d-e_f9").is_ok());
        assert_eq!(validate_channel(""), Err(ChannelError::Empty));
        assert_eq!(validate_channel("a b"), Err(ChannelError::BadCharacter(' ')));
        assert_eq!(validate_channel("é"), Err(ChannelError::BadCharacter('é')));
        assert!(validate_channel(&"x".repeat(200)).is_ok());
        assert_eq!(validate_channel(&"x".repeat(201)), Err(ChannelError::TooLong(201)));
    }

    /// Rows become messages or say exactly why they cannot.
    #[test]
    fn rows_become_messages_or_dead_letters() {
        let row = |channel: &str, payload: &str| OutboxRow::new(7, channel, payload, None);
        let m = Message::from_row(&row("emp", "x"), 10).unwrap();
        assert_eq!((m.id.as_str(), m.data.get()), ("7", r#"{"message":"x"}"#));
        assert!(matches!(Message::from_row(&row("", "x"), 10), Err(Undeliverable::Channel(_))));
        assert_eq!(
            Message::from_row(&row("emp", "0123456789A"), 10).unwrap_err(),
            Undeliverable::TooLarge { size: 11, limit: 10 }
        );
        let mut queued = row("emp", "x");
        queued.message_id = Some("0aff".into());
        assert_eq!(Message::from_row(&queued, 10).unwrap().id, "0aff");
        queued.defect = Some("not an envelope".into());
        assert_eq!(
            Message::from_row(&queued, 10).unwrap_err(),
            Undeliverable::Malformed("not an envelope".into())
        );
    }

    /// Patterns: `*`, `prefix*` and exact names.
    #[test]
    fn patterns_match() {
        assert!(ChannelPattern::parse("*").unwrap().matches("anything"));
        let p = ChannelPattern::parse("emp*").unwrap();
        assert!(p.matches("emp") && p.matches("emp.dept") && !p.matches("hr"));
        let e = ChannelPattern::parse("emp").unwrap();
        assert!(e.matches("emp") && !e.matches("emp.dept"));
        assert!(ChannelPattern::parse("bad name*").is_err());
    }
}
