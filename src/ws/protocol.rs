//! The orapush WebSocket protocol: client frames in, server frames out,
//! and the close codes. JSON text frames only (see SPEC.md, "WebSocket").

use serde::Serialize;
use serde_json::Value;

use crate::hub::{Position, Subscribed};
use crate::message::validate_channel;

/// Close codes orapush sends, and why.
pub mod close {
    /// The server is shutting down; reconnect (to another instance) later.
    pub const GOING_AWAY: u16 = 1001;
    /// A client frame exceeded `server.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The connection fell behind: its queue filled up. Reconnect and recover.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A protocol violation (unmasked frame, reserved bits, bad control frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A bad token, or too many frames per second.
    pub const POLICY: u16 = 1008;
    /// The peer sent nothing, not even a pong, for `server.client_timeout_ms`.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The connection's token expired: reconnect (or send `auth`) with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Subscribe {
        channel: String,
        since: Option<Position>,
    },
    Unsubscribe {
        channel: String,
    },
    Ping,
    /// Gives (or replaces) the connection's token.
    Auth {
        token: String,
    },
}

/// A refused client frame; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
    /// The channel a refused subscribe or unsubscribe named, so a client
    /// knows which of its requests was refused.
    pub channel: Option<String>,
}

impl ProtocolError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad_request", message)
    }
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), channel: None }
    }
    pub fn on_channel(self, channel: &str) -> Self {
        Self { channel: Some(channel.to_owned()), ..self }
    }
}

/// Parses one client text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::bad_request(format!("frame is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ProtocolError::bad_request("frame must be a JSON object with an \"op\""));
    };
    let op = match fields.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(ProtocolError::bad_request("\"op\" must be a string")),
        None => return Err(ProtocolError::bad_request("frame has no \"op\"")),
    };
    let channel = || -> Result<String, ProtocolError> {
        match fields.get("channel") {
            Some(Value::String(c)) => {
                validate_channel(c).map_err(|e| ProtocolError::bad_request(e.to_string()).on_channel(c))?;
                Ok(c.clone())
            }
            Some(_) => Err(ProtocolError::bad_request("\"channel\" must be a string")),
            None => Err(ProtocolError::bad_request(format!("\"{op}\" needs a \"channel\""))),
        }
    };
    match op {
        "subscribe" => {
            let since = match fields.get("since") {
                None | Some(Value::Null) => None,
                Some(v) => Some(serde_json::from_value::<Position>(v.clone()).map_err(|e| {
                    ProtocolError::bad_request(format!(
                        "\"since\" must be {{\"epoch\": string, \"offset\": non-negative integer}}: {e}"
                    ))
                })?),
            };
            Ok(ClientFrame::Subscribe { channel: channel()?, since })
        }
        "unsubscribe" => Ok(ClientFrame::Unsubscribe { channel: channel()? }),
        "ping" => Ok(ClientFrame::Ping),
        "auth" => match fields.get("token") {
            Some(Value::String(token)) if !token.is_empty() => Ok(ClientFrame::Auth { token: token.clone() }),
            _ => Err(ProtocolError::bad_request("\"auth\" needs a \"token\" string")),
        },
        other => Err(ProtocolError::new(
            "unknown_op",
            format!("unknown op {other:?}; expected subscribe, unsubscribe, ping or auth"),
        )),
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame<'a> {
    Subscribed {
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
        recovered: bool,
    },
    Unsubscribed {
        channel: &'a str,
    },
    Pong,
    Auth {
        sub: Option<&'a str>,
        exp: u64,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
}

fn render(frame: &ServerFrame<'_>) -> String {
    serde_json::to_string(frame).expect("server frames serialise")
}

pub fn subscribed(channel: &str, s: &Subscribed) -> String {
    render(&ServerFrame::Subscribed { channel, epoch: &s.epoch, offset: s.offset, recovered: s.recovered })
}

pub fn unsubscribed(channel: &str) -> String {
    render(&ServerFrame::Unsubscribed { channel })
}

pub fn pong() -> String {
    render(&ServerFrame::Pong)
}

pub fn authenticated(sub: Option<&str>, exp: u64) -> String {
    render(&ServerFrame::Auth { sub, exp })
}

pub fn error(e: &ProtocolError) -> String {
    render(&ServerFrame::Error { code: e.code, message: &e.message, channel: e.channel.as_deref() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-formed frames parse into their ops.
    #[test]
    fn parses_valid_frames() {
        assert_eq!(
            parse_client_frame(r#"{"op":"subscribe","channel":"emp"}"#),
            Ok(ClientFrame::Subscribe { channel: "emp".into(), since: None })
        );
        assert_eq!(
            parse_client_frame(r#"{"op":"subscribe","channel":"emp","since":{"epoch":"e1","offset":4}}"#),
            Ok(ClientFrame::Subscribe {
                channel: "emp".into(),
                since: Some(Position { epoch: "e1".into(), offset: 4 })
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"op":"unsubscribe","channel":"emp"}"#),
            Ok(ClientFrame::Unsubscribe { channel: "emp".into() })
        );
        assert_eq!(parse_client_frame(r#"{"op":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            parse_client_frame(r#"{"op":"auth","token":"t"}"#),
            Ok(ClientFrame::Auth { token: "t".into() })
        );
    }

    /// Each malformed frame gets the SPEC's error code.
    #[test]
    fn refuses_malformed_frames() {
        let code = |t: &str| parse_client_frame(t).unwrap_err().code;
        assert_eq!(code("not json"), "bad_request");
        assert_eq!(code("[1]"), "bad_request");
        assert_eq!(code(r#"{"channel":"emp"}"#), "bad_request");
        assert_eq!(code(r#"{"op":5}"#), "bad_request");
        assert_eq!(code(r#"{"op":"subscribe"}"#), "bad_request");
        assert_eq!(code(r#"{"op":"subscribe","channel":"a b"}"#), "bad_request");
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"a","since":{"epoch":"e","offset":-1}}"#),
            "bad_request"
        );
        assert_eq!(code(r#"{"op":"publish","channel":"a"}"#), "unknown_op");
        assert_eq!(code(r#"{"op":"auth"}"#), "bad_request");
        assert_eq!(code(r#"{"op":"auth","token":5}"#), "bad_request");
    }

    /// Server frames have the SPEC's shape.
    #[test]
    fn server_frames() {
        let s = Subscribed { epoch: "e".into(), offset: 3, recovered: true, replay: vec![] };
        assert_eq!(
            subscribed("emp", &s),
            r#"{"type":"subscribed","channel":"emp","epoch":"e","offset":3,"recovered":true}"#
        );
        assert_eq!(unsubscribed("emp"), r#"{"type":"unsubscribed","channel":"emp"}"#);
        assert_eq!(pong(), r#"{"type":"pong"}"#);
        assert_eq!(authenticated(Some("scott"), 9), r#"{"type":"auth","sub":"scott","exp":9}"#);
        assert_eq!(
            error(&ProtocolError::bad_request("x")),
            r#"{"type":"error","code":"bad_request","message":"x"}"#
        );
    }
}
