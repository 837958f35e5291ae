//! # orapush
//!
//! Carries database events to browsers over WebSockets. The database never
//! calls out: a DBA inserts a row into an outbox table, orapush drains it and
//! pushes it to the browsers subscribed to that channel, at least once,
//! ordered per channel, with recovery of missed messages after a reconnect.
//!
//! ## Data flow
//!
//! ```text
//! source thread ──Batch (bounded, 1)──▶ dispatcher ──▶ hub ──Outgoing (bounded per connection)──▶ session ──▶ browser
//!  claim rows                             publish        offset, history,        write JSON frame
//!  … delete + commit after the ack ◀──────── ack ◀────── frame serialised once
//!                                                           │
//!                                                           └─ idle connection ──▶ direct writer ──▶ browser
//!                                                              (socket lent by its session; one sendmsg)
//! ```
//!
//! ## Layout
//!
//! | module | concern |
//! |---|---|
//! | [`auth`] | token verification (JWT) and channel permissions |
//! | [`broker`] | numbering, history and delivery shared by several nodes (`broker.kind = "redis"`) |
//! | [`config`] | the typed settings tree; defaults → TOML → `ORAPUSH__*` env → flags; `validate()` |
//! | [`message`] | the row → message rule (seed JSON rule), channel names and patterns |
//! | [`source`] | the outbox contract, the shared drain loop ([`source::drain`]), one file per database |
//! | [`hub`] | channel → subscribers, offsets under an epoch, history, overflow policy |
//! | [`queue`] | a connection's bounded frame queue, empty of memory while idle; lends an idle session's socket |
//! | [`direct`] | the hub's writer: frames straight to idle connections' sockets, without waking their tasks |
//! | [`wire`] | a server frame encoded once (header and payload) and shared by every connection |
//! | [`ws`] | upgrade and Origin check, the session loop, the protocol frames and close codes |
//! | [`http`] | routes: health, readiness, metrics, publish, static client and demo page |
//! | [`listener`] | the accept loop: TLS, handshake timeout, peer address, graceful stop |
//! | [`metrics`] | Prometheus counters and gauges |
//! | [`server`] | [`run`]: wires the pieces, owns the one shutdown path |
//! | [`state`] | the cheap-clone handle the handlers share |
//! | [`subscribe`] | `orapush subscribe`: a command-line WebSocket client |

pub mod auth;
pub mod broker;
pub mod config;
pub mod direct;
pub mod http;
pub mod hub;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod source;
pub mod state;
pub mod subscribe;
pub mod wire;
pub mod ws;

pub use server::run;
