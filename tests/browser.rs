//! A real browser: headless Chromium opens the demo page and the status page
//! of a real server. The demo page shows a row inserted into the outbox,
//! reconnects on its own across a restart, and shows a refused channel as an
//! error; the status page shows live figures. Needs `scripts/setup.sh`
//! (Chromium and playwright-core); the drivers are in tests/browser/.
//! `ORAPUSH_SCREENSHOT=<dir>` saves a PNG of each page at the end of its test.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Driver {
    /// Opens `url` with the driver script `tests/browser/<script>`.
    fn start(script: &str, url: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "browser test dependencies are missing: run scripts/setup.sh"
        );
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (scripts/setup.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, stdin, stdout }
    }

    /// Sends one command and asserts that the page answered "ok".
    async fn expect(&mut self, command: &str) {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        let line = tokio::time::timeout(PATIENCE * 2, self.stdout.next_line())
            .await
            .expect("the driver answers")
            .unwrap()
            .expect("the driver is running");
        assert_eq!(line, "ok", "{command}");
    }

    /// Saves a screenshot when ORAPUSH_SCREENSHOT names a directory, then quits.
    async fn finish(mut self, name: &str) {
        if let Ok(dir) = std::env::var("ORAPUSH_SCREENSHOT") {
            self.expect(&format!("screenshot {}", Path::new(&dir).join(format!("{name}.png")).display()))
                .await;
        }
        self.stdin.write_all(b"quit\n").await.unwrap();
        let _ = tokio::time::timeout(PATIENCE, self.child.wait()).await;
    }
}

/// The demo page shows a row inserted into the outbox, then reconnects by itself after a server restart and shows the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_receives_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let server = Binary::spawn(&db, &[]);
    let addr = server.addr;
    let mut page = Driver::start("demo.mjs", &format!("http://{addr}/?channel=emp"));
    page.expect("subscribed 1").await;

    insert(&db, &[("emp", r#"{"message":"first-row-arrived"}"#)]);
    page.expect("text first-row-arrived").await;

    server.signal(libc::SIGTERM);
    assert!(server.wait().await.success());
    let server = Binary::spawn_on(&db, &addr.to_string(), &[]);
    page.expect("subscribed 2").await;
    insert(&db, &[("emp", r#"{"message":"second-row-after-restart"}"#)]);
    page.expect("text second-row-after-restart").await;
    page.expect("is #state connected").await;
    page.expect("noerrors").await;
    page.finish("demo").await;
    drop(server);
}

/// A channel the server refuses shows as an error on the demo page, never under "Subscribed to", and the publish block fits SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_a_refused_channel_as_an_error() {
    let server = Server::start().await;
    let mut page = Driver::start("demo.mjs", &server.url("/?channel=emp&channel=bad%20channel"));
    // The server answers in order: the refusal comes after emp's confirmation.
    page.expect("shows #errors bad channel: bad_request").await;
    page.expect("is #channels emp").await;
    page.expect("is #state connected").await;
    // The sqlite3 shell commits by itself, and COMMIT there is an error.
    page.expect(r#"shows #publish-sql sqlite3 orapush.db "INSERT INTO orapush_outbox"#).await;
    page.expect(r#"shows #publish-sql orapush publish --channel emp '{"message":"REFRESH"}'"#).await;
    page.expect("lacks #publish-sql COMMIT").await;
    page.expect("noerrors").await;
    page.finish("demo-refused").await;
    server.stop().await.unwrap();
}

/// The status page shows the role, the source and the backlog, then follows a new subscriber, delivered rows and a dead letter as they happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_live_figures() {
    let server = Server::start().await;
    let mut page = Driver::start("status.mjs", &server.url("/status"));
    page.expect("is #role active").await;
    page.expect("is #source sqlite").await;
    page.expect(r"matches #backlog ^\d+$").await;
    page.expect("is #connections 0").await;

    let mut ws = connect(&server.ws_url("/ws")).await;
    subscribe(&mut ws, "emp").await;
    let ids = insert(&server.db, &[("emp", r#"{"n":1}"#), ("emp", r#"{"n":2}"#), ("emp", r#"{"n":3}"#)]);
    let mut seen = Vec::new();
    assert!(collect_ids(&mut ws, &mut seen, |s| s.len() == ids.len()).await);
    page.expect("is #connections 1").await;
    page.expect("row #channels emp|1").await;
    // Three deliveries between two polls make a non-zero rate on the chart.
    page.expect(r"matches #peak-delivered ^(0\.[1-9]|[1-9])").await;

    let dead = insert(&server.db, &[("bad channel", r#"{"n":4}"#)]);
    page.expect(&format!("row #dead-letters {}|bad channel", dead[0])).await;
    page.expect("noerrors").await;
    page.finish("status").await;
    drop(ws);
    server.stop().await.unwrap();
}

/// A standby's status page says so, and renders the figures a standby does not know without a script error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_of_a_standby() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let active = Binary::spawn(&db, &[]);
    let standby = Binary::spawn_unready(&db, "127.0.0.1:0", &[]);
    let mut page = Driver::start("status.mjs", &format!("http://{}/status", standby.addr));
    page.expect("is #role standby").await;
    page.expect("is #source sqlite").await;
    page.expect("polls 2").await;
    page.expect("noerrors").await;
    page.finish("status-standby").await;
    drop(standby);
    drop(active);
}
