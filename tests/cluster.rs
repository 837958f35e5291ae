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

/// Waits until the node is ready (Redis connected) and its source is up
/// (draining or standing by: the outbox's tables exist).
async fn wait_ready_node(server: &Server) {
    let addr = server.addr;
    wait_for("the node is ready and its source up", || {
        // One answer, read whole: "ready" is what its 200 says.
        let body = http_body(addr, "/readyz");
        let ready = body.as_deref().is_some_and(|b| {
            b.contains("\"status\":\"ready\"") && (b.contains("\"active\"") || b.contains("\"standby\""))
        });
        if ready {
            Ok(())
        } else {
            Err(format!("{addr}/readyz said {body:?}"))
        }
    })
    .await;
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
    // Delivered is not deleted yet: the drainer deletes after Redis's ack.
    wait_until("the first rows are deleted", || outbox_count(&db) == 0).await;

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

const SECRET: &str = "cluster-test-secret-0123456789";

fn token(sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": 4_000_000_000u64, "channels": ["emp"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A `target_user` message reaches that user's connections on every node, and no one else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_messages_reach_their_user_on_every_node() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let jwt = |s: &mut Settings| {
        s.auth.mode = orapush::config::AuthMode::Jwt;
        s.auth.hs256_secret = Some(Secret::new(SECRET));
    };
    let a = node(&db, &redis, jwt).await;
    let b = node(&db, &redis, jwt).await;
    wait_ready_node(&a).await;
    wait_ready_node(&b).await;
    let mut scott_on_a = connect(&a.ws_url(&format!("/ws?token={}&channel=emp", token("SCOTT")))).await;
    let mut scott_on_b = connect(&b.ws_url(&format!("/ws?token={}&channel=emp", token("SCOTT")))).await;
    let mut king_on_b = connect(&b.ws_url(&format!("/ws?token={}&channel=emp", token("KING")))).await;
    for ws in [&mut scott_on_a, &mut scott_on_b, &mut king_on_b] {
        assert_eq!(next_json(ws).await["type"], "subscribed");
    }
    let ids = insert_targeted(&db, &[("emp", "for scott", Some("scott")), ("emp", "for all", None)]);
    for ws in [&mut scott_on_a, &mut scott_on_b] {
        let got = messages(ws, 2).await;
        assert_eq!(got[0]["id"], ids[0].to_string());
        assert_eq!(got[1]["id"], ids[1].to_string());
    }
    let king = messages(&mut king_on_b, 1).await;
    assert_eq!(king[0]["id"], ids[1].to_string(), "KING must not get SCOTT's message");
    expect_pong_next(&mut king_on_b).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Restarting every node keeps the epoch (it lives in Redis): a client recovers across the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_every_node_keeps_recovery() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let a = node(&db, &redis, |_| {}).await;
    wait_ready_node(&a).await;
    let mut ws = connect(&a.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    insert(&db, &[("emp", "before")]);
    let last = messages(&mut ws, 1).await.remove(0);
    wait_until("the row is deleted", || outbox_count(&db) == 0).await;
    a.stop().await.unwrap();
    let missed = insert(&db, &[("emp", "while down 1"), ("emp", "while down 2")]);

    let b = node(&db, &redis, |_| {}).await;
    wait_ready_node(&b).await;
    wait_until("the rows are drained", || outbox_count(&db) == 0).await;
    let mut again = connect(&b.ws_url("/ws")).await;
    send_json(
        &mut again,
        json!({"op":"subscribe","channel":"emp","since":{"epoch":last["epoch"],"offset":last["offset"]}}),
    )
    .await;
    let subscribed = next_json(&mut again).await;
    assert_eq!((subscribed["recovered"].as_bool(), &subscribed["epoch"]), (Some(true), &last["epoch"]));
    let got = messages(&mut again, 2).await;
    assert_eq!(
        got.iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(),
        missed.iter().map(|i| i.to_string()).collect::<Vec<_>>()
    );
    b.stop().await.unwrap();
}

/// A Redis unreachable at start: the node serves /healthz, is not ready and says why, and delivers once Redis appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_without_redis_and_drains_when_it_appears() {
    let mut redis = RedisServer::not_started();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let a = node(&db, &redis, |_| {}).await;
    let addr = a.addr;
    assert_eq!(http_status(addr, "/healthz"), Some(200));
    wait_until("not ready while Redis is missing, its source up", || {
        http_status(addr, "/readyz") == Some(503)
            && http_body(addr, "/readyz").is_some_and(|b| b.contains("\"active\""))
    })
    .await;
    let ready: Value = serde_json::from_str(&http_body(addr, "/readyz").unwrap()).unwrap();
    assert_eq!(ready["redis"], "down", "{ready}");
    let mut ws = connect(&a.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let ids = insert(&db, &[("emp", "waiting for redis")]);
    assert_eq!(outbox_count(&db), 1, "nothing can be published yet");
    redis.restart();
    wait_ready_node(&a).await;
    let got = messages(&mut ws, 1).await;
    assert_eq!(got[0]["id"], ids[0].to_string());
    a.stop().await.unwrap();
}

/// The role a binary's /readyz reports.
fn role(node: &Binary) -> String {
    let body = http_body(node.addr, "/readyz").unwrap_or_default();
    serde_json::from_str::<Value>(&body)
        .map(|v| v["role"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// SIGKILL of the draining node, three times during a continuous stream: another node drains on, no row is lost, and a subscriber on a node that never drains sees every offset exactly once (a redelivered row keeps its offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_drainer_repeatedly_loses_nothing_and_reuses_no_offset() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let url = redis.url();
    let env = |retry_ms: &'static str| {
        vec![
            ("ORAPUSH__BROKER__KIND", "redis".to_string()),
            ("ORAPUSH__REDIS__URL", url.clone()),
            ("ORAPUSH__SOURCE__BATCH_SIZE", "20".to_string()),
            ("ORAPUSH__SOURCE__STANDBY_RETRY_MS", retry_ms.to_string()),
        ]
    };
    let spawn = |retry_ms: &'static str| {
        let vars = env(retry_ms);
        let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Binary::spawn_unready(&db, "127.0.0.1:0", &borrowed)
    };
    let mut drainers = vec![spawn("50")];
    let first = &drainers[0];
    wait_until("the first node drains", || role(first) == "active").await;
    // This node stands by for an hour: it never drains, so it is never killed.
    let watcher = spawn("3600000");
    wait_until("the watcher stands by", || role(&watcher) == "standby").await;
    drainers.push(spawn("50"));
    let mut ws = connect(&watcher.ws_url("/ws?channel=k")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let producer_db = db.clone();
    let producer = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..200 {
            if stop_rx.try_recv().is_ok() {
                break;
            }
            ids.extend(insert(&producer_db, &[("k", "a"), ("k", "b"), ("k", "c")]));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        ids
    });
    let mut frames: Vec<Value> = Vec::new();
    for kill in 0..3 {
        // Kill only once the stream has moved on since the last kill.
        let want = (kill + 1) * 30;
        while frames.len() < want {
            let frame = next_json(&mut ws).await;
            if frame["type"] == "message" {
                frames.push(frame);
            }
        }
        // The node that drains now (one that just took over, or met a
        // passing lock, may say so only a moment later).
        let active = wait_for("a node drains", || {
            drainers.iter().position(|d| role(d) == "active").ok_or("none says it is active")
        })
        .await;
        let killed = drainers.remove(active);
        killed.signal(libc::SIGKILL);
        killed.wait().await;
        drainers.push(spawn("50"));
    }
    let _ = stop_tx.send(());
    let ids = producer.await.unwrap();
    wait_until("the outbox is drained", || outbox_count(&db) == 0).await;
    while frames.len() < ids.len() {
        let frame = next_json(&mut ws).await;
        if frame["type"] == "message" {
            frames.push(frame);
        }
    }
    let offsets: Vec<u64> = frames.iter().map(|f| f["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=ids.len() as u64).collect::<Vec<_>>(), "every offset once, in order");
    let got: Vec<i64> = frames.iter().map(|f| f["id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(got, ids, "every row once, in id order");
    expect_pong_next(&mut ws).await;
}

/// Three nodes on one PostgreSQL outbox: rows reach subscribers on every node, in order, consecutive offsets, one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_postgresql_outbox() {
    let redis = RedisServer::start();
    let schema = PgSchema::new();
    let unused = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&unused.path().join("unused.db"), &redis, |s| schema.apply(s)).await);
    }
    for n in &nodes {
        wait_ready_node(n).await;
    }
    let mut clients = Vec::new();
    for n in &nodes {
        let mut ws = connect(&n.ws_url("/ws?channel=emp")).await;
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
        clients.push(ws);
    }
    let db = schema.client().await;
    let rows: Vec<(&str, &str)> = (0..30).map(|_| ("emp", r#"{"message":"REFRESH"}"#)).collect();
    let ids = schema.insert(&db, &rows).await;
    let mut epochs = Vec::new();
    for ws in &mut clients {
        let got = messages(ws, 30).await;
        assert_eq!(
            got.iter().map(|m| m["offset"].as_u64().unwrap()).collect::<Vec<_>>(),
            (1..=30).collect::<Vec<_>>()
        );
        assert_eq!(
            got.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect::<Vec<_>>(),
            ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()
        );
        epochs.push(got[0]["epoch"].clone());
    }
    assert!(epochs.windows(2).all(|w| w[0] == w[1]), "{epochs:?}");
    schema.wait_until_empty(&db).await;
    for n in nodes {
        n.stop().await.unwrap();
    }
}
