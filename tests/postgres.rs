//! The PostgreSQL source, black-box: the real server against the local
//! PostgreSQL (127.0.0.1:5432, database `test`), one schema per test.
//! Wake-up by NOTIFY, the poll fallback, rows committed out of id order,
//! connections killed under a stream, SIGKILL at random moments, failover
//! between two instances, and bad configuration.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

async fn start(schema: &PgSchema, tweak: impl FnOnce(&mut orapush::config::Settings)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("unused.db");
    Server::start_in(dir, db, |s| {
        schema.apply(s);
        tweak(s);
    })
    .await
}

fn covers(seen: &[i64], want: &HashSet<i64>) -> bool {
    let got: HashSet<i64> = seen.iter().copied().collect();
    got.is_superset(want)
}

/// A NOTIFY from the outbox trigger wakes orapush long before its (30 s) poll would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_drainer_at_once() {
    let schema = PgSchema::new();
    let server = start(&schema, |s| s.source.poll_interval_ms = Some(30_000)).await;
    let mut ws = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let db = schema.client().await;
    for round in 0..3 {
        let started = Instant::now();
        let ids = schema.insert(&db, &[("emp", "REFRESH")]).await;
        let f = next_json(&mut ws).await;
        assert_eq!(f["id"], ids[0].to_string());
        assert!(started.elapsed() < Duration::from_secs(10), "round {round}: woke only by the poll");
    }
    server.stop().await.unwrap();
}

/// Without a NOTIFY (trigger gone), the poll still delivers; after the LISTEN connection is killed, NOTIFY works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_covers_missed_notifications_and_listen_reconnects() {
    let schema = PgSchema::new();
    let server = start(&schema, |s| s.source.poll_interval_ms = Some(300)).await;
    let mut ws = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let db = schema.client().await;
    db.batch_execute("DROP TRIGGER orapush_outbox_notify ON orapush_outbox").await.unwrap();
    let ids = schema.insert(&db, &[("emp", "no notify")]).await;
    assert_eq!(next_json(&mut ws).await["id"], ids[0].to_string());
    server.stop().await.unwrap();

    // A fresh start re-creates the trigger; then kill the LISTEN connection.
    let server = start(&schema, |s| s.source.poll_interval_ms = Some(30_000)).await;
    let mut ws = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("{}-listen", schema.name)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    // The drainer notices at its next wait slice and listens again; a row
    // inserted after that is delivered by NOTIFY, not by the 30 s poll.
    let listen_name = format!("{}-listen", schema.name);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let back: i64 = db
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&listen_name])
            .await
            .unwrap()
            .get(0);
        if back == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the LISTEN connection never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let ids = schema.insert(&db, &[("emp", "after reconnect")]).await;
    assert_eq!(next_json(&mut ws).await["id"], ids[0].to_string());
    assert!(started.elapsed() < Duration::from_secs(10));
    server.stop().await.unwrap();
}

/// A row whose transaction commits after a higher id was delivered is still delivered (no id cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_committed_out_of_id_order_are_delivered() {
    let schema = PgSchema::new();
    let server = start(&schema, |_| {}).await;
    let mut ws = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let t1 = schema.client().await;
    let t2 = schema.client().await;
    t1.batch_execute("BEGIN").await.unwrap();
    let low: i64 = t1
        .query_one("INSERT INTO orapush_outbox(channel, payload) VALUES ('emp', 'T1') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    let high = schema.insert(&t2, &[("emp", "T2")]).await[0];
    assert!(low < high);
    let f = next_json(&mut ws).await;
    assert_eq!(f["id"], high.to_string());
    t1.batch_execute("COMMIT").await.unwrap();
    let f = next_json(&mut ws).await;
    assert_eq!(
        (f["id"].as_str(), &f["data"]),
        (Some(low.to_string().as_str()), &serde_json::json!({"message": "T1"}))
    );
    server.stop().await.unwrap();
}

/// pg_terminate_backend on orapush's connections, again and again during a stream: nothing is lost and clients stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_lose_nothing() {
    let schema = PgSchema::new();
    let server = start(&schema, |s| {
        s.source.poll_interval_ms = Some(100);
        s.source.batch_size = 50;
        s.source.max_backoff_ms = 200;
    })
    .await;
    let mut ws = connect(&server.ws_url("/ws?channel=s")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    let producer_schema = schema.name.clone();
    let producer = tokio::spawn(async move {
        let db = PgSchema { name: producer_schema };
        let client = db.client().await;
        let mut ids = Vec::new();
        for i in 0..100 {
            let rows: Vec<(String, String)> =
                (0..20).map(|j| ("s".to_string(), format!("{{\"n\":{}}}", i * 20 + j))).collect();
            let borrowed: Vec<(&str, &str)> = rows.iter().map(|(c, p)| (c.as_str(), p.as_str())).collect();
            ids.extend(db.insert(&client, &borrowed).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::mem::forget(db); // the test's PgSchema drops the schema
        ids
    });
    let killer_db = schema.client().await;
    let app = schema.name.clone();
    let killer = tokio::spawn(async move {
        let mut kills = 0i64;
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            kills += killer_db
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE $1",
                    &[&format!("{app}%")],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
        }
        kills
    });
    let mut seen = Vec::new();
    let reader = tokio::spawn(async move {
        let ok = collect_ids(&mut ws, &mut seen, |s| s.len() >= 2000).await;
        (ws, seen, ok)
    });
    let kills = killer.await.unwrap();
    let ids = producer.await.unwrap();
    let want: HashSet<i64> = ids.into_iter().collect();
    let (mut ws, mut seen, ok) = reader.await.unwrap();
    assert!(ok, "the client was disconnected");
    assert!(collect_ids(&mut ws, &mut seen, |s| covers(s, &want)).await, "the client was disconnected");
    assert!(kills >= 4, "only {kills} backends were terminated");
    expect_pong_next(&mut ws).await;
    server.stop().await.unwrap();
}

/// Two instances on one outbox: one drains, the other stands by (503); SIGKILL the active one and the standby takes over with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_after_sigkill() {
    let schema = PgSchema::new();
    let env: Vec<(String, String)> = schema.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.db");
    let first = Binary::spawn(&unused, &env);
    let second = Binary::spawn_unready(&unused, "127.0.0.1:0", &env);
    // The second one is a standby: up, but not ready.
    let addr = second.addr;
    wait_until("the second instance reports standby", || {
        http_body(addr, "/readyz").is_some_and(|b| b.contains("\"role\":\"standby\""))
    })
    .await;
    assert_eq!(http_status(second.addr, "/readyz"), Some(503));
    assert!(http_body(second.addr, "/metrics").unwrap().contains("orapush_source_active 0"));
    assert!(http_body(first.addr, "/metrics").unwrap().contains("orapush_source_active 1"));

    let mut on_first = connect(&first.ws_url("/ws?channel=f")).await;
    let mut on_second = connect(&second.ws_url("/ws?channel=f")).await;
    assert_eq!(next_json(&mut on_first).await["type"], "subscribed");
    assert_eq!(next_json(&mut on_second).await["type"], "subscribed");
    let db = schema.client().await;
    let rows: Vec<(&str, &str)> = (0..100).map(|_| ("f", "before")).collect();
    let before: HashSet<i64> = schema.insert(&db, &rows).await.into_iter().collect();
    let mut seen_first = Vec::new();
    assert!(collect_ids(&mut on_first, &mut seen_first, |s| covers(s, &before)).await);
    // Only the active instance drains: the standby's client got nothing.
    expect_pong_next(&mut on_second).await;

    first.signal(libc::SIGKILL);
    let rows: Vec<(&str, &str)> = (0..100).map(|_| ("f", "after")).collect();
    let after: HashSet<i64> = schema.insert(&db, &rows).await.into_iter().collect();
    collect_ids(&mut on_first, &mut seen_first, |_| false).await;
    let mut seen_second = Vec::new();
    assert!(collect_ids(&mut on_second, &mut seen_second, |s| covers(s, &after)).await);
    wait_ready(second.addr);
    schema.wait_until_empty(&db).await;
    drop(first);
}

/// SIGKILL at random moments during a continuous stream, restarting each time: nothing lost, duplicates bounded, order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    const BATCH: usize = 100;
    const CRASHES: usize = 4;
    let schema = PgSchema::new();
    let mut env = schema.env();
    env.push(("ORAPUSH__SOURCE__BATCH_SIZE".into(), BATCH.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.db");

    // Create the schema once, then hold the drain lock between runs so each
    // restarted orapush stands by until its subscriber is connected.
    drop(Binary::spawn(&unused, &env));
    let lock = schema.client().await;
    let take_lock = "SELECT pg_advisory_lock(hashtext($1))";
    let give_lock = "SELECT pg_advisory_unlock(hashtext($1))";
    lock.execute(take_lock, &[&schema.lock_key()]).await.unwrap();

    let producer_schema = PgSchema { name: schema.name.clone() };
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = tokio::spawn(async move {
        let client = producer_schema.client().await;
        let mut ids = Vec::new();
        let mut n = 0;
        while stop_rx.try_recv().is_err() {
            let rows: Vec<String> = (0..10).map(|j| format!("{{\"n\":{}}}", n + j)).collect();
            n += 10;
            let borrowed: Vec<(&str, &str)> = rows.iter().map(|p| ("k", p.as_str())).collect();
            ids.extend(producer_schema.insert(&client, &borrowed).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::mem::forget(producer_schema);
        ids
    });

    let mut seen: Vec<i64> = Vec::new();
    for crash in 0..=CRASHES {
        let server = Binary::spawn_unready(&unused, "127.0.0.1:0", &env);
        let mut ws = connect(&server.ws_url("/ws?channel=k")).await;
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
        lock.execute(give_lock, &[&schema.lock_key()]).await.unwrap();
        if crash == CRASHES {
            let _ = stop_tx.send(());
            let want: HashSet<i64> = producer.await.unwrap().into_iter().collect();
            assert!(collect_ids(&mut ws, &mut seen, |s| covers(s, &want)).await);
            let db = schema.client().await;
            schema.wait_until_empty(&db).await;
            let duplicates = seen.len() - want.len();
            assert!(duplicates <= BATCH * CRASHES, "{duplicates} duplicates");
            let mut first_seen = HashSet::new();
            let in_order: Vec<i64> = seen.iter().copied().filter(|id| first_seen.insert(*id)).collect();
            assert!(in_order.windows(2).all(|w| w[0] < w[1]), "order broken after removing duplicates");
            break;
        }
        let progress = seen.len() + 300;
        assert!(collect_ids(&mut ws, &mut seen, |s| s.len() >= progress).await);
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 200)).await;
        server.signal(libc::SIGKILL);
        collect_ids(&mut ws, &mut seen, |_| false).await;
        assert!(!server.wait().await.success());
        // Blocks until PostgreSQL has noticed the dead drainer's session.
        lock.execute(take_lock, &[&schema.lock_key()]).await.unwrap();
    }
}

/// Bad configuration: an unreachable server keeps /readyz at 503 naming postgres.url; a missing database or table stops start-up naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.db");
    let unreachable = [
        ("ORAPUSH__SOURCE__KIND", "postgres"),
        ("ORAPUSH__POSTGRES__URL", "postgres://postgres@127.0.0.1:1/test"),
    ];
    let server = Binary::spawn_unready(&unused, "127.0.0.1:0", &unreachable);
    let addr = server.addr;
    wait_until("readyz explains the unreachable server", || {
        http_body(addr, "/readyz").is_some_and(|b| b.contains("postgres.url") && b.contains("127.0.0.1:1"))
    })
    .await;
    assert_eq!(http_status(addr, "/readyz"), Some(503));
    assert_eq!(http_status(addr, "/healthz"), Some(200));
    drop(server);

    let cases = [
        ("postgres://postgres@127.0.0.1:5432/no_such_database_here", "public", "does not exist"),
        (PG_URL, "no_such_schema_here", "install.sql"),
    ];
    for (url, schema, explained) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orapush"))
            .args(["--listen", "127.0.0.1:0"])
            .env("ORAPUSH__SOURCE__KIND", "postgres")
            .env("ORAPUSH__POSTGRES__URL", url)
            .env("ORAPUSH__POSTGRES__SCHEMA", schema)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(explained), "{url}: {stderr}");
        assert!(stderr.contains("postgres.url") || stderr.contains("postgres.create_schema"), "{stderr}");
    }
}

/// install.sql and uninstall.sql are idempotent, and the trigger NOTIFYs on insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_scripts_are_idempotent() {
    let schema = PgSchema::new();
    let (client, mut connection) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await.unwrap();
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = notes_tx.send(n.channel().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("CREATE SCHEMA \"{0}\"; SET search_path TO \"{0}\"", schema.name))
        .await
        .unwrap();
    let install = include_str!("../sql/postgres/install.sql");
    let uninstall = include_str!("../sql/postgres/uninstall.sql");
    client.batch_execute(install).await.unwrap();
    client.batch_execute(install).await.unwrap();
    client.batch_execute("LISTEN orapush_outbox").await.unwrap();
    client.batch_execute("INSERT INTO orapush_outbox(channel, payload) VALUES ('emp', 'x')").await.unwrap();
    let channel = tokio::time::timeout(PATIENCE, notes.recv()).await.unwrap().unwrap();
    assert_eq!(channel, "orapush_outbox");
    client.batch_execute(uninstall).await.unwrap();
    client.batch_execute(uninstall).await.unwrap();
    let left: i64 = client
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = $1", &[&schema.name])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// orapush drains with only the grants the README lists (SELECT, UPDATE, DELETE on the outbox; SELECT, INSERT, UPDATE on the dead letters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_role_is_enough() {
    let schema = PgSchema::new();
    // Create the tables as the owner (through orapush), then stop it.
    start(&schema, |_| {}).await.stop().await.unwrap();
    let admin = schema.client().await;
    let role = format!("{}_role", schema.name);
    let s = &schema.name;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN;
             GRANT USAGE ON SCHEMA \"{s}\" TO \"{role}\";
             GRANT SELECT, UPDATE, DELETE ON \"{s}\".orapush_outbox TO \"{role}\";
             GRANT SELECT, INSERT, UPDATE ON \"{s}\".orapush_dead_letter TO \"{role}\";"
        ))
        .await
        .unwrap();
    let server = start(&schema, |st| {
        st.postgres.url = orapush::config::Secret::new(format!("postgres://{role}@127.0.0.1:5432/test"));
        st.postgres.create_schema = false;
        st.server.max_message_bytes = 1024;
    })
    .await;
    let mut ws = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let big = "x".repeat(2000);
    let ids = schema.insert(&admin, &[("emp", "ok"), ("emp", big.as_str()), ("emp", "after")]).await;
    assert_eq!(next_json(&mut ws).await["id"], ids[0].to_string());
    assert_eq!(next_json(&mut ws).await["id"], ids[2].to_string());
    let db = schema.client().await;
    schema.wait_until_empty(&db).await;
    let dead: i64 = db.query_one("SELECT count(*) FROM orapush_dead_letter", &[]).await.unwrap().get(0);
    assert_eq!(dead, 1);
    server.stop().await.unwrap();
    admin.batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\";")).await.unwrap();
}
