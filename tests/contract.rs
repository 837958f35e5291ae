//! The outbox contract, one suite over the `OutboxStore` interface, run
//! against every store: SQLite (a temp file), PostgreSQL (a fresh schema on
//! the local server, 127.0.0.1:5432, database `test`) and the Oracle outbox.
//!
//! The Oracle tests need a database with sql/oracle/grants.sql and
//! install.sql applied, and Instant Client, which this project's machines
//! cannot have. They run whenever ORAPUSH_TEST_ORACLE gives a connect string
//! (build.rs turns it into the `oracle_tests` cfg) and show as ignored
//! otherwise. tests/compose/e2e.sh runs them against the compose database:
//!   ORAPUSH_TEST_ORACLE=//host:1521/FREEPDB1 \
//!   ORAPUSH_TEST_ORACLE_OWNER_PASSWORD=... ORAPUSH_TEST_ORACLE_APP_PASSWORD=... \
//!   cargo test --test contract -- --test-threads=1 oracle

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use orapush::config::{OracleSettings, PostgresSettings, Secret, SqliteSettings};
use orapush::message::Message;
use orapush::metrics::Metrics;
use orapush::source::drain::{drain_pass, DrainConfig, Handoff, PassOutcome};
use orapush::source::oracle::aq::OracleAq;
use orapush::source::oracle::outbox::OracleOutbox;
use orapush::source::oracle::SessionSource;
use orapush::source::postgres::PgOutbox;
use orapush::source::sqlite::SqliteOutbox;
use orapush::source::{DeadLetter, ErrorClass, OutboxStore, Publisher, SourceError};

/// A database holding one outbox, as the tests see it.
pub trait Backend: Sized {
    type Store: OutboxStore + Publisher;
    fn new() -> Self;
    /// A store connected to drain (takes the single-drainer lock).
    fn drainer(&self) -> Result<Self::Store, SourceError>;
    /// Inserts `(channel, payload, target_user)` rows in one transaction.
    fn insert(&self, rows: &[(&str, &str, Option<&str>)]) -> Vec<i64>;
    fn count(&self) -> i64;
    /// `(id, payload, reason)` of every dead letter, by id.
    fn dead_letters(&self) -> Vec<(i64, String, String)>;
}

struct Sqlite {
    _dir: tempfile::TempDir,
    settings: SqliteSettings,
}

impl Sqlite {
    fn conn(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.settings.path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }
}

impl Backend for Sqlite {
    type Store = SqliteOutbox;
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let settings = SqliteSettings { path: dir.path().join("o.db"), busy_timeout_ms: 5000 };
        SqliteOutbox::open(&settings).unwrap();
        Self { _dir: dir, settings }
    }
    fn drainer(&self) -> Result<SqliteOutbox, SourceError> {
        SqliteOutbox::open_for_draining(&self.settings)
    }
    fn insert(&self, rows: &[(&str, &str, Option<&str>)]) -> Vec<i64> {
        let mut c = self.conn();
        let tx = c.transaction().unwrap();
        let ids = rows
            .iter()
            .map(|(ch, p, u)| {
                tx.execute(
                    "INSERT INTO orapush_outbox(channel, payload, target_user) VALUES (?1, ?2, ?3)",
                    rusqlite::params![ch, p, u],
                )
                .unwrap();
                tx.last_insert_rowid()
            })
            .collect();
        tx.commit().unwrap();
        ids
    }
    fn count(&self) -> i64 {
        self.conn().query_row("SELECT count(*) FROM orapush_outbox", [], |r| r.get(0)).unwrap()
    }
    fn dead_letters(&self) -> Vec<(i64, String, String)> {
        let c = self.conn();
        let mut stmt = c.prepare("SELECT id, payload, reason FROM orapush_dead_letter ORDER BY id").unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }
}

pub struct Postgres {
    pub settings: PostgresSettings,
}

/// The test database; every test gets its own schema in it.
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

impl Postgres {
    pub fn client(&self) -> postgres::Client {
        let mut c = postgres::Client::connect(PG_URL, postgres::NoTls)
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/setup.sh starts it)");
        c.batch_execute(&format!("SET search_path TO \"{}\"", self.settings.schema)).unwrap();
        c
    }
}

impl Backend for Postgres {
    type Store = PgOutbox;
    fn new() -> Self {
        let tag: u64 = rand::random();
        let settings = PostgresSettings {
            url: Secret::new(PG_URL),
            schema: format!("orapush_c_{tag:016x}"),
            create_schema: true,
            notify_channel: format!("orapush_c_{tag:016x}"),
            connect_timeout_ms: 5000,
            application_name: format!("orapush_c_{tag:016x}"),
        };
        // Creates the schema, tables and trigger (and releases the lock).
        drop(PgOutbox::connect(&settings).unwrap());
        Self { settings }
    }
    fn drainer(&self) -> Result<PgOutbox, SourceError> {
        PgOutbox::connect(&self.settings)
    }
    fn insert(&self, rows: &[(&str, &str, Option<&str>)]) -> Vec<i64> {
        let mut c = self.client();
        let mut tx = c.transaction().unwrap();
        let ids = rows
            .iter()
            .map(|(ch, p, u)| {
                tx.query_one(
                    "INSERT INTO orapush_outbox(channel, payload, target_user) VALUES ($1, $2, $3) RETURNING id",
                    &[ch, p, u],
                )
                .unwrap()
                .get(0)
            })
            .collect();
        tx.commit().unwrap();
        ids
    }
    fn count(&self) -> i64 {
        self.client().query_one("SELECT count(*) FROM orapush_outbox", &[]).unwrap().get(0)
    }
    fn dead_letters(&self) -> Vec<(i64, String, String)> {
        self.client()
            .query("SELECT id, payload, reason FROM orapush_dead_letter ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(PG_URL, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.settings.schema));
        }
    }
}

/// The Oracle outbox of tests/compose (ORAPUSH owns it, ORAPUSH_APP drains).
pub struct Oracle {
    settings: OracleSettings,
    owner: oracle::Connection,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

impl Oracle {
    fn settings() -> OracleSettings {
        let connect_string = std::env::var("ORAPUSH_TEST_ORACLE")
            .expect("ORAPUSH_TEST_ORACLE names the test database (see this file's doc)");
        OracleSettings {
            user: "ORAPUSH_APP".into(),
            password: Secret::new(env_or("ORAPUSH_TEST_ORACLE_APP_PASSWORD", "orapush_app")),
            connect_string,
            ..OracleSettings::default()
        }
    }

    fn owner(settings: &OracleSettings) -> oracle::Connection {
        let password = env_or("ORAPUSH_TEST_ORACLE_OWNER_PASSWORD", "orapush");
        oracle::Connection::connect("ORAPUSH", password, &settings.connect_string).unwrap()
    }
}

impl Backend for Oracle {
    type Store = OracleOutbox;
    fn new() -> Self {
        let settings = Self::settings();
        let owner = Self::owner(&settings);
        owner.execute("DELETE FROM orapush_outbox", &[]).unwrap();
        owner.execute("DELETE FROM orapush_dead_letter", &[]).unwrap();
        owner.commit().unwrap();
        Self { settings, owner }
    }
    fn drainer(&self) -> Result<OracleOutbox, SourceError> {
        OracleOutbox::connect(&mut SessionSource::new(&self.settings, "contract test"))
    }
    fn insert(&self, rows: &[(&str, &str, Option<&str>)]) -> Vec<i64> {
        let sql = "INSERT INTO orapush_outbox (channel, payload, target_user) VALUES (:1, :2, :3) RETURNING id INTO :4";
        let ids = rows
            .iter()
            .map(|(c, p, u)| {
                let stmt = self.owner.execute(sql, &[c, p, u, &None::<i64>]).unwrap();
                stmt.returned_values::<_, i64>(4).unwrap()[0]
            })
            .collect();
        self.owner.commit().unwrap();
        ids
    }
    fn count(&self) -> i64 {
        self.owner.query_row_as::<i64>("SELECT COUNT(*) FROM orapush_outbox", &[]).unwrap()
    }
    fn dead_letters(&self) -> Vec<(i64, String, String)> {
        self.owner
            .query_as::<(i64, String, String)>(
                "SELECT id, payload, reason FROM orapush_dead_letter ORDER BY id",
                &[],
            )
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }
}

fn rows(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (["a", "b"][i % 2].to_string(), format!("p{i}"))).collect()
}

fn insert_rows<B: Backend>(b: &B, rows: &[(String, String)]) -> Vec<i64> {
    let borrowed: Vec<(&str, &str, Option<&str>)> =
        rows.iter().map(|(c, p)| (c.as_str(), p.as_str(), None)).collect();
    b.insert(&borrowed)
}

/// A hub stand-in: acknowledges every batch and reports its messages.
fn fake_hub() -> (Handoff, std_mpsc::Receiver<Vec<Message>>) {
    let (handoff, mut batches) = Handoff::channel();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        while let Some(batch) = batches.blocking_recv() {
            let _ = tx.send(batch.messages.clone());
            let _ = batch.ack.send(Ok(()));
        }
    });
    (handoff, rx)
}

fn drain_config(batch_size: usize) -> DrainConfig {
    DrainConfig {
        batch_size,
        max_message_bytes: 1024,
        poll_interval: Duration::from_millis(10),
        max_backoff: Duration::from_secs(1),
        standby_retry: Duration::from_millis(100),
    }
}

/// Claim returns rows in id order, at most `limit` of them, with their columns.
fn claim_in_id_order<B: Backend>() {
    let b = B::new();
    let ids = insert_rows(&b, &rows(5));
    b.insert(&[("c", "for-alice", Some("alice"))]);
    let mut store = b.drainer().unwrap();
    let claimed = store.claim(3).unwrap();
    assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..3]);
    assert_eq!((claimed[0].channel.as_str(), claimed[0].payload.as_str()), ("a", "p0"));
    assert!(claimed[0].age_seconds >= 0.0 && claimed[0].age_seconds < 60.0);
    store.abort();
    let all = store.claim(10).unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[5].target_user.as_deref(), Some("alice"));
    store.abort();
}

/// Complete deletes exactly the handed-over rows, nothing else.
fn complete_deletes_exactly_what_was_handed_over<B: Backend>() {
    let b = B::new();
    insert_rows(&b, &rows(4));
    let mut store = b.drainer().unwrap();
    let claimed = store.claim(10).unwrap();
    store.complete(&[claimed[0].id, claimed[2].id], &[]).unwrap();
    assert_eq!(b.count(), 2);
    let left: Vec<i64> = store.claim(10).unwrap().iter().map(|r| r.id).collect();
    assert_eq!(left, vec![claimed[1].id, claimed[3].id]);
    store.abort();
}

/// Giving a claim up deletes nothing.
fn abort_keeps_every_row<B: Backend>() {
    let b = B::new();
    insert_rows(&b, &rows(3));
    let mut store = b.drainer().unwrap();
    assert_eq!(store.claim(10).unwrap().len(), 3);
    store.abort();
    assert_eq!(b.count(), 3);
    drop(store);
    assert_eq!(b.count(), 3);
}

/// A dead letter keeps its payload and reason and leaves the outbox.
fn dead_letters_move_with_reason<B: Backend>() {
    let b = B::new();
    let ids = insert_rows(&b, &rows(2));
    let mut store = b.drainer().unwrap();
    let claimed = store.claim(10).unwrap();
    let dead = DeadLetter { row: claimed[0].clone(), reason: "too big".into() };
    store.complete(&[claimed[1].id], &[dead]).unwrap();
    assert_eq!(b.count(), 0);
    assert_eq!(b.dead_letters(), vec![(ids[0], "p0".to_string(), "too big".to_string())]);
}

/// A full pass: messages handed over in id order, poison rows dead-lettered, the outbox emptied.
fn drain_pass_hands_over_in_order<B: Backend>() {
    let b = B::new();
    let big = "x".repeat(2000);
    let ids = b.insert(&[
        ("emp", "one", None),
        ("bad channel", "x", None),
        ("emp", big.as_str(), None),
        ("emp", "{\"n\":2}", None),
    ]);
    let mut store = b.drainer().unwrap();
    let (handoff, handed) = fake_hub();
    let metrics = Metrics::new();
    let outcome = drain_pass(&mut store, &handoff, &drain_config(10), &metrics).unwrap();
    assert_eq!(outcome, PassOutcome::Drained { delivered: 2, dead: 2, full: false });
    let messages = handed.recv_timeout(Duration::from_secs(5)).unwrap();
    let got: Vec<(String, String)> =
        messages.iter().map(|m| (m.id.clone(), m.data.get().to_string())).collect();
    assert_eq!(
        got,
        vec![
            (ids[0].to_string(), r#"{"message":"one"}"#.to_string()),
            (ids[3].to_string(), r#"{"n":2}"#.to_string())
        ]
    );
    assert_eq!(b.count(), 0);
    let dead: Vec<(i64, String)> = b.dead_letters().into_iter().map(|(id, _, reason)| (id, reason)).collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].0, ids[1]);
    assert!(dead[0].1.contains("invalid channel"), "{dead:?}");
    assert_eq!(dead[1].0, ids[2]);
    assert!(dead[1].1.contains("over server.max_message_bytes"), "{dead:?}");
    assert_eq!(drain_pass(&mut store, &handoff, &drain_config(10), &metrics).unwrap(), PassOutcome::Empty);
}

/// A pass that fills its batch says so (the drainer then skips the wait).
fn full_batches_are_reported<B: Backend>() {
    let b = B::new();
    insert_rows(&b, &rows(5));
    let mut store = b.drainer().unwrap();
    let (handoff, _handed) = fake_hub();
    let metrics = Metrics::new();
    let cfg = drain_config(2);
    let outcomes: Vec<PassOutcome> =
        (0..4).map(|_| drain_pass(&mut store, &handoff, &cfg, &metrics).unwrap()).collect();
    assert_eq!(
        outcomes,
        vec![
            PassOutcome::Drained { delivered: 2, dead: 0, full: true },
            PassOutcome::Drained { delivered: 2, dead: 0, full: true },
            PassOutcome::Drained { delivered: 1, dead: 0, full: false },
            PassOutcome::Empty,
        ]
    );
}

/// A second drainer stands by while the first holds the outbox, and takes over once it is gone.
fn one_drainer_at_a_time<B: Backend>() {
    let b = B::new();
    let first = b.drainer().unwrap();
    let second = b.drainer().err().expect("a second drainer must stand by");
    assert_eq!(second.class, ErrorClass::Standby, "{second}");
    drop(first);
    assert!(b.drainer().is_ok());
}

/// Publishing through the store writes a row that the next claim returns.
fn publish_writes_a_claimable_row<B: Backend>() {
    let b = B::new();
    let mut store = b.drainer().unwrap();
    let id = store.publish("emp", "{\"message\":\"REFRESH\"}", Some("scott")).unwrap();
    let claimed = store.claim(10).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].id.to_string(), claimed[0].target_user.as_deref()), (id, Some("scott")));
    store.abort();
    assert!(store.publish("no spaces", "x", None).is_err());
}

macro_rules! contract_suite {
    ($module:ident, $backend:ty) => {
        contract_suite!($module, $backend, );
    };
    ($module:ident, $backend:ty, $(#[$extra:meta])*) => {
        #[allow(clippy::duplicated_attributes)]
        mod $module {
            use super::*;
            /// Claim order and limit.
            #[test]
            $(#[$extra])*
            fn claim_order() {
                claim_in_id_order::<$backend>();
            }
            /// Only handed-over rows are deleted.
            #[test]
            $(#[$extra])*
            fn complete_exact() {
                complete_deletes_exactly_what_was_handed_over::<$backend>();
            }
            /// Abort deletes nothing.
            #[test]
            $(#[$extra])*
            fn abort_keeps_rows() {
                abort_keeps_every_row::<$backend>();
            }
            /// Dead letters keep payload and reason.
            #[test]
            $(#[$extra])*
            fn dead_letters() {
                dead_letters_move_with_reason::<$backend>();
            }
            /// A whole pass, poison rows included.
            #[test]
            $(#[$extra])*
            fn drain_pass_order() {
                drain_pass_hands_over_in_order::<$backend>();
            }
            /// Full batches are reported.
            #[test]
            $(#[$extra])*
            fn full_batches() {
                full_batches_are_reported::<$backend>();
            }
            /// One drainer at a time.
            #[test]
            $(#[$extra])*
            fn single_drainer() {
                one_drainer_at_a_time::<$backend>();
            }
            /// Publishing writes a claimable row.
            #[test]
            $(#[$extra])*
            fn publish() {
                publish_writes_a_claimable_row::<$backend>();
            }
        }
    };
}

contract_suite!(sqlite, Sqlite);
contract_suite!(postgresql, Postgres);
contract_suite!(oracle_outbox, Oracle, #[cfg_attr(not(oracle_tests), ignore = "needs ORAPUSH_TEST_ORACLE (tests/compose/e2e.sh sets it)")]);

/// Oracle: what the Oracle sources promise beyond the table contract. They
/// use the compose database's schema, queue and lock names, so the compose
/// drainers must be stopped first (tests/compose/e2e.sh does).
mod oracle_only {
    use super::*;
    use std::time::Instant;

    use orapush::source::Stopper;

    /// Enqueues envelopes as UTF-8 bytes (a `&str` would bind as NVARCHAR2
    /// and reach the queue as AL16UTF16).
    fn enqueue(owner: &oracle::Connection, envelopes: &[&str]) {
        for e in envelopes {
            owner
                .execute(
                    "DECLARE o DBMS_AQ.ENQUEUE_OPTIONS_T; p DBMS_AQ.MESSAGE_PROPERTIES_T; id RAW(16); \
                     BEGIN DBMS_AQ.ENQUEUE('ORAPUSH.ORAPUSH_Q', o, p, :1, id); END;",
                    &[&e.as_bytes().to_vec()],
                )
                .unwrap();
        }
        owner.commit().unwrap();
    }

    fn aq_drainer(settings: &OracleSettings) -> OracleAq {
        OracleAq::connect(&mut SessionSource::new(settings, "contract test"), Metrics::new()).unwrap()
    }

    fn drain_all(store: &mut dyn OutboxStore) -> Vec<Message> {
        let (handoff, handed) = fake_hub();
        let metrics = Metrics::new();
        let cfg = drain_config(100);
        while drain_pass(store, &handoff, &cfg, &metrics).unwrap() != PassOutcome::Empty {}
        handed.try_iter().flatten().collect()
    }

    fn count(owner: &oracle::Connection, sql: &str) -> i64 {
        owner.query_row_as(sql, &[]).unwrap()
    }

    /// Waits out alerts signalled before this point (earlier inserts).
    fn settle(store: &mut OracleOutbox) {
        let stop = Stopper::default();
        for _ in 0..10 {
            let started = Instant::now();
            store.wait_for_work(Duration::from_secs(1), &stop).unwrap();
            if started.elapsed() >= Duration::from_millis(900) {
                return;
            }
        }
        panic!("the outbox alert keeps firing");
    }

    /// Enqueued envelopes arrive in order with their AQ message ids, and leave the queue.
    #[test]
    #[cfg_attr(not(oracle_tests), ignore = "needs ORAPUSH_TEST_ORACLE (tests/compose/e2e.sh sets it)")]
    fn aq_dequeues_in_order_and_commits() {
        let settings = Oracle::settings();
        let owner = Oracle::owner(&settings);
        let mut store = aq_drainer(&settings);
        drain_all(&mut store);
        let mut publisher = OracleAq::connect_publisher(&settings).unwrap();
        let id = publisher.publish("emp", "{\"n\":0}", None).unwrap();
        enqueue(
            &owner,
            &[
                r#"{"channel":"emp","payload":"{\"n\":1}","user":null}"#,
                r#"{"channel":"emp","data":{"n":2}}"#,
            ],
        );
        let got = drain_all(&mut store);
        let data: Vec<&str> = got.iter().map(|m| m.data.get()).collect();
        assert_eq!(data, vec![r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);
        assert_eq!(got[0].id, id);
        assert!(drain_all(&mut store).is_empty());
    }

    /// A poison message amid good ones goes to ORAPUSH_AQ_DEAD_LETTER; the good ones are delivered, their retry count untouched.
    #[test]
    #[cfg_attr(not(oracle_tests), ignore = "needs ORAPUSH_TEST_ORACLE (tests/compose/e2e.sh sets it)")]
    fn aq_poison_costs_the_good_messages_nothing() {
        let settings = Oracle::settings();
        let owner = Oracle::owner(&settings);
        let mut store = aq_drainer(&settings);
        drain_all(&mut store);
        let exceptions = "SELECT COUNT(*) FROM aq$orapush_qt WHERE queue = 'AQ$_ORAPUSH_QT_E'";
        let exceptions_before = count(&owner, exceptions);
        let dead_before = count(&owner, "SELECT COUNT(*) FROM orapush_aq_dead_letter");
        enqueue(
            &owner,
            &[r#"{"channel":"emp","payload":"a"}"#, "not an envelope", r#"{"channel":"emp","payload":"b"}"#],
        );
        let rows = store.claim(100).unwrap();
        assert_eq!(rows.len(), 3);
        let (mut handed, mut dead) = (Vec::new(), Vec::new());
        for row in &rows {
            match Message::from_row(row, 1024) {
                Ok(m) => {
                    // Dequeued (not yet committed) and never rolled back.
                    let retries: i64 = owner
                        .query_row_as(
                            "SELECT retry_count FROM aq$orapush_qt WHERE msg_id = HEXTORAW(:1)",
                            &[&m.id],
                        )
                        .unwrap();
                    assert_eq!(retries, 0, "message {}", m.id);
                    handed.push(row.id);
                }
                Err(why) => dead.push(DeadLetter { row: row.clone(), reason: why.to_string() }),
            }
        }
        assert_eq!((handed.len(), dead.len()), (2, 1));
        let good: Vec<&str> = handed.iter().map(|&i| rows[i as usize].payload.as_str()).collect();
        assert_eq!(good, vec!["a", "b"]);
        store.complete(&handed, &dead).unwrap();
        assert!(drain_all(&mut store).is_empty(), "the batch was committed");
        assert_eq!(count(&owner, exceptions), exceptions_before);
        assert_eq!(count(&owner, "SELECT COUNT(*) FROM orapush_aq_dead_letter"), dead_before + 1);
        let kept: Vec<u8> = owner
            .query_row_as(
                "SELECT payload FROM orapush_aq_dead_letter WHERE reason LIKE '%envelope%' AND ROWNUM = 1",
                &[],
            )
            .unwrap();
        assert_eq!(kept, b"not an envelope");
    }

    /// A non-ASCII payload published through PUBLISH_AQ arrives unchanged.
    #[test]
    #[cfg_attr(not(oracle_tests), ignore = "needs ORAPUSH_TEST_ORACLE (tests/compose/e2e.sh sets it)")]
    fn aq_keeps_non_ascii_payloads() {
        let settings = Oracle::settings();
        let mut store = aq_drainer(&settings);
        drain_all(&mut store);
        let mut publisher = OracleAq::connect_publisher(&settings).unwrap();
        publisher.publish("emp", "Zürich café 5 € ✓", None).unwrap();
        let got = drain_all(&mut store);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data.get(), r#"{"message":"Zürich café 5 € ✓"}"#);
    }

    /// A second AQ drainer stands by.
    #[test]
    #[cfg_attr(not(oracle_tests), ignore = "needs ORAPUSH_TEST_ORACLE (tests/compose/e2e.sh sets it)")]
    fn aq_single_drainer() {
        let settings = Oracle::settings();
        let first = aq_drainer(&settings);
        let second = OracleAq::connect(&mut SessionSource::new(&settings, "contract test"), Metrics::new());
        assert_eq!(second.err().map(|e| e.class), Some(ErrorClass::Standby));
        drop(first);
    }

    /// A committed insert wakes a drainer waiting on a 30 s poll within a second.
    #[test]
    #[cfg_attr(not(oracle_tests), ignore = "needs ORAPUSH_TEST_ORACLE (tests/compose/e2e.sh sets it)")]
    fn outbox_wakes_on_commit() {
        let b = Oracle::new();
        let mut store = b.drainer().unwrap();
        drain_all(&mut store);
        settle(&mut store);
        let settings = Oracle::settings();
        let inserter = std::thread::spawn(move || {
            let owner = Oracle::owner(&settings);
            // Not a synchronisation: the wait below passes whether the
            // commit comes before it (the alert is kept) or during it.
            std::thread::sleep(Duration::from_millis(300));
            owner.execute("BEGIN orapush.publish('wake', 'up'); END;", &[]).unwrap();
            owner.commit().unwrap();
        });
        let started = Instant::now();
        store.wait_for_work(Duration::from_secs(30), &Stopper::default()).unwrap();
        let woke = started.elapsed();
        inserter.join().unwrap();
        assert!(woke < Duration::from_secs(2), "woke after {woke:?} of a 30 s poll");
        let got = drain_all(&mut store);
        assert_eq!(got.iter().map(|m| m.channel.as_str()).collect::<Vec<_>>(), vec!["wake"]);
    }

    /// A rolled-back insert neither wakes the drainer nor arrives.
    #[test]
    #[cfg_attr(not(oracle_tests), ignore = "needs ORAPUSH_TEST_ORACLE (tests/compose/e2e.sh sets it)")]
    fn rolled_back_insert_never_wakes() {
        let b = Oracle::new();
        let mut store = b.drainer().unwrap();
        drain_all(&mut store);
        settle(&mut store);
        let owner = Oracle::owner(&Oracle::settings());
        owner.execute("BEGIN orapush.publish('ghost', 'boo'); END;", &[]).unwrap();
        owner.rollback().unwrap();
        let started = Instant::now();
        store.wait_for_work(Duration::from_secs(3), &Stopper::default()).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(2900), "woke after {:?}", started.elapsed());
        assert!(drain_all(&mut store).is_empty());
        assert_eq!(b.count(), 0);
    }

    /// A standby waiting in DBMS_LOCK takes over within standby_retry_ms once the active session is killed.
    #[test]
    #[cfg_attr(not(oracle_tests), ignore = "needs ORAPUSH_TEST_ORACLE (tests/compose/e2e.sh sets it)")]
    fn standby_takes_over_when_the_active_session_is_killed() {
        let settings = Oracle::settings();
        let active = OracleOutbox::connect(&mut SessionSource::new(&settings, "contract active")).unwrap();
        let (took_over, took_over_at) = std_mpsc::channel();
        let standby_settings = settings.clone();
        let standby = std::thread::spawn(move || {
            let mut sessions = SessionSource::new(&standby_settings, "contract standby");
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                match OracleOutbox::connect(&mut sessions) {
                    Ok(store) => {
                        let _ = took_over.send(Instant::now());
                        return Some(store);
                    }
                    Err(e) => assert_eq!(e.class, ErrorClass::Standby, "{e}"),
                }
            }
            None
        });
        // The standby is waiting once its session shows up in v$session.
        let system_password = env_or("ORAPUSH_TEST_ORACLE_SYSTEM_PASSWORD", "orapush-sys");
        let system =
            oracle::Connection::connect("SYSTEM", system_password, &settings.connect_string).unwrap();
        let waiting =
            "SELECT COUNT(*) FROM v$session WHERE module = 'orapush' AND action = 'contract standby'";
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&system, waiting) == 0 {
            assert!(Instant::now() < deadline, "the standby never connected");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (sid, serial): (i64, i64) = system
            .query_row_as(
                "SELECT sid, serial# FROM v$session WHERE module = 'orapush' AND action = 'contract active'",
                &[],
            )
            .unwrap();
        // Taken over = the standby's session holds the drain lock (a UL lock
        // in exclusive mode); the wake-up session it opens next is not part
        // of the takeover.
        let holds = "SELECT COUNT(*) FROM v$lock l JOIN v$session s ON s.sid = l.sid \
                     WHERE l.type = 'UL' AND l.lmode = 6 AND s.action = 'contract standby'";
        assert_eq!(count(&system, holds), 0);
        let killed_at = Instant::now();
        system.execute(&format!("ALTER SYSTEM KILL SESSION '{sid},{serial}' IMMEDIATE"), &[]).unwrap();
        while count(&system, holds) == 0 {
            assert!(killed_at.elapsed() < Duration::from_secs(30), "the standby never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = killed_at.elapsed();
        took_over_at.recv_timeout(Duration::from_secs(30)).expect("the standby's connect returned");
        assert!(standby.join().unwrap().is_some());
        // standby_retry_ms defaults to 1000; the standby waits in the
        // database, so it is granted the lock as soon as Oracle frees it.
        assert!(took < Duration::from_millis(1000), "took over {took:?} after the kill");
        drop(active);
    }
}
