//! Black-box tests of the bridge on its embedded SQLite outbox: the real
//! server on port 0, a real SQLite file, real WebSocket clients.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn ids_and_offsets(frames: &[Value]) -> (Vec<i64>, Vec<u64>) {
    frames
        .iter()
        .map(|f| (f["id"].as_str().unwrap().parse::<i64>().unwrap(), f["offset"].as_u64().unwrap()))
        .unzip()
}

async fn receive(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        let f = next_json(ws).await;
        assert_eq!(f["type"], "message", "{f}");
        frames.push(f);
    }
    frames
}

/// Rows on three channels reach exactly their subscribers, in id order, with consecutive offsets, and leave the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_reach_exactly_their_subscribers_in_order() {
    let server = Server::start().await;
    let mut emp = connect(&server.ws_url("/ws")).await;
    let mut dept = connect(&server.ws_url("/ws")).await;
    let mut both = connect(&server.ws_url("/ws?channel=emp&channel=hr")).await;
    subscribe(&mut emp, "emp").await;
    subscribe(&mut dept, "dept").await;
    for _ in 0..2 {
        assert_eq!(next_json(&mut both).await["type"], "subscribed");
    }

    let channels = ["emp", "dept", "hr"];
    let rows: Vec<(String, String)> =
        (0..30).map(|i| (channels[i % 3].to_string(), format!(r#"{{"n":{i}}}"#))).collect();
    let borrowed: Vec<(&str, &str)> = rows.iter().map(|(c, p)| (c.as_str(), p.as_str())).collect();
    let ids = insert(&server.db, &borrowed);
    let ids_of = |ch: &str| -> Vec<i64> {
        ids.iter().zip(&rows).filter(|(_, (c, _))| c == ch).map(|(id, _)| *id).collect()
    };

    let (got, offsets) = ids_and_offsets(&receive(&mut emp, 10).await);
    assert_eq!(got, ids_of("emp"));
    assert_eq!(offsets, (1..=10).collect::<Vec<u64>>());
    let (got, offsets) = ids_and_offsets(&receive(&mut dept, 10).await);
    assert_eq!(got, ids_of("dept"));
    assert_eq!(offsets, (1..=10).collect::<Vec<u64>>());
    let frames = receive(&mut both, 20).await;
    for ch in ["emp", "hr"] {
        let mine: Vec<Value> = frames.iter().filter(|f| f["channel"] == ch).cloned().collect();
        let (got, offsets) = ids_and_offsets(&mine);
        assert_eq!(got, ids_of(ch), "{ch}");
        assert_eq!(offsets, (1..=10).collect::<Vec<u64>>());
    }
    for ws in [&mut emp, &mut dept, &mut both] {
        expect_pong_next(ws).await;
    }
    let db = server.db.clone();
    wait_until("the outbox is empty", || outbox_count(&db) == 0).await;
    server.stop().await.unwrap();
}

/// A payload that is not JSON arrives as {"message": payload}; JSON arrives as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_rule() {
    let server = Server::start().await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    insert(&server.db, &[("emp", "REFRESH"), ("emp", r#"{"message":"REFRESH","n":[1,2]}"#)]);
    assert_eq!(next_json(&mut ws).await["data"], json!({"message": "REFRESH"}));
    assert_eq!(next_json(&mut ws).await["data"], json!({"message": "REFRESH", "n": [1, 2]}));
    server.stop().await.unwrap();
}

/// Reconnecting with `since` replays exactly the missed messages, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_reconnect() {
    let server = Server::start().await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    let sub = subscribe(&mut ws, "emp").await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    insert(&server.db, &[("emp", "a"), ("emp", "b"), ("emp", "c")]);
    let seen = receive(&mut ws, 3).await;
    assert_eq!(seen[2]["offset"], 3);
    drop(ws);

    let missed = insert(&server.db, &[("emp", "d"), ("emp", "e"), ("emp", "f"), ("emp", "g"), ("emp", "h")]);
    let db = server.db.clone();
    wait_until("the missed rows were drained", || outbox_count(&db) == 0).await;

    let mut ws = connect(&server.ws_url("/ws")).await;
    send_json(&mut ws, json!({"op":"subscribe","channel":"emp","since":{"epoch":epoch,"offset":3}})).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply, json!({"type":"subscribed","channel":"emp","epoch":epoch,"offset":8,"recovered":true}));
    let (ids, offsets) = ids_and_offsets(&receive(&mut ws, 5).await);
    assert_eq!(ids, missed);
    assert_eq!(offsets, vec![4, 5, 6, 7, 8]);
    let live = insert(&server.db, &[("emp", "live")]);
    let f = next_json(&mut ws).await;
    assert_eq!((f["offset"].as_u64(), f["id"].as_str()), (Some(9), Some(live[0].to_string().as_str())));

    // A wrong epoch cannot be recovered: recovered=false and nothing replayed.
    let mut other = connect(&server.ws_url("/ws")).await;
    send_json(&mut other, json!({"op":"subscribe","channel":"emp","since":{"epoch":"nope","offset":3}}))
        .await;
    let reply = next_json(&mut other).await;
    assert_eq!((reply["recovered"].as_bool(), reply["offset"].as_u64()), (Some(false), Some(9)));
    expect_pong_next(&mut other).await;
    server.stop().await.unwrap();
}

/// A gap larger than the history cannot be recovered: recovered=false, no partial replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_beyond_history_is_refused() {
    let server = Server::start_with(|s| s.hub.history_size = 3).await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    let epoch = subscribe(&mut ws, "emp").await["epoch"].as_str().unwrap().to_string();
    let rows: Vec<(&str, &str)> = (0..10).map(|_| ("emp", "x")).collect();
    insert(&server.db, &rows);
    receive(&mut ws, 10).await;
    drop(ws);

    let mut ws = connect(&server.ws_url("/ws")).await;
    send_json(&mut ws, json!({"op":"subscribe","channel":"emp","since":{"epoch":epoch,"offset":2}})).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["recovered"], false);
    expect_pong_next(&mut ws).await;
    drop(ws);

    let mut ws = connect(&server.ws_url("/ws")).await;
    send_json(&mut ws, json!({"op":"subscribe","channel":"emp","since":{"epoch":epoch,"offset":7}})).await;
    assert_eq!(next_json(&mut ws).await["recovered"], true);
    let (_, offsets) = ids_and_offsets(&receive(&mut ws, 3).await);
    assert_eq!(offsets, vec![8, 9, 10]);
    server.stop().await.unwrap();
}

/// The seed protocol: a socket on `/` gets bare data; `POST /` reports the client count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_endpoint_is_seed_compatible() {
    let server = Server::start().await;
    let mut old_page = connect(&server.ws_url("/")).await;
    let mut second = connect(&server.ws_url("/")).await;
    let mut modern = connect(&server.ws_url("/ws")).await;
    subscribe(&mut modern, "default").await;
    // Both legacy sockets are registered once their upgrade completed; a
    // POST that reaches all three proves it.
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let reply: Value = http
            .post(server.url("/"))
            .body(r#"{"message":"REFRESH"}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if reply == json!({"message": "Send to 3 clients"}) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached 3 clients: {reply}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Drain any earlier probe frames: the last frame each socket sees is the one that counted 3.
    for ws in [&mut old_page, &mut second] {
        let text = next_text(ws).await;
        assert_eq!(text, r#"{"message":"REFRESH"}"#);
    }
    let f = next_json(&mut modern).await;
    assert_eq!(f["data"], json!({"message": "REFRESH"}));

    // Non-JSON bodies are wrapped, like the seed did; outbox rows reach `/` too.
    http.post(server.url("/")).body("hello").send().await.unwrap();
    insert(&server.db, &[("emp", r#"{"message":"FROM-OUTBOX"}"#)]);
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let t = next_text(&mut old_page).await;
        if t != r#"{"message":"REFRESH"}"# {
            texts.push(t);
        }
    }
    assert_eq!(texts, vec![r#"{"message":"hello"}"#.to_string(), r#"{"message":"FROM-OUTBOX"}"#.to_string()]);
    server.stop().await.unwrap();
}

/// Undeliverable rows move to the dead-letter table with their reason; the rows behind them flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_do_not_block() {
    let server = Server::start_with(|s| s.server.max_message_bytes = 2048).await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    let big = "x".repeat(3000);
    let ids = insert(
        &server.db,
        &[("emp", "first"), ("bad channel!", "x"), ("", "x"), ("emp", big.as_str()), ("emp", "last")],
    );
    let frames = receive(&mut ws, 2).await;
    assert_eq!(frames[0]["data"], json!({"message": "first"}));
    assert_eq!(frames[1]["data"], json!({"message": "last"}));
    let db = server.db.clone();
    wait_until("the outbox is empty", || outbox_count(&db) == 0).await;
    let conn = open_db(&server.db);
    let reasons: Vec<(i64, String)> = conn
        .prepare("SELECT id, reason FROM orapush_dead_letter ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(reasons.iter().map(|r| r.0).collect::<Vec<_>>(), vec![ids[1], ids[2], ids[3]]);
    assert!(reasons[0].1.contains("invalid channel"), "{reasons:?}");
    assert!(reasons[1].1.contains("empty"), "{reasons:?}");
    assert!(reasons[2].1.contains("3000 bytes"), "{reasons:?}");
    let kept: String = conn
        .query_row("SELECT payload FROM orapush_dead_letter WHERE id = ?1", [ids[3]], |r| r.get(0))
        .unwrap();
    assert_eq!(kept.len(), 3000);
    wait_for_metric(server.addr, "orapush_messages_dead_lettered_total 3").await;
    server.stop().await.unwrap();
}

/// `POST /api/publish` of `data` to the channel `feed`, which must succeed.
async fn publish_to_feed(http: &reqwest::Client, server: &Server, data: &serde_json::Value) {
    let r = http
        .post(server.url("/api/publish"))
        .json(&json!({"channel": "feed", "data": data}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "publish: {}", r.status());
}

/// A subscriber that stops reading is closed with 1013 once its queue is full; another on the same channel, which keeps up, gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_disconnected_alone() {
    let server = Server::start_with(|s| s.hub.subscriber_queue_size = 16).await;
    let mut slow = connect(&server.ws_url("/ws")).await;
    let mut fast = connect(&server.ws_url("/ws")).await;
    subscribe(&mut slow, "feed").await;
    subscribe(&mut fast, "feed").await;

    // 60 KB messages fill the slow socket's kernel buffers, then its queue.
    let payload = json!({ "blob": "y".repeat(60_000) });
    let http = reqwest::Client::new();
    let total = 300;
    // "Keeps up": the publisher never gets more than half the queue ahead
    // of the fast one (a debug build parses a 60 KB frame about as fast as
    // it publishes one, so flat out either could lead). The slow one never
    // reads, so it falls behind all the same.
    let (got, mut got_rx) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut offsets = Vec::new();
        for _ in 0..total {
            offsets.push(next_json(&mut fast).await["offset"].as_u64().unwrap());
            got.send_replace(offsets.len());
        }
        (fast, offsets)
    });
    for sent in 0..total {
        let caught_up = got_rx.wait_for(|got| got + 8 >= sent);
        tokio::time::timeout(PATIENCE, caught_up).await.expect("the fast one keeps reading").unwrap();
        publish_to_feed(&http, &server, &payload).await;
    }
    let (mut fast, offsets) =
        tokio::time::timeout(PATIENCE, reader).await.expect("fast reader done").unwrap();
    assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>());
    expect_pong_next(&mut fast).await;

    // What the slow one got before its close is whole: frames written
    // straight from the hub's shared bytes, with the one a cancelled write
    // left half-sent finished before the close frame, so every message
    // parses and the offsets run 1, 2, 3... up to the 1013.
    let mut received = Vec::new();
    let code = loop {
        match tokio::time::timeout(PATIENCE, slow.next()).await.expect("close in time") {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).expect("a whole JSON frame");
                received.push(frame["offset"].as_u64().unwrap());
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                panic!("the slow subscriber's stream broke after {} messages: {e}", received.len())
            }
            None => panic!("the slow subscriber's stream ended without a close frame"),
        }
    };
    assert_eq!(code, Some(1013));
    assert!(received.len() < total, "the slow one was closed before it had everything");
    assert_eq!(received, (1..=received.len() as u64).collect::<Vec<_>>());
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("orapush_slow_consumers_disconnected_total 1"), "{metrics}");
    server.stop().await.unwrap();
}

/// A subscriber that stops reading until its socket is full, then reads
/// on, gets every message whole and in order: the session's direct sends
/// stop when the socket's buffer is full, and its writer waits for room and
/// resumes where they stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pauses_until_its_socket_is_full_gets_everything() {
    // The write in flight waits while the client does not read: give it
    // far longer than the publishing takes, even on a loaded machine.
    let server = Server::start_with(|s| s.server.write_timeout_ms = 120_000).await;
    // A small receive buffer, so the server's sends fill the socket: 100
    // messages of 60 KB (6 MB) are far more than the server's send buffer
    // (16 KiB, doubled) and this one together hold, and fewer than the
    // queue's 1,024 frames.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut paused, _) = tokio_tungstenite::client_async(
        server.ws_url("/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    subscribe(&mut paused, "feed").await;
    let payload = json!({ "blob": "z".repeat(60_000) });
    let http = reqwest::Client::new();
    let total = 100;
    for _ in 0..total {
        publish_to_feed(&http, &server, &payload).await;
    }
    let mut offsets = Vec::new();
    for _ in 0..total {
        let frame = next_json(&mut paused).await;
        assert_eq!(frame["data"], payload, "a whole message");
        offsets.push(frame["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>());
    expect_pong_next(&mut paused).await;
    // The socket was full, and its writes waited (at least once).
    assert!(counter(&server, "orapush_send_buffer_full_total") > 0);
    server.stop().await.unwrap();
}

/// Messages to idle connections are written by the hub's writer, straight
/// to the sockets their sessions lent it, whole and in order to each; a
/// client frame between messages (a request, or a control ping) takes the
/// socket back, the reply goes out whole, and the next message still
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_written_by_the_hubs_writer() {
    let server = Server::start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&server.ws_url("/ws")).await;
        subscribe(&mut ws, "feed").await;
        clients.push(ws);
    }
    let http = reqwest::Client::new();
    let direct_writes = || counter(&server, "orapush_direct_writes_total");
    // Each session lends its socket once it waits with nothing to flush:
    // after a message or two, every message finds them lent.
    let mut sent = 0;
    while sent < 100 && direct_writes() < 12 {
        sent += 1;
        publish_to_feed(&http, &server, &json!({ "n": sent })).await;
        for ws in &mut clients {
            let frame = next_json(ws).await;
            assert_eq!((frame["offset"].as_u64(), frame["data"]["n"].as_u64()), (Some(sent), Some(sent)));
        }
        if sent == 2 || sent == 4 {
            expect_pong_next(&mut clients[0]).await;
        }
        if sent == 3 || sent == 5 {
            // A control ping: tungstenite's pong goes out before the next message.
            clients[1].send(Message::Ping(b"p".to_vec().into())).await.unwrap();
            let pong = tokio::time::timeout(PATIENCE, clients[1].next()).await.expect("a pong in time");
            assert!(matches!(&pong, Some(Ok(Message::Pong(p))) if p.as_ref() == b"p"), "{pong:?}");
        }
    }
    // (The count follows each write, so it may trail what the clients read.)
    wait_until("the writer has written a dozen frames", || direct_writes() >= 12).await;
    for ws in &mut clients {
        expect_pong_next(ws).await;
    }
    server.stop().await.unwrap();
}

/// A subscriber that stops reading while its socket is lent: the writer's
/// write stops inside a frame, the session takes over the frame's end and
/// waits for room, its queue fills and the hub kicks it. The end of that
/// frame still goes out before the close frame, so the stream stays
/// valid: every message whole, offsets 1, 2, 3..., then 1013.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_a_lent_write_left_half_sent_is_finished_before_the_close() {
    let server = Server::start_with(|s| {
        s.hub.subscriber_queue_size = 16;
        s.server.socket_send_buffer_bytes = 16_384;
        // The kick, not the write timeout, must end it, however loaded the machine.
        s.server.write_timeout_ms = 120_000;
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        server.ws_url("/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    subscribe(&mut slow, "feed").await;
    // Small messages until the writer has written one: the socket is lent
    // (and stays lent while the writer's writes go out whole).
    let http = reqwest::Client::new();
    let mut published = 0;
    while counter(&server, "orapush_direct_writes_total") == 0 {
        assert!(published < 100, "no message went to the lent socket");
        publish_to_feed(&http, &server, &json!({ "n": published })).await;
        published += 1;
        next_json(&mut slow).await;
    }
    let small = published as usize;
    // The next goes to the lent socket; 60 KB is far more than both
    // buffers hold, so that write stops inside it.
    let payload = json!({ "blob": "x".repeat(60_000) });
    while counter(&server, "orapush_slow_consumers_disconnected_total") == 0 {
        assert!(published < 200, "not kicked after {published} messages");
        publish_to_feed(&http, &server, &payload).await;
        published += 1;
    }
    let mut offsets = Vec::new();
    let code = loop {
        match tokio::time::timeout(PATIENCE, slow.next()).await.expect("close in time") {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("a whole JSON frame");
                assert_eq!(frame["data"], payload, "a whole message");
                offsets.push(frame["offset"].as_u64().unwrap() - small as u64);
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the stream broke after {} whole messages: {e}", offsets.len()),
            None => panic!("the stream ended without a close frame"),
        }
    };
    assert_eq!(code, Some(1013));
    assert!(!offsets.is_empty(), "the first large message was written (in part) before the kick");
    assert_eq!(offsets, (1..=offsets.len() as u64).collect::<Vec<_>>(), "after {small} small ones");
    server.stop().await.unwrap();
}

/// A client frame sent in the same write as the upgrade request (hyper
/// reads it with the request, before the 101) is not lost: the session
/// reads it first and answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_request_is_read() {
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let server = Server::start().await;
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    let subscribe = json!({"op": "subscribe", "channel": "early"}).to_string();
    let mut frame = Frame::message(subscribe.into_bytes(), OpCode::Data(Data::Text), true);
    frame.header_mut().mask = Some([7, 1, 9, 3]);
    frame.format(&mut bytes).unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let head = tokio::time::timeout(PATIENCE, common::handshake::read_response_head(&mut stream))
        .await
        .expect("a response in time")
        .expect("a whole response head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Role::Client,
        None,
    )
    .await;
    let reply = next_json(&mut ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["channel"].as_str()),
        (Some("subscribed"), Some("early")),
        "{reply}"
    );
    server.stop().await.unwrap();
}

/// A socket that takes no bytes for `server.write_timeout_ms` ends its
/// connection before its queue fills; the limit counts it, not as a 1013.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_ends_the_connection_and_is_counted() {
    let server = Server::start_with(|s| s.server.write_timeout_ms = 300).await;
    let mut stalled = connect(&server.ws_url("/ws")).await;
    subscribe(&mut stalled, "feed").await;
    let payload = json!({ "blob": "z".repeat(60_000) });
    let http = reqwest::Client::new();
    let counted = r#"orapush_limits_hit_total{limit="write_timeout"} 1"#;
    // 300 messages of 60 KB (18 MB) are more than the kernel buffers of a
    // socket that is never read hold, and fewer than the queue's 1,024
    // frames, so the write stalls and the queue never overflows.
    for _ in 0..300 {
        publish_to_feed(&http, &server, &payload).await;
    }
    wait_for_metric(server.addr, counted).await;
    wait_for_metric(server.addr, "orapush_connections 0").await;
    let metrics = http_body(server.addr, "/metrics").unwrap();
    assert!(metrics.contains("orapush_slow_consumers_disconnected_total 0"), "{metrics}");
    drop(stalled);
    server.stop().await.unwrap();
}

/// Bad client frames get the SPEC's error frames (connection stays open); an oversized one gets close 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_server_keeps_serving() {
    let server = Server::start_with(|s| s.server.max_message_bytes = 2048).await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("not json"), "bad_request"),
        (Message::text(r#"{"op":"explode"}"#), "unknown_op"),
        (Message::text(r#"{"op":"subscribe"}"#), "bad_request"),
        (Message::text(r#"{"op":"subscribe","channel":"no spaces"}"#), "bad_request"),
        (Message::text(r#"{"op":"unsubscribe","channel":"never"}"#), "not_subscribed"),
        (Message::binary(vec![1u8, 2, 3]), "bad_request"),
    ];
    for (frame, code) in cases {
        ws.send(frame).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(code)), "{reply}");
    }
    subscribe(&mut ws, "emp").await;
    send_json(&mut ws, json!({"op":"subscribe","channel":"emp"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "already_subscribed");
    send_json(&mut ws, json!({"op":"unsubscribe","channel":"emp"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"type":"unsubscribed","channel":"emp"}));
    expect_pong_next(&mut ws).await;

    ws.send(Message::text(format!(r#"{{"op":"ping","pad":"{}"}}"#, "z".repeat(4096)))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));

    let mut again = connect(&server.ws_url("/ws")).await;
    subscribe(&mut again, "emp").await;
    insert(&server.db, &[("emp", "still here")]);
    assert_eq!(next_json(&mut again).await["data"], json!({"message": "still here"}));
    server.stop().await.unwrap();
}

/// Client frames are read and answered while the hub's frames flow. (A
/// delivery wakes the session through its queue alone; its other waits,
/// the socket above all, must still be polled whenever they fire.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_are_answered_while_messages_flow() {
    // Rounds come faster than the default 50 client frames a second.
    let server = Server::start_with(|s| s.server.max_frames_per_second = 100_000).await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (server.db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rows = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                insert(&db, &[("emp", "flowing")]);
                rows += 1;
            }
            rows
        })
    };
    // Rows flow from here on: the first one has reached the socket.
    let mut ids = Vec::new();
    while ids.is_empty() {
        let frame = next_json(&mut ws).await;
        if frame["type"] == "message" {
            ids.push(frame["id"].as_str().unwrap().parse::<i64>().unwrap());
        }
    }
    // Rounds until 10 of them were answered amid messages (rows keep
    // coming, so only a session that stopped reading or writing runs out
    // of time).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut answered_amid_messages = 0;
    let mut round = 0u32;
    while answered_amid_messages < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {answered_amid_messages} rounds overlapped messages"
        );
        round += 1;
        let before = ids.len();
        let tag = round.to_be_bytes();
        ws.send(Message::Ping(tag.to_vec().into())).await.unwrap();
        send_json(&mut ws, json!({"op": "ping"})).await;
        // Every fifth round subscribes to `dept` or leaves it again.
        let op = match round % 10 {
            5 => Some(("subscribe", "subscribed")),
            0 => Some(("unsubscribe", "unsubscribed")),
            _ => None,
        };
        if let Some((op, _)) = op {
            send_json(&mut ws, json!({"op": op, "channel": "dept"})).await;
        }
        let (mut pong, mut ping_reply, mut answered) = (false, false, op.is_none());
        while !(pong && ping_reply && answered) {
            match tokio::time::timeout(PATIENCE, ws.next()).await.expect("answers amid the messages") {
                Some(Ok(Message::Pong(data))) => pong |= data[..] == tag,
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    match frame["type"].as_str() {
                        Some("message") => ids.push(frame["id"].as_str().unwrap().parse::<i64>().unwrap()),
                        Some("pong") => ping_reply = true,
                        Some(reply @ ("subscribed" | "unsubscribed")) => {
                            assert_eq!(op.map(|(_, expected)| expected), Some(reply), "{frame}");
                            assert_eq!(frame["channel"], "dept");
                            answered = true;
                        }
                        _ => panic!("unexpected frame {frame}"),
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended: {other:?}"),
            }
        }
        if ids.len() > before {
            answered_amid_messages += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rows = writer.join().unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "messages in order ({rows} rows written)");
    server.stop().await.unwrap();
}

/// The server's end of each WebSocket has the kernel send buffer
/// `server.socket_send_buffer_bytes` asks for (Linux reports twice the
/// value), or the kernel's own when it is 0. (The server runs in this
/// process: its accepted sockets are among this process's descriptors.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_sockets_get_the_configured_send_buffer() {
    /// SO_SNDBUF of the server's end of `client`'s connection: the socket
    /// among this process's descriptors whose peer is the client's address.
    fn server_send_buffer(client: &Ws) -> usize {
        let tokio_tungstenite::MaybeTlsStream::Plain(stream) = client.get_ref() else { panic!("plain TCP") };
        let client_addr = stream.local_addr().unwrap();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            // SAFETY: only read through (getpeername, getsockopt). Other
            // tests may close and reuse a descriptor meanwhile; then these
            // calls fail or see another socket, whose peer is not ours.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            if socket.peer_addr().ok().and_then(|a| a.as_socket()) == Some(client_addr) {
                found.push(socket.send_buffer_size().unwrap());
            }
        }
        assert_eq!(found.len(), 1, "one server socket is connected to {client_addr}");
        found[0]
    }
    let server = Server::start_with(|s| s.server.socket_send_buffer_bytes = 98_304).await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    assert_eq!(server_send_buffer(&ws), 2 * 98_304);
    drop(ws);
    server.stop().await.unwrap();

    let autotuned = Server::start_with(|s| s.server.socket_send_buffer_bytes = 0).await;
    let mut ws = connect(&autotuned.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    assert_ne!(server_send_buffer(&ws), 2 * 98_304, "the kernel's default, not a fixed size");
    drop(ws);
    autotuned.stop().await.unwrap();
}

/// Health, readiness and metrics answer with real values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let server = Server::start().await;
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    insert(&server.db, &[("emp", "a"), ("emp", "b")]);
    receive(&mut ws, 2).await;
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    for line in [
        "orapush_connections 1",
        "orapush_subscriptions 1",
        "orapush_messages_drained_total 2",
        "orapush_messages_delivered_total 2",
        "orapush_source_connected 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("orapush_outbox_lag_seconds"));
    let js = reqwest::get(server.url("/orapush.js")).await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(js.text().await.unwrap().contains("refreshRegion"));
    let page = reqwest::get(server.url("/")).await.unwrap().text().await.unwrap();
    assert!(page.contains("/orapush.js"));
    server.stop().await.unwrap();
}

/// `POST /api/publish` delivers JSON data to a channel and to one user only when targeted; keys are enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_and_keys() {
    let server =
        Server::start_with(|s| s.api.publish_key = Some(orapush::config::Secret::new("k3y-for-tests"))).await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "news").await;
    let http = reqwest::Client::new();
    let publish = |key: Option<&'static str>, body: Value| {
        let mut req = http.post(server.url("/api/publish")).json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let r = publish(None, json!({"channel":"news","data":1})).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = publish(Some("wrong-key-123"), json!({"channel":"news","data":1})).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.post(server.url("/")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = publish(Some("k3y-for-tests"), json!({"channel":"bad channel","data":1})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = publish(Some("k3y-for-tests"), json!({"nochannel":true})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = publish(Some("k3y-for-tests"), json!({"channel":"news","data":{"a":[1,2]}})).await.unwrap();
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!((reply["offset"].as_u64(), reply["delivered"].as_u64()), (Some(1), Some(1)));
    assert_eq!(next_json(&mut ws).await["data"], json!({"a": [1, 2]}));
    // Targeted at a user: an anonymous connection never gets it.
    let r = publish(Some("k3y-for-tests"), json!({"channel":"news","data":"secret","user":"alice"}))
        .await
        .unwrap();
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["delivered"], 0);
    expect_pong_next(&mut ws).await;
    server.stop().await.unwrap();
}

/// With `server.allowed_origins` set, a listed Origin upgrades and any other gets 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = Server::start_with(|s| s.server.allowed_origins = vec!["https://apex.example".into()]).await;
    let request = |origin: &str| {
        let mut req = server.ws_url("/ws").into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(request("https://apex.example")).await.unwrap();
    expect_pong_next(&mut ws).await;
    match tokio_tungstenite::connect_async(request("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    server.stop().await.unwrap();
}

/// The server pings every connection and closes (4000) a peer that answers nothing for client_timeout_ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_closed_after_the_timeout() {
    let server = Server::start_with(|s| {
        s.server.ping_interval_ms = 50;
        s.server.client_timeout_ms = 300;
    })
    .await;
    let mut silent = raw_websocket(server.addr, "/ws").await;
    let (code, pings) = raw_read_until_close(&mut silent).await;
    assert_eq!(code, 4000);
    assert!(pings >= 3, "only {pings} pings before the close");
    wait_for_metric(server.addr, "orapush_connections 0").await;
    server.stop().await.unwrap();
}

/// Without a publish key, HTTP publishing is refused (403) unless the server listens on loopback only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_without_a_key_needs_loopback() {
    let server = Server::start_with(|s| s.server.listen = "0.0.0.0:0".into()).await;
    let http = reqwest::Client::new();
    let r = http.post(server.url("/")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r =
        http.post(server.url("/api/publish")).json(&json!({"channel":"c","data":1})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("api.publish_key"));
    server.stop().await.unwrap();
}

/// One channel rule on every path: `?channel=`, the subscribe frame and the publish API refuse the same names with the same error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_channel_rule_on_every_path() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let long = "x".repeat(300);
    for bad in ["a b", "", long.as_str(), "✓"] {
        let encoded: String = form_urlencoded::byte_serialize(bad.as_bytes()).collect();
        let mut by_query = connect(&server.ws_url(&format!("/ws?channel={encoded}"))).await;
        let from_query = next_json(&mut by_query).await;
        assert_eq!(
            (from_query["type"].as_str(), from_query["code"].as_str()),
            (Some("error"), Some("bad_request"))
        );
        assert_eq!(from_query["channel"], bad, "{from_query}");
        expect_pong_next(&mut by_query).await;

        let mut by_frame = connect(&server.ws_url("/ws")).await;
        send_json(&mut by_frame, serde_json::json!({"op": "subscribe", "channel": bad})).await;
        let from_frame = next_json(&mut by_frame).await;
        assert_eq!(from_frame["message"], from_query["message"], "{bad:?}");

        let response = http
            .post(server.url("/api/publish"))
            .json(&serde_json::json!({"channel": bad, "data": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], from_query["message"], "{bad:?}");
    }
    server.stop().await.unwrap();
}

/// `/api/status` shows the role and source, the backlog, connections and subscriptions per channel, dead letters of the last hour and totals; `/status` serves the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_shows_live_figures() {
    let server = Server::start().await;
    let status = || -> serde_json::Value {
        serde_json::from_str(&http_body(server.addr, "/api/status").unwrap()).unwrap()
    };
    let first = status();
    assert_eq!(
        (first["source"]["kind"].as_str(), first["source"]["role"].as_str()),
        (Some("sqlite"), Some("active"))
    );
    let mut emp = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut emp).await["type"], "subscribed");
    insert(&server.db, &[("emp", "one"), ("bad channel", "never delivered")]);
    assert_eq!(next_json(&mut emp).await["data"], serde_json::json!({"message": "one"}));
    wait_until("the status shows the backlog, the subscriber and the dead letter", || {
        let s = status();
        s["outbox"]["backlog"] == 0
            && s["connections"] == 1
            && s["channels"] == serde_json::json!([{"channel": "emp", "subscribers": 1}])
            && s["dead_letters_last_hour"][0]["channel"] == "bad channel"
            && s["totals"]["drained"] == 1
    })
    .await;
    let s = status();
    assert!(s["outbox"]["checked_at"].as_str().unwrap().ends_with('Z'), "{s}");
    assert!(s["dead_letters_last_hour"][0]["reason"].as_str().unwrap().contains("channel"), "{s}");
    let page = http_body(server.addr, "/status").unwrap();
    assert!(page.contains("/api/status"), "the page reads the API");
    server.stop().await.unwrap();
}

/// The value of the counter `name` on `server`'s `/metrics`.
fn counter(server: &Server, name: &str) -> u64 {
    let metrics = http_body(server.addr, "/metrics").unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in {metrics}"))
}

/// The claims the drainer has made so far (`orapush_outbox_claims_total`).
fn claims(server: &Server) -> u64 {
    counter(server, "orapush_outbox_claims_total")
}

/// A commit wakes the drainer: with a poll of a minute, each row still
/// arrives within the test's patience (the file watch), and neither the
/// inserts' uncommitted writes nor the drainer's own deletes make it claim
/// again: one claim per committed insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_drainer_without_a_poll() {
    let server = Server::start_with(|s| s.source.poll_interval_ms = Some(60_000)).await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    wait_until("the first (empty) claim is made", || claims(&server) >= 1).await;
    let before = claims(&server);
    let rounds = 5;
    for round in 1..=rounds {
        insert(&server.db, &[("emp", &format!(r#"{{"n":{round}}}"#))]);
        let frame =
            tokio::time::timeout(PATIENCE, next_json(&mut ws)).await.expect("the commit woke orapush");
        assert_eq!(frame["data"]["n"], round);
    }
    wait_until("the last batch is deleted", || outbox_count(&server.db) == 0).await;
    let made = claims(&server) - before;
    assert!(
        made <= rounds + 1,
        "{made} claims for {rounds} commits: the drainer claims on its own commits or on writes"
    );
    assert!(made >= rounds, "{made} claims for {rounds} commits");
}

/// Sends `request` (a raw HTTP/1.1 head) and returns the response head, in lower case.
async fn raw_response_head(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(PATIENCE, common::handshake::read_response_head(&mut stream))
        .await
        .expect("a response in time")
        .expect("a whole response head");
    head.to_ascii_lowercase()
}

/// The handshake answers RFC 6455's example key with its accept value, and
/// refuses what is not a WebSocket upgrade with the status that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_accepts_upgrades_and_refuses_the_rest() {
    let server = Server::start().await;
    let request = |method: &str, headers: &str| {
        format!("{method} /ws HTTP/1.1\r\nHost: {}\r\n{headers}\r\n", server.addr)
    };
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let upgrade = format!(
        "Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n{key}"
    );
    let head = raw_response_head(server.addr, &request("GET", &upgrade)).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");

    // (method, headers, status, a header the refusal must carry)
    let cases = [
        ("GET", "Connection: close\r\n".to_string(), "400", None),
        ("GET", format!("Connection: upgraded, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}"), "400", None),
        ("GET", format!("Connection: Upgrade, close\r\nUpgrade: h2c\r\nSec-WebSocket-Version: 13\r\n{key}"), "400", None),
        ("GET", format!("Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n{key}"), "400", Some("sec-websocket-version: 13")),
        ("GET", "Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n".to_string(), "400", None),
        ("POST", format!("Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}Content-Length: 0\r\n"), "405", None),
    ];
    for (method, headers, status, must_carry) in cases {
        let head = raw_response_head(server.addr, &request(method, &headers)).await;
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{method} {headers:?}: {head}");
        assert!(must_carry.is_none_or(|h| head.contains(h)), "{method} {headers:?}: {head}");
    }
    server.stop().await.unwrap();
}
