//! Several orapush nodes on one outbox and one Redis (`broker.kind =
//! "redis"`), black-box: real servers on port 0 sharing a SQLite file (one
//! drains, the others stand by) and a private `redis-server` on a Unix
//! socket (see tests/common).

mod common;

use common::*;
use orapush::config::{BrokerKind, Secret, Settings};
use serde_json::{json, Value};

/// Starts a node on `db` with the shared Redis.
async fn node(db: &std::path::Path, redis: &RedisServer, tweak: impl FnOnce(&mut Settings)) -> Server {
    let url = redis.url();
    Server::start_unready(tempfile::tempdir().unwrap(), db.to_path_buf(), move |s| {
        s.broker.kind = BrokerKind::Redis;
        s.redis.url = Secret::new(url);
        s.redis.report_interval_ms = 100;
        tweak(s);
    })
    .await
}

async fn wait_ready_node(server: &Server) {
    let addr = server.addr;
    wait_until("the node is ready", || http_status(addr, "/readyz") == Some(200)).await;
}

/// Reads `count` message frames and returns them.
async fn messages(ws: &mut Ws, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < count {
        let frame = next_json(ws).await;
        if frame["type"] == "message" {
            got.push(frame);
        }
    }
    got
}

/// Three nodes on one outbox: a row drained by the active node reaches subscribers on all three, in order, with one epoch and consecutive offsets; every node is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_reach_subscribers_on_every_node() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let nodes =
        [node(&db, &redis, |_| {}).await, node(&db, &redis, |_| {}).await, node(&db, &redis, |_| {}).await];
    for n in &nodes {
        wait_ready_node(n).await;
    }
    let roles = || -> Vec<String> {
        nodes
            .iter()
            .map(|n| {
                serde_json::from_str::<Value>(&http_body(n.addr, "/readyz").unwrap()).unwrap()["role"]
                    .to_string()
            })
            .collect()
    };
    wait_until("one node drains, the others stand by", || {
        let roles = roles();
        roles.iter().filter(|r| r.contains("active")).count() == 1
            && roles.iter().filter(|r| r.contains("standby")).count() == 2
    })
    .await;
    let mut clients = Vec::new();
    for n in &nodes {
        let mut ws = connect(&n.ws_url("/ws?channel=emp")).await;
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
        clients.push(ws);
    }
    let rows: Vec<(&str, String)> = (0..20).map(|i| ("emp", format!(r#"{{"n":{i}}}"#))).collect();
    let borrowed: Vec<(&str, &str)> = rows.iter().map(|(c, p)| (*c, p.as_str())).collect();
    let ids = insert(&db, &borrowed);
    let mut epochs = Vec::new();
    for ws in &mut clients {
        let got = messages(ws, 20).await;
        let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
        let got_ids: Vec<String> = got.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(got_ids, ids.iter().map(|i| i.to_string()).collect::<Vec<_>>());
        epochs.push(got[0]["epoch"].clone());
    }
    assert!(epochs.windows(2).all(|w| w[0] == w[1]), "{epochs:?}");
    for n in nodes {
        n.stop().await.unwrap();
    }
}

/// A client that drops its connection to one node and reconnects to another with `since` recovers exactly what it missed; a `since` older than the stream does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_to_another_node_recovers() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let a = node(&db, &redis, |s| s.hub.history_size = 5).await;
    let c = node(&db, &redis, |s| s.hub.history_size = 5).await;
    wait_ready_node(&a).await;
    wait_ready_node(&c).await;
    let mut on_a = connect(&a.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut on_a).await["type"], "subscribed");
    insert(&db, &[("emp", "1"), ("emp", "2")]);
    let seen = messages(&mut on_a, 2).await;
    let (epoch, offset) = (seen[1]["epoch"].clone(), seen[1]["offset"].clone());
    drop(on_a);
    let missed = insert(&db, &[("emp", "3"), ("emp", "4"), ("emp", "5")]);
    wait_until("the missed rows are drained", || outbox_count(&db) == 0).await;

    let mut on_c = connect(&c.ws_url("/ws")).await;
    send_json(&mut on_c, json!({"op":"subscribe","channel":"emp","since":{"epoch":epoch,"offset":offset}}))
        .await;
    let subscribed = next_json(&mut on_c).await;
    assert_eq!(
        (subscribed["recovered"].as_bool(), &subscribed["epoch"]),
        (Some(true), &epoch),
        "{subscribed}"
    );
    let got = messages(&mut on_c, 3).await;
    let got_ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, missed.iter().map(|i| i.to_string()).collect::<Vec<_>>());
    expect_pong_next(&mut on_c).await;

    // The stream keeps 5: a position 4 messages further back is gone.
    insert(&db, &[("emp", "6"), ("emp", "7"), ("emp", "8")]);
    messages(&mut on_c, 3).await;
    let mut late = connect(&c.ws_url("/ws")).await;
    send_json(&mut late, json!({"op":"subscribe","channel":"emp","since":{"epoch":epoch,"offset":1}})).await;
    assert_eq!(next_json(&mut late).await["recovered"], false);
    a.stop().await.unwrap();
    c.stop().await.unwrap();
}

/// `POST /` on one node reaches the old pages on another, and "Send to N clients" counts both nodes' clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_publish_reaches_every_node() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let a = node(&db, &redis, |_| {}).await;
    let b = node(&db, &redis, |_| {}).await;
    wait_ready_node(&a).await;
    wait_ready_node(&b).await;
    let mut page_a = connect(&a.ws_url("/")).await;
    let mut page_b = connect(&b.ws_url("/")).await;
    let http = reqwest::Client::new();
    // The count comes from the nodes' reports (every 100 ms here).
    let mut answer = Value::Null;
    for attempt in 0.. {
        let body: Value = http
            .post(a.url("/"))
            .body(r#"{"message":"REFRESH"}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer = body;
        if answer["message"] == "Send to 2 clients" || attempt > 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answer["message"], "Send to 2 clients");
    // Both pages got every POST, in order: the last one is the same on both.
    assert_eq!(next_text(&mut page_a).await, r#"{"message":"REFRESH"}"#);
    assert_eq!(next_text(&mut page_b).await, r#"{"message":"REFRESH"}"#);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Redis killed mid-stream and started again empty: every row is delivered or still in the outbox, and a client connected throughout gets every message or an explicit `recovered: false`, never a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_silently() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let a = node(&db, &redis, |_| {}).await;
    wait_ready_node(&a).await;
    let mut ws = connect(&a.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let before = insert(&db, &[("emp", "1"), ("emp", "2")]);
    let first = messages(&mut ws, 2).await;

    redis.kill();
    let addr = a.addr;
    wait_until("readiness shows Redis down", || http_status(addr, "/readyz") == Some(503)).await;
    let during = insert(&db, &[("emp", "3"), ("emp", "4")]);
    // Nothing can be published: the rows wait in the outbox.
    assert_eq!(outbox_count(&db), 2);
    redis.restart();
    wait_ready_node(&a).await;
    wait_until("the waiting rows are drained", || outbox_count(&db) == 0).await;

    // Redis lost its data: a new epoch, announced as not recovered, then the rows.
    let mut saw_reset = false;
    let mut ids = Vec::new();
    while ids.len() < during.len() {
        let frame = next_json(&mut ws).await;
        match frame["type"].as_str() {
            Some("subscribed") => {
                assert_eq!(frame["recovered"], false);
                saw_reset = true;
            }
            Some("message") => {
                assert_ne!(frame["epoch"], first[0]["epoch"], "a new numbering must have a new epoch");
                ids.push(frame["id"].as_str().unwrap().parse::<i64>().unwrap());
            }
            _ => {}
        }
    }
    assert!(saw_reset, "the client must be told it did not recover");
    assert_eq!(ids, during);
    assert!(before.iter().all(|id| !ids.contains(id)));
    a.stop().await.unwrap();
}
