//! The compose environment, checked where Docker cannot run: the file is
//! valid (`docker-compose config -q`, Debian's docker-compose, installed by
//! scripts/setup.sh), the database's init scripts are the sql/oracle files
//! themselves, and the end-to-end script is valid shell. tests/compose/e2e.sh
//! runs the real thing wherever Docker is.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `docker-compose config -q` accepts docker-compose.yml, profiles included.
#[test]
fn compose_file_is_valid() {
    for profile in [None, Some("aq")] {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(root()).args(["-f", "docker-compose.yml"]);
        if let Some(p) = profile {
            cmd.args(["--profile", p]);
        }
        let out = cmd.args(["config", "-q"]).output().expect("docker-compose (scripts/setup.sh installs it)");
        assert!(out.status.success(), "{profile:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The database runs sql/oracle/grants.sql and install.sql themselves, from a mount of sql/oracle.
#[test]
fn init_scripts_are_the_sql_files() {
    let compose = read("docker-compose.yml");
    assert!(compose.contains("- ./sql/oracle:/opt/orapush-sql:ro"), "sql/oracle is not mounted");
    assert!(compose.contains("- ./docker/oracle-init:/container-entrypoint-initdb.d:ro"));
    assert!(compose.contains("image: gvenzl/oracle-free:23-slim-faststart"));
    assert!(compose.contains("healthcheck.sh"));
    let init_dir = root().join("docker/oracle-init");
    let mut referenced = Vec::new();
    for entry in std::fs::read_dir(&init_dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for part in text.split("@/opt/orapush-sql/").skip(1) {
            let file: String = part.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
            referenced.push(file);
        }
    }
    assert_eq!(referenced, vec!["grants.sql".to_string(), "install.sql".to_string()], "in this order");
    for file in &referenced {
        assert!(root().join("sql/oracle").join(file).is_file(), "sql/oracle/{file} is missing");
    }
}

/// The Oracle scripts use what they promise: idempotent DDL, the package's API, SQL*Plus terminators.
#[test]
fn oracle_scripts_have_the_promised_shape() {
    let install = read("sql/oracle/install.sql");
    for needle in [
        "CREATE TABLE orapush_outbox",
        "CREATE TABLE orapush_dead_letter",
        "IF SQLCODE != -955",
        "queue_payload_type => 'RAW'",
        "max_retries => 5",
        "AQ$_ORAPUSH_QT_E",
        "CREATE OR REPLACE PACKAGE orapush",
        "PROCEDURE publish(p_channel IN VARCHAR2, p_payload IN CLOB, p_user IN VARCHAR2 DEFAULT NULL)",
        "PROCEDURE publish_aq(",
        "FUNCTION try_lock_drainer",
        "GRANT SELECT, DELETE ON orapush_outbox TO &&app_user",
        "privilege    => 'DEQUEUE'",
    ] {
        assert!(install.contains(needle), "install.sql lacks {needle:?}");
    }
    assert!(!install.to_uppercase().contains("FETCH FIRST"));
    // Every PL/SQL block and CREATE ... PACKAGE ends with a "/" line.
    let blocks = install.matches("\nEND;\n/").count() + install.matches("\nEND orapush;\n/").count();
    assert_eq!(blocks, install.matches("\nEND;").count() + install.matches("\nEND orapush;").count());
    let grants = read("sql/oracle/grants.sql");
    assert!(grants.contains("GRANT EXECUTE ON SYS.DBMS_LOCK"));
    assert!(read("sql/oracle/uninstall.sql").contains("DROP_QUEUE_TABLE"));
}

/// tests/compose/e2e.sh is valid bash.
#[test]
fn e2e_script_parses() {
    let out = Command::new("bash").arg("-n").arg(root().join("tests/compose/e2e.sh")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
