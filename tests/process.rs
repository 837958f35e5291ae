//! Tests of the real `orapush` binary as an operator runs it: crash and
//! restart, SIGTERM, the `publish` command, configuration errors.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Moves the outbox rows (ids kept) into a side table, to put back later.
fn set_rows_aside(db: &std::path::Path) {
    open_db(db)
        .execute_batch(
            "BEGIN IMMEDIATE; CREATE TABLE aside AS SELECT * FROM orapush_outbox; \
             DELETE FROM orapush_outbox; COMMIT;",
        )
        .unwrap();
}

fn put_rows_back(db: &std::path::Path) {
    open_db(db).execute_batch("INSERT INTO orapush_outbox SELECT * FROM aside ORDER BY id").unwrap();
}

/// SIGKILL in the middle of a backlog loses nothing: after a restart every row was delivered at least once and the outbox is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backlog_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let env = [("ORAPUSH__SOURCE__BATCH_SIZE", "100")];
    let server = Binary::spawn(&db, &env);
    let mut ws = connect(&server.ws_url("/ws?channel=load")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    let total = 5000;
    let rows: Vec<(&str, String)> = (0..total).map(|i| ("load", format!(r#"{{"n":{i}}}"#))).collect();
    let borrowed: Vec<(&str, &str)> = rows.iter().map(|(c, p)| (*c, p.as_str())).collect();
    let ids = insert(&db, &borrowed);

    let mut seen = Vec::new();
    assert!(collect_ids(&mut ws, &mut seen, |s| s.len() >= 1500).await);
    server.signal(libc::SIGKILL);
    collect_ids(&mut ws, &mut seen, |_| false).await;
    let status = server.wait().await;
    assert!(!status.success());
    let left = outbox_count(&db);
    assert!(left > 0, "the kill came too late to test anything");

    // What the crash left in the outbox goes aside until the subscriber is
    // back (a restarted orapush has a new epoch, so the client could not
    // recover rows drained before it reconnected), then returns with its ids.
    set_rows_aside(&db);
    let server = Binary::spawn(&db, &[]);
    let mut ws = connect(&server.ws_url("/ws?channel=load")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    put_rows_back(&db);
    let want: HashSet<i64> = ids.iter().copied().collect();
    assert!(
        collect_ids(&mut ws, &mut seen, |s| s.iter().copied().collect::<HashSet<_>>().is_superset(&want))
            .await
    );
    wait_until("the outbox is empty", || outbox_count(&db) == 0).await;
    let duplicates = seen.len() - want.len();
    assert!(duplicates <= 100, "{duplicates} duplicates exceed one batch");
    server.signal(libc::SIGTERM);
    assert!(server.wait().await.success());
}

/// SIGTERM closes every client with 1001, exits 0 and deletes no row that was not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_with_1001_and_keeps_undelivered_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let server = Binary::spawn(&db, &[("ORAPUSH__SOURCE__BATCH_SIZE", "50")]);
    let mut ws = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let mut legacy = connect(&server.ws_url("/")).await;

    let rows: Vec<(&str, &str)> = (0..20_000).map(|_| ("emp", r#"{"message":"REFRESH"}"#)).collect();
    let ids = insert(&db, &rows);
    let mut seen = Vec::new();
    assert!(collect_ids(&mut ws, &mut seen, |s| s.len() >= 200).await);
    server.signal(libc::SIGTERM);

    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let close = loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Text(t))) => {
                let f: Value = serde_json::from_str(&t).unwrap();
                seen.push(f["id"].as_str().unwrap().parse().unwrap());
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(1001));
    assert_eq!(close_code(&mut legacy).await, Some(1001));
    assert!(server.wait().await.success(), "orapush exits 0 on SIGTERM");

    let conn = open_db(&db);
    let left: HashSet<i64> = conn
        .prepare("SELECT id FROM orapush_outbox")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!left.is_empty(), "SIGTERM came after the whole backlog was drained");
    let delivered: HashSet<i64> = seen.into_iter().collect();
    let lost: Vec<i64> =
        ids.iter().filter(|id| !left.contains(id) && !delivered.contains(id)).copied().collect();
    assert!(
        lost.is_empty(),
        "{} rows deleted but never delivered, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// `orapush publish` writes a row that the running server delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_command_reaches_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let server = Binary::spawn(&db, &[]);
    let mut ws = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let out = Command::new(env!("CARGO_BIN_EXE_orapush"))
        .args(["publish", "--sqlite"])
        .arg(&db)
        .args(["--channel", "emp", r#"{"message":"REFRESH"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let f = next_json(&mut ws).await;
    assert_eq!(
        (f["id"].as_str(), &f["data"]),
        (Some(id.as_str()), &serde_json::json!({"message": "REFRESH"}))
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_orapush"))
        .args(["publish", "--sqlite"])
        .arg(&db)
        .args(["--channel", "no spaces", "x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("channel name"));
}

/// A configuration error stops start-up with a message naming the key.
#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("ORAPUSH__HUB__HISTORY_SIZE", "many", "history_size"),
        ("ORAPUSH__SERVER__LISTEN", "not-an-address", "server.listen"),
        ("ORAPUSH__SOURCE__KIND", "mongodb", "kind"),
    ];
    for (key, value, named) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_orapush"))
            .args(["--sqlite"])
            .arg(dir.path().join("o.db"))
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{key}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_orapush"))
        .args(["--sqlite", "/nonexistent-dir/o.db", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite.path"));
}

/// `orapush subscribe` prints the frames and exits 0 after --count messages, 1 on timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_command_prints_messages() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let server = Binary::spawn(&db, &[]);
    let url = server.ws_url("/ws");
    let mut child = Command::new(env!("CARGO_BIN_EXE_orapush"))
        .args(["subscribe", "--url", &url, "--channel", "emp", "--count", "2", "--timeout-ms", "15000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "subscribed");
    let ids = insert(&db, &[("emp", "one"), ("emp", "two")]);
    let printed: Vec<Value> = lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert!(child.wait().unwrap().success());
    let got: Vec<&str> = printed.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![ids[0].to_string(), ids[1].to_string()]);

    let timed_out = Command::new(env!("CARGO_BIN_EXE_orapush"))
        .args(["subscribe", "--url", &url, "--channel", "quiet", "--count", "1", "--timeout-ms", "300"])
        .output()
        .unwrap();
    assert!(!timed_out.status.success());
    assert!(String::from_utf8_lossy(&timed_out.stderr).contains("timed out"));
}

/// With an Oracle source and no Instant Client, the binary exits non-zero within seconds with the DPI-1047 guidance.
#[test]
fn oracle_without_instant_client_explains_dpi_1047() {
    for kind in ["oracle_outbox", "oracle_aq"] {
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_orapush"))
            .args(["--listen", "127.0.0.1:0"])
            .env("ORAPUSH__SOURCE__KIND", kind)
            .env("ORAPUSH__ORACLE__PASSWORD", "not-used")
            .env("LD_LIBRARY_PATH", "")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{kind}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{kind} took {:?}",
            started.elapsed()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in ["DPI-1047", "Instant Client", "LD_LIBRARY_PATH", "oracle.client_lib_dir"] {
            assert!(stderr.contains(needle), "{kind}: {needle} missing in {stderr}");
        }
        assert!(!stderr.contains("not-used"), "the password leaked");
    }
}
