//! The broker: numbering (a channel's epoch and offsets), history, and
//! delivery between orapush nodes. The hub keeps the local fan-out
//! (sockets, per-connection queues, the overflow policy); a broker decides
//! what number a message gets and where its history lives.
//!
//! Today the hub numbers and keeps history itself, in memory (the
//! `memory` broker, the default). [`redis`] is the shared one for several
//! nodes, following Centrifugo's Redis broker: one Lua script per message
//! keeps the channel's epoch and offset in a hash, appends the frame to a
//! capped stream and PUBLISHes it; a source row handed over again after a
//! crash gets its first offset back instead of a second one. It is not yet
//! wired into `serve` (issue #10 is in progress): its publish and recovery
//! are tested against a real `redis-server` in `tests/redis.rs`.

pub mod redis;
