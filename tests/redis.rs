//! The Redis broker's publish and recovery against a real `redis-server`
//! (Debian's package; scripts/setup.sh installs it where missing). Each test
//! starts its own server on a Unix socket in a temporary directory, so it
//! can flush or kill it without touching any other Redis, and no port is
//! picked (a port found free can be taken before the server binds it).

mod common;

use std::time::Duration;

use common::RedisServer;
use futures_util::StreamExt;
use orapush::broker::redis::{decode_live, Keys, Numbered, Publication, RedisBroker};
use orapush::hub::Position;
use orapush::message::Message;

fn message(channel: &str, id: &str, payload: &str) -> Message {
    Message::from_payload(id, channel, None, payload, 1 << 16).unwrap()
}

async fn broker(server: &RedisServer, history: usize) -> RedisBroker {
    RedisBroker::connect(&server.url(), "test", history, Duration::from_secs(300)).await.unwrap()
}

fn publications<'a>(messages: &'a [Message], rows: &[Option<&str>]) -> Vec<Publication<'a>> {
    messages
        .iter()
        .zip(rows)
        .map(|(m, row)| Publication { message: m, row: row.map(str::to_owned), target_key: None })
        .collect()
}

/// A batch is numbered per channel, gap-free, under one epoch per channel, and its frames are the hub's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_numbered_per_channel() {
    let server = RedisServer::start();
    let mut broker = broker(&server, 100).await;
    let messages = [message("emp", "1", "a"), message("dept", "2", "b"), message("emp", "3", r#"{"n":3}"#)];
    let got = broker
        .publish(&publications(&messages, &[Some("sqlite:1"), Some("sqlite:2"), None]))
        .await
        .unwrap()
        .numbers;
    assert_eq!(got.iter().map(|n| n.offset).collect::<Vec<_>>(), vec![1, 1, 2]);
    assert!(got.iter().all(|n| n.fresh));
    assert_eq!(got[0].epoch, got[2].epoch);
    let history =
        broker.history("emp", Some(&Position { epoch: got[0].epoch.clone(), offset: 0 })).await.unwrap();
    assert!(history.recovered);
    let frames: Vec<serde_json::Value> =
        history.frames.iter().map(|(_, _, f)| serde_json::from_str(f).unwrap()).collect();
    assert_eq!(
        frames[1],
        serde_json::json!({"type":"message","channel":"emp","epoch":got[0].epoch,"offset":2,"id":"3","data":{"n":3}})
    );
}

/// A source row handed over again (after a crash) gets its first offset back and is not published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_row_keeps_its_offset() {
    let server = RedisServer::start();
    let mut broker = broker(&server, 100).await;
    let client = redis::Client::open(server.url()).unwrap();
    let (mut sink, mut live) = client.get_async_pubsub().await.unwrap().split();
    sink.subscribe(Keys::new("test").live("emp")).await.unwrap();

    let messages = [message("emp", "41", "a"), message("emp", "42", "b")];
    let first = broker
        .publish(&publications(&messages, &[Some("sqlite:41"), Some("sqlite:42")]))
        .await
        .unwrap()
        .numbers;
    let again = [message("emp", "42", "b"), message("emp", "43", "c")];
    let second =
        broker.publish(&publications(&again, &[Some("sqlite:42"), Some("sqlite:43")])).await.unwrap().numbers;
    assert_eq!(second[0], Numbered { fresh: false, ..first[1].clone() });
    assert_eq!((second[1].offset, second[1].fresh), (3, true));

    let mut offsets = Vec::new();
    while offsets.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), live.next()).await.unwrap().unwrap();
        let frames = decode_live("emp", msg.get_payload_bytes()).unwrap();
        offsets.extend(frames.iter().map(|f| f.offset));
    }
    assert_eq!(offsets, vec![1, 2, 3], "row 42 was published once");
}

/// Recovery from the stream: exactly what was missed; not when the epoch differs or the stream no longer reaches back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_comes_from_the_stream() {
    let server = RedisServer::start();
    let mut broker = broker(&server, 3).await;
    // One batch each: the stream keeps whole batches (entries), the ones
    // holding the last 3 offsets.
    let mut got = Vec::new();
    for i in 1..=5 {
        let m = [message("c", &i.to_string(), "x")];
        got.extend(broker.publish(&publications(&m, &[None])).await.unwrap().numbers);
    }
    let epoch = got[0].epoch.clone();
    let at = |offset| Position { epoch: epoch.clone(), offset };

    let h = broker.history("c", Some(&at(3))).await.unwrap();
    assert!(h.recovered);
    assert_eq!(h.frames.iter().map(|f| f.0).collect::<Vec<_>>(), vec![4, 5]);
    assert!(broker.history("c", Some(&at(5))).await.unwrap().recovered, "nothing missed");
    let trimmed = broker.history("c", Some(&at(1))).await.unwrap();
    assert!(!trimmed.recovered && trimmed.frames.is_empty(), "the stream keeps 3: 2 is gone");
    let other = broker.history("c", Some(&Position { epoch: "other".into(), offset: 4 })).await.unwrap();
    assert!(!other.recovered);
    let ahead = broker.history("c", Some(&at(9))).await.unwrap();
    assert!(!ahead.recovered);
    let none = broker.history("c", None).await.unwrap();
    assert_eq!((none.epoch.as_deref(), none.offset, none.recovered), (Some(epoch.as_str()), 5, false));
}

/// When Redis loses its data, numbering restarts under a new epoch, so no old position passes for a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_data_means_a_new_epoch() {
    let server = RedisServer::start();
    let mut broker = broker(&server, 10).await;
    let first = broker.publish(&publications(&[message("c", "1", "x")], &[None])).await.unwrap().numbers;
    let mut admin =
        redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut admin).await.unwrap();
    // The script cache survives FLUSHALL; SCRIPT FLUSH stands for a restart.
    let () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    let after = broker.publish(&publications(&[message("c", "2", "y")], &[None])).await.unwrap().numbers;
    assert_eq!(after[0].offset, 1);
    assert_ne!(after[0].epoch, first[0].epoch);
    let h = broker.history("c", Some(&Position { epoch: first[0].epoch.clone(), offset: 1 })).await.unwrap();
    assert!(!h.recovered);
}

/// A batch's rows are remembered until the outbox deleted them; a crashed
/// drainer's rows keep their numbers however the next batches cut them,
/// and are forgotten once those batches are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_remembered_until_forgotten() {
    let server = RedisServer::start();
    let mut broker = broker(&server, 100).await;
    let mut admin =
        redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let rows_key = Keys::new("test").rows("emp");

    // A drainer publishes 41-43 and dies before its commit: nothing is forgotten.
    let batch = |ids: &[&str]| ids.iter().map(|id| message("emp", id, "x")).collect::<Vec<_>>();
    let row_names = |ids: &[&str]| ids.iter().map(|id| format!("pg:{id}")).collect::<Vec<_>>();
    let a = batch(&["41", "42", "43"]);
    let a_rows = row_names(&["41", "42", "43"]);
    let first = broker
        .publish(&publications(&a, &a_rows.iter().map(|r| Some(r.as_str())).collect::<Vec<_>>()))
        .await
        .unwrap();
    assert_eq!(first.numbers.iter().map(|n| n.offset).collect::<Vec<_>>(), vec![1, 2, 3]);

    // The next drainer's batch: a row that committed late (40) and 42.
    let b = batch(&["40", "42"]);
    let b_rows = row_names(&["40", "42"]);
    let second = broker
        .publish(&publications(&b, &b_rows.iter().map(|r| Some(r.as_str())).collect::<Vec<_>>()))
        .await
        .unwrap();
    assert_eq!((second.numbers[0].offset, second.numbers[0].fresh), (4, true));
    assert_eq!(second.numbers[1], Numbered { fresh: false, ..first.numbers[1].clone() });
    broker.forget(&second.records).await.unwrap();

    // 41 and 43 come later still: their first numbers, not new ones.
    let c = batch(&["41", "43"]);
    let c_rows = row_names(&["41", "43"]);
    let third = broker
        .publish(&publications(&c, &c_rows.iter().map(|r| Some(r.as_str())).collect::<Vec<_>>()))
        .await
        .unwrap();
    assert_eq!(
        third.numbers,
        vec![
            Numbered { fresh: false, ..first.numbers[0].clone() },
            Numbered { fresh: false, ..first.numbers[2].clone() },
        ]
    );
    broker.forget(&third.records).await.unwrap();
    let left: u64 = redis::cmd("HLEN").arg(&rows_key).query_async(&mut admin).await.unwrap();
    assert_eq!(left, 0, "every row is committed: nothing is remembered");

    // A committed batch is forgotten at once: the hash never grows.
    for round in 0..3 {
        let ids: Vec<String> = (0..50).map(|i| format!("{}", 100 + round * 50 + i)).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let m = batch(&ids);
        let r = row_names(&ids);
        let published = broker
            .publish(&publications(&m, &r.iter().map(|r| Some(r.as_str())).collect::<Vec<_>>()))
            .await
            .unwrap();
        assert!(published.numbers.iter().all(|n| n.fresh));
        broker.forget(&published.records).await.unwrap();
        let left: u64 = redis::cmd("HLEN").arg(&rows_key).query_async(&mut admin).await.unwrap();
        assert_eq!(left, 0);
    }
}
