//! The compose environment, checked where Docker cannot run: the file is
//! valid (`docker-compose config -q`, Debian's docker-compose, installed by
//! scripts/setup.sh), the database's init scripts are the sql/oracle files
//! themselves and stop on any error, the database turns Dead Connection
//! Detection on, the image picks Instant Client by architecture and fails
//! to build when it cannot load, the end-to-end script stops the compose
//! drainers before the contract suite, every script is valid shell, and
//! the `cluster` profile runs two Redis-broker nodes behind a WebSocket-aware
//! nginx.
//! tests/compose/e2e.sh and tests/compose/bench.sh run the real thing
//! wherever Docker is.

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
    for profile in [None, Some("aq"), Some("cluster")] {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(root()).args(["-f", "docker-compose.yml"]);
        if let Some(p) = profile {
            cmd.args(["--profile", p]);
        }
        let out = cmd.args(["config", "-q"]).output().expect("docker-compose (scripts/setup.sh installs it)");
        assert!(out.status.success(), "{profile:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `docker-compose config` of one profile: the file resolved (anchors merged,
/// paths absolute, keys sorted, two-space indentation).
fn resolved_config(profile: &str) -> String {
    let out = Command::new("docker-compose")
        .current_dir(root())
        .args(["-f", "docker-compose.yml", "--profile", profile, "config"])
        .output()
        .expect("docker-compose (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The lines under `key:` at `indent` spaces in resolved YAML (nested keys
/// deeper, list items at the key's own indentation), or None.
fn yaml_block<'a>(lines: &[&'a str], key: &str, indent: usize) -> Option<Vec<&'a str>> {
    let head = format!("{}{key}:", " ".repeat(indent));
    let at = lines.iter().position(|l| *l == head)?;
    let depth = |l: &str| l.len() - l.trim_start().len();
    Some(
        lines[at + 1..]
            .iter()
            .take_while(|l| depth(l) > indent || (depth(l) == indent && l.trim_start().starts_with("- ")))
            .copied()
            .collect(),
    )
}

/// One service's block in resolved YAML, or a panic naming it.
fn service<'a>(config: &'a str, name: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = config.lines().collect();
    let services = yaml_block(&lines, "services", 0).expect("no services");
    yaml_block(&services, name, 2).unwrap_or_else(|| panic!("no service {name}"))
}

/// A service's sub-block (`environment`, `command`, ...) as trimmed lines.
fn field(service: &[&str], key: &str) -> Vec<String> {
    yaml_block(service, key, 4).unwrap_or_default().iter().map(|l| l.trim().to_string()).collect()
}

/// A service's `environment`, as name → value.
fn environment(service: &[&str]) -> std::collections::BTreeMap<String, String> {
    field(service, "environment")
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap_or_else(|| panic!("{l:?}"));
            (k.to_string(), v.trim_matches(|c| c == '\'' || c == '"').to_string())
        })
        .collect()
}

/// nginx directives, comments dropped, each with the blocks it sits in
/// (`["upstream orapush"]`, `["server", "location /"]`) and its words.
fn nginx_directives(text: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut directives = Vec::new();
    let mut context: Vec<String> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    for line in text.lines() {
        // This config has no '#' inside a value.
        let line = line.split('#').next().unwrap();
        let mut word = String::new();
        for c in line.chars().chain([' ']) {
            if c.is_whitespace() || matches!(c, ';' | '{' | '}') {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            } else {
                word.push(c);
            }
            match c {
                ';' => directives.push((context.clone(), std::mem::take(&mut words))),
                '{' => context.push(std::mem::take(&mut words).join(" ")),
                '}' => {
                    assert!(words.is_empty(), "{words:?} lacks a ';'");
                    context.pop().expect("an unmatched '}'");
                }
                _ => {}
            }
        }
    }
    assert!(context.is_empty() && words.is_empty(), "unclosed {context:?} {words:?}");
    directives
}

/// nginx's time syntax (`90`, `90s`, `2m`, `1h`) in seconds.
fn nginx_seconds(value: &str) -> u64 {
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (n, unit) = value.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("{value:?}"));
    n * match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("{value:?}: unexpected unit"),
    }
}

/// The `cluster` profile: Redis with AOF, two orapush nodes exactly like the
/// single-node service but on the Redis broker (same URL), and nginx on 8090
/// proxying WebSockets to both.
#[test]
fn cluster_profile_has_the_promised_shape() {
    let compose = read("docker-compose.yml");
    assert!(
        compose.contains("docker compose --profile cluster up --build"),
        "the head comment says how to start it"
    );
    let config = resolved_config("cluster");
    for name in ["redis", "orapush-node1", "orapush-node2", "lb"] {
        assert_eq!(field(&service(&config, name), "profiles"), vec!["- cluster"], "{name}");
    }

    // Redis: persistence on, healthy once it answers.
    let redis = service(&config, "redis");
    assert!(redis.contains(&"    image: redis:7-alpine"), "{redis:#?}");
    let command: Vec<String> = field(&redis, "command")
        .iter()
        .map(|l| l.trim_start_matches("- ").trim_matches('"').to_string())
        .collect();
    assert_eq!(command.first().map(String::as_str), Some("redis-server"), "{command:?}");
    let arg = |name: &str| command.iter().position(|a| a == name).map(|i| command[i + 1].as_str());
    assert_eq!(arg("--appendonly"), Some("yes"), "{command:?}");
    assert_eq!(arg("--appendfsync"), Some("everysec"), "{command:?}");
    assert!(field(&redis, "healthcheck").iter().any(|l| l.contains("redis-cli ping")), "{redis:#?}");

    // The nodes: the single-node service's image, build and environment (the
    // compose oracle, oracle_outbox), plus the Redis broker, one URL for both.
    let single = service(&config, "orapush");
    let mut urls = Vec::new();
    for name in ["orapush-node1", "orapush-node2"] {
        let node = service(&config, name);
        assert!(node.contains(&"    image: orapush:local"), "{name}");
        assert_eq!(field(&node, "build"), field(&single, "build"), "{name} is built like orapush");
        let mut env = environment(&node);
        assert_eq!(env.remove("ORAPUSH__BROKER__KIND").as_deref(), Some("redis"), "{name}");
        let url = env.remove("ORAPUSH__REDIS__URL").unwrap_or_else(|| panic!("{name} has no Redis URL"));
        assert!(url.starts_with("redis://redis:6379/"), "{name}: {url}");
        urls.push(url);
        assert_eq!(env, environment(&single), "{name}: the rest is the orapush service's environment");
        assert_eq!(env["ORAPUSH__SOURCE__KIND"], "oracle_outbox");
        let depends = field(&node, "depends_on").join(" ");
        for dependency in ["oracle", "redis"] {
            assert!(
                depends.contains(&format!("{dependency}: condition: service_healthy")),
                "{name} waits for a healthy {dependency}: {depends}"
            );
        }
    }
    assert_eq!(urls[0], urls[1], "both nodes share one Redis database");

    // The load balancer: nginx on 8090 after both nodes are healthy, its
    // config from docker/nginx/ mounted read-only as the default server.
    let lb = service(&config, "lb");
    assert!(lb.contains(&"    image: nginx:1.27-alpine"), "{lb:#?}");
    assert!(field(&lb, "ports").join(" ").contains("published: 8090 target: 80"), "{lb:#?}");
    let depends = field(&lb, "depends_on").join(" ");
    for node in ["orapush-node1", "orapush-node2"] {
        assert!(depends.contains(&format!("{node}: condition: service_healthy")), "{depends}");
    }
    let volumes = field(&lb, "volumes");
    let mount = volumes
        .iter()
        .find_map(|v| v.strip_prefix("- ")?.strip_suffix(":/etc/nginx/conf.d/default.conf:ro"))
        .unwrap_or_else(|| panic!("no read-only nginx config: {volumes:?}"));
    let nginx_dir = root().join("docker/nginx");
    assert!(Path::new(mount).starts_with(&nginx_dir), "{mount} is not under docker/nginx/");
    let nginx = std::fs::read_to_string(mount).unwrap();
    let directives = nginx_directives(&nginx);
    let find = |name: &str| -> Vec<&(Vec<String>, Vec<String>)> {
        directives.iter().filter(|(_, words)| words[0] == name).collect()
    };

    // Both nodes in one upstream, re-resolved through Docker's DNS (a node
    // that comes back at a new address is found; nginx needs a resolver
    // for `resolve` and a zone for the peers).
    let servers = find("server");
    let upstream = &servers.first().expect("no upstream server").0;
    assert!(upstream.len() == 1 && upstream[0].starts_with("upstream "), "{upstream:?}");
    let targets: Vec<&str> = servers.iter().map(|(_, w)| w[1].as_str()).collect();
    assert_eq!(targets, ["orapush-node1:8080", "orapush-node2:8080"]);
    for (context, words) in &servers {
        assert_eq!(context, upstream, "{words:?}");
        assert!(words.contains(&"resolve".to_string()), "{words:?}");
    }
    assert!(find("zone").iter().any(|(c, _)| c == upstream), "the upstream has no zone");
    assert_eq!(find("resolver").first().map(|(_, w)| w[1].as_str()), Some("127.0.0.11"), "Docker's DNS");

    // The location proxies to it with the WebSocket upgrade.
    let one = |name: &str| {
        let found = find(name);
        assert_eq!(found.len(), 1, "one {name}: {found:?}");
        found[0].clone()
    };
    let (location, proxy_pass) = one("proxy_pass");
    assert_eq!(proxy_pass[1], format!("http://{}", upstream[0].trim_start_matches("upstream ")));
    for directive in ["proxy_http_version", "proxy_read_timeout"] {
        assert_eq!(one(directive).0, location, "{directive} is where proxy_pass is");
    }
    assert_eq!(one("proxy_http_version").1[1], "1.1");
    let header = |name: &str| {
        let found: Vec<_> = find("proxy_set_header").into_iter().filter(|(_, w)| w[1] == name).collect();
        assert_eq!(found.len(), 1, "one {name} header: {found:?}");
        assert_eq!(found[0].0, location, "{name} is set where proxy_pass is");
        found[0].1[2].clone()
    };
    assert_eq!(header("Upgrade"), "$http_upgrade");
    let connection = header("Connection");
    if connection.starts_with('$') {
        // A map from $http_upgrade: "upgrade" for a handshake.
        let map = format!("map $http_upgrade {connection}");
        assert!(
            directives.iter().any(|(c, w)| c == std::slice::from_ref(&map) && w == &["default", "upgrade"]),
            "{map} does not default to upgrade"
        );
    } else {
        assert_eq!(connection.trim_matches('"'), "upgrade");
    }
    // Longer than orapush's ping interval (server.ping_interval_ms, 25 s): a
    // quiet socket sees a ping before nginx gives up on it.
    let timeout = nginx_seconds(&one("proxy_read_timeout").1[1]);
    assert!(timeout > 25, "proxy_read_timeout {timeout}s");
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

/// The compose scripts are valid bash: the end-to-end test, the bench, and
/// the database's init and start scripts.
#[test]
fn compose_scripts_parse() {
    let mut scripts = vec![root().join("tests/compose/e2e.sh"), root().join("tests/compose/bench.sh")];
    for dir in ["docker/oracle-init", "docker/oracle-startdb"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            scripts.push(entry.unwrap().path());
        }
    }
    for script in &scripts {
        let out = Command::new("bash").arg("-n").arg(script).output().unwrap();
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
}

/// The script's lines that are not comments, trimmed.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

/// e2e.sh stops both compose drainers, and checks their drain locks are
/// free, before the contract suite runs: they share its schema, queue and
/// lock names, so while they run every drainer in the tests stands by and
/// the live drainers take the tests' rows.
#[test]
fn e2e_stops_the_drainers_before_the_contract_suite() {
    let script = read("tests/compose/e2e.sh");
    assert!(script.contains("set -euo pipefail"));
    let lines = code_lines(&script);
    let position = |what: &str, found: &dyn Fn(&str) -> bool| {
        let at: Vec<usize> = (0..lines.len()).filter(|&i| found(lines[i])).collect();
        assert_eq!(at.len(), 1, "one {what} in e2e.sh, found at lines {at:?}");
        at[0]
    };
    let stop = position("stop of both drainers", &|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.starts_with(&["compose", "stop"]) && words.contains(&"orapush") && words.contains(&"orapush-aq")
    });
    let outbox_lock = position("check of the outbox's drain lock", &|l| {
        l.starts_with("expect_free('orapush:ORAPUSH.ORAPUSH_OUTBOX')")
    });
    let queue_lock = position("check of the queue's drain lock", &|l| {
        l.starts_with("expect_free('orapush:ORAPUSH.ORAPUSH_Q')")
    });
    let run = position("docker run of the contract suite", &|l| l.starts_with("docker run"));
    assert!(stop < outbox_lock && stop < queue_lock, "the locks are checked after the drainers stop");
    assert!(outbox_lock < run && queue_lock < run, "the locks are checked before the contract suite");
    // Nothing brings a drainer back between the stop and the suite.
    for line in &lines[stop + 1..run] {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            !(words.first() == Some(&"compose") && ["start", "up", "restart"].contains(&words[1])),
            "{line:?} between the stop and the contract suite"
        );
    }
    // The suite's docker run: its image, and SYSTEM's password for ALTER SYSTEM KILL SESSION.
    let run_command: String = lines[run..].iter().take_while(|l| !l.starts_with("step ")).copied().collect();
    assert!(run_command.contains("orapush-contract-tests"), "{run_command}");
    for env in [
        "ORAPUSH_TEST_ORACLE=",
        "ORAPUSH_TEST_ORACLE_OWNER_PASSWORD=",
        "ORAPUSH_TEST_ORACLE_APP_PASSWORD=",
        "ORAPUSH_TEST_ORACLE_SYSTEM_PASSWORD=\"$ORACLE_PASSWORD\"",
    ] {
        assert!(run_command.contains(env), "the contract suite gets no {env}");
    }
    // Every background job is waited for, with a failure on a non-zero status.
    for line in lines.iter().filter(|l| l.starts_with("wait ")) {
        assert!(line.contains("|| fail"), "{line:?} ignores a failure");
    }
}

/// The init script stops at the first error with a non-zero status.
#[test]
fn init_script_stops_on_any_error() {
    let init = read("docker/oracle-init/01-orapush.sh");
    let sqlplus: Vec<&str> = code_lines(&init).into_iter().filter(|l| l.starts_with("sqlplus")).collect();
    assert_eq!(sqlplus.len(), 2, "{sqlplus:?}");
    for line in &sqlplus {
        // -L: a refused login exits instead of reading the script as credentials.
        assert!(line.starts_with("sqlplus -L "), "{line}");
    }
    assert_eq!(init.matches("WHENEVER SQLERROR EXIT FAILURE").count(), 2);
    assert_eq!(init.matches("WHENEVER OSERROR EXIT FAILURE").count(), 2);
    // SQL.SQLCODE is taken mod 256: ORA-01536 would exit 0.
    assert!(!code_lines(&init).iter().any(|l| l.contains("SQL.SQLCODE")));
    assert!(init.contains(
        "@/opt/orapush-sql/grants.sql \"${ORAPUSH_OWNER_PASSWORD}\" \"${ORAPUSH_APP_PASSWORD}\" USERS\n"
    ));
    assert!(init.contains("set -euo pipefail"));
}

/// Executable, because gvenzl/oracle-free sources a non-executable .sh into
/// its entrypoint's shell.
fn assert_executable(path: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root().join(path)).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, "{path} is not executable");
}

/// The database sets SQLNET.EXPIRE_TIME on every start, in the sqlnet.ora
/// behind the image's link, idempotently: the script run twice on a copy of
/// the image's file leaves one setting and keeps the link.
#[test]
fn database_turns_dead_connection_detection_on() {
    let compose = read("docker-compose.yml");
    assert!(compose.contains("- ./docker/oracle-startdb:/container-entrypoint-startdb.d:ro"));
    assert!(compose.contains("ORAPUSH_SQLNET_EXPIRE_TIME: ${ORAPUSH_SQLNET_EXPIRE_TIME:-1}"));
    let script = "docker/oracle-startdb/01-sqlnet-expire-time.sh";
    assert_executable(script);
    assert_executable("docker/oracle-init/01-orapush.sh");

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("network/admin")).unwrap();
    let real = dir.path().join("dbconfig-sqlnet.ora");
    // What the image writes (install.23.x.sh), plus an older setting.
    std::fs::write(
        &real,
        "NAMES.DIRECTORY_PATH = (EZCONNECT, TNSNAMES)\nDISABLE_OOB=ON\nBREAK_POLL_SKIP=1000\nsqlnet.expire_time = 10\n",
    )
    .unwrap();
    let link = home.join("network/admin/sqlnet.ora");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for minutes in [None, Some("1"), Some("3")] {
        let mut cmd = Command::new(root().join(script));
        cmd.env("ORACLE_BASE_HOME", &home).env_remove("ORAPUSH_SQLNET_EXPIRE_TIME");
        if let Some(m) = minutes {
            cmd.env("ORAPUSH_SQLNET_EXPIRE_TIME", m);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&real).unwrap();
        let settings: Vec<&str> =
            text.lines().filter(|l| l.to_uppercase().starts_with("SQLNET.EXPIRE_TIME")).collect();
        assert_eq!(settings, vec![format!("SQLNET.EXPIRE_TIME = {}", minutes.unwrap_or("1"))], "{text}");
        assert!(text.starts_with("NAMES.DIRECTORY_PATH = (EZCONNECT, TNSNAMES)\nDISABLE_OOB=ON\n"), "{text}");
        assert_eq!(text.matches("# orapush:").count(), 1, "{text}");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    }
    let out = Command::new(root().join(script))
        .env("ORACLE_BASE_HOME", &home)
        .env("ORAPUSH_SQLNET_EXPIRE_TIME", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a setting that is not a number of minutes is refused");
}

/// The image picks the Instant Client zip by the target architecture and
/// fails to build, rather than to start, when the library cannot load.
#[test]
fn image_picks_instant_client_by_architecture() {
    let dockerfile = read("Dockerfile");
    for needle in [
        "ARG TARGETARCH",
        "ARG INSTANT_CLIENT_URL",
        "amd64) zip=instantclient-basiclite-linuxx64.zip",
        "arm64) zip=instantclient-basiclite-linux-arm64.zip",
        "*) echo \"Oracle publishes no Instant Client",
        "libaio1",
    ] {
        assert!(dockerfile.contains(needle), "the Dockerfile lacks {needle:?}");
    }
    let stage = |name: &str| {
        let start = dockerfile.find(&format!(" AS {name}\n")).unwrap_or_else(|| panic!("no stage {name}"));
        let rest = &dockerfile[start..];
        rest[1..].find("\nFROM ").map_or(rest, |end| &rest[..end + 1])
    };
    let runtime = stage("runtime");
    let binary =
        runtime.find("COPY --from=build /src/target/release/orapush /usr/local/bin/orapush").unwrap();
    let check = runtime.find("RUN orapush check-client").expect("the runtime image checks Instant Client");
    assert!(binary < check);
    let tests = stage("contract-tests");
    for needle in [
        "ldconfig -p | grep -q 'libclntsh\\.so'",
        "ldd /opt/oracle/instantclient/libclntsh.so",
        "grep 'not found'",
        "check-client",
    ] {
        assert!(tests.contains(needle), "the contract-tests stage lacks {needle:?}");
    }
    // The compose bench runs in that image, already compiled.
    assert!(tests.contains("cargo bench --locked --bench bridge --no-run"));
}
