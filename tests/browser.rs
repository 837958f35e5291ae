//! A real browser: headless Chromium opens the demo page, sees a row
//! inserted into the outbox, and reconnects on its own across a restart of
//! the server. Needs `scripts/setup.sh` (Chromium and playwright-core).

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
    fn start(url: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "browser test dependencies are missing: run scripts/setup.sh"
        );
        let mut child = Command::new("node")
            .arg(dir.join("demo.mjs"))
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
}

/// The demo page shows a row inserted into the outbox, then reconnects by itself after a server restart and shows the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_receives_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let server = Binary::spawn(&db, &[]);
    let addr = server.addr;
    let mut page = Driver::start(&format!("http://{addr}/?channel=emp"));
    page.expect("subscribed 1").await;

    insert(&db, &[("emp", r#"{"message":"first-row-arrived"}"#)]);
    page.expect("text first-row-arrived").await;

    server.signal(libc::SIGTERM);
    assert!(server.wait().await.success());
    let server = Binary::spawn_on(&db, &addr.to_string(), &[]);
    page.expect("subscribed 2").await;
    insert(&db, &[("emp", r#"{"message":"second-row-after-restart"}"#)]);
    page.expect("text second-row-after-restart").await;
    if let Ok(path) = std::env::var("ORAPUSH_SCREENSHOT") {
        page.expect(&format!("screenshot {path}")).await;
    }
    page.stdin.write_all(b"quit\n").await.unwrap();
    let _ = tokio::time::timeout(PATIENCE, page.child.wait()).await;
    drop(server);
}
