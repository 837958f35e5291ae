//! Property tests of the client-frame parser (the input every WebSocket
//! peer controls). `cargo test` runs a few hundred cases;
//! `scripts/fuzz.sh` runs many more for a bounded time (PROPTEST_CASES).

use orapush::ws::protocol::{parse_client_frame, ClientFrame};
use proptest::prelude::*;
use serde_json::{json, Value};

fn channel() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:@-]{1,200}"
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("(op|channel|since|token|epoch|offset|.{0,6})", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Any text at all: a frame or a refusal with a known code, never a panic.
    #[test]
    fn any_text_is_answered(text in ".{0,300}") {
        if let Err(e) = parse_client_frame(&text) {
            prop_assert!(e.code == "bad_request" || e.code == "unknown_op");
            prop_assert!(!e.message.is_empty());
        }
    }

    /// Any JSON value: the same.
    #[test]
    fn any_json_is_answered(value in any_json()) {
        if let Err(e) = parse_client_frame(&value.to_string()) {
            prop_assert!(e.code == "bad_request" || e.code == "unknown_op");
        }
    }

    /// Every well-formed subscribe parses to exactly what was sent.
    #[test]
    fn valid_subscribes_round_trip(ch in channel(), epoch in "[0-9a-f]{8}", offset in any::<u64>(), with_since in any::<bool>()) {
        let mut frame = json!({"op": "subscribe", "channel": ch});
        if with_since {
            frame["since"] = json!({"epoch": epoch, "offset": offset});
        }
        match parse_client_frame(&frame.to_string()) {
            Ok(ClientFrame::Subscribe { channel, since }) => {
                prop_assert_eq!(channel, ch);
                prop_assert_eq!(since.map(|s| (s.epoch, s.offset)), with_since.then(|| (epoch.clone(), offset)));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// A channel outside the alphabet, or too long, is always refused.
    #[test]
    fn bad_channels_are_refused(ch in "([A-Za-z0-9]{0,5}[ /#$%é][A-Za-z0-9]{0,5}|[a-z]{201,230})") {
        let frame = json!({"op": "subscribe", "channel": ch}).to_string();
        prop_assert_eq!(parse_client_frame(&frame).unwrap_err().code, "bad_request");
    }
}
