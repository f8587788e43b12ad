//! pgrelay: a PostgreSQL LISTEN/NOTIFY change relay speaking the Supabase Realtime protocol.
//!
//! # Layout
//!
//! The folders follow one change on its way from PostgreSQL to a client. Dependencies point
//! one way: a folder may use the ones listed before it, never one after it.
//!
//! - [`config`], [`shutdown`], [`metrics`], [`auth`], [`protocol`]: small and used
//!   everywhere: settings parsed once, the shutdown signal and task tracking, counters, JWT
//!   claims, and the Phoenix wire format that frames are encoded in and decoded from.
//! - [`db`]: what the relay asks of PostgreSQL besides LISTEN: the pool, migrations, trigger
//!   install, catalog and change-log reads; the private PostgreSQL of a zero-configuration
//!   start; the cleanup loop that ends stale holds and prunes the change log.
//! - [`ingest`]: from PostgreSQL to an ordered stream of decoded [`ingest::change::Change`]s:
//!   the change-log reader (every change, exactly once, by snapshot), the LISTEN session whose
//!   notifications only say "read now", and decoding with the per-table column cache.
//! - [`route`]: from a `Change` to frames on socket queues: the topic registry (subscriptions,
//!   presence members, broadcast fan-out), filters, read policies and live aggregate topics.
//! - [`cluster`]: several relays as one through Redis (optional): broadcasts and presence
//!   carried between relays, each relay's presences kept in expiring entries.
//! - [`realtime`]: one client's WebSocket: the upgrade, the socket loop, channel joins, and
//!   relay-run press-and-hold sessions.
//! - [`http`]: the server that ties it together and everything that is not a socket: the
//!   app's JSON API, server-sent events, `/metrics`, `/ready`, the static pages.
//!
//! `main.rs` only parses the command line, sets up logging and calls [`run`].

pub mod auth;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod shutdown;

pub mod db;
pub mod ingest;
pub mod route;

pub mod cluster;

pub mod realtime;

pub mod http;

pub use config::Config;
pub use http::server::run;
