//! pgrelay: a PostgreSQL LISTEN/NOTIFY change relay speaking the Supabase Realtime protocol.
//!
//! # Layout (in data-flow order)
//!
//! - [`config`]: flags and environment, parsed once.
//! - [`db`]: pool, migrations, trigger install, catalog and change-log reads (all but LISTEN).
//! - [`listener`]: the one dedicated LISTEN session, probed and reconnected.
//! - [`change`]: the trigger payload decoded once into a [`change::Change`]; the column cache.
//! - [`filter`]: `column=op.value` filters, parsed and evaluated by column type.
//! - [`dispatch`]: the ordered stream of changes: live, de-duplicated, caught up after a gap.
//! - [`watermark`]: markers that prove which changes came through.
//! - [`auth`]: JWT verification and claims.
//! - [`policy`]: read policies (which rows and columns a role may receive) and private channel
//!   rules, evaluated in memory.
//! - [`aggregate`]: live aggregate topics, re-run on change and pushed when they differ.
//! - [`router`]: the subscription index; a change → frames on socket queues.
//! - [`holds`]: relay-run press-and-hold sessions (track on the hold channel).
//! - [`presence`]: presence state per topic and its diffs.
//! - [`protocol`]: the Phoenix wire format (vsn 1.0.0 and 2.0.0).
//! - [`channel`]: joins, bindings and their ids, leaves.
//! - [`ws`]: the WebSocket handshake, with the relay's own (small) tungstenite buffers.
//! - [`socket`]: one task per client: reads, replies, batched writes, timeouts.
//! - [`sse`]: server-sent events read from the change log, resumable by `Last-Event-ID`.
//! - [`api`]: the app's HTTP JSON API (polls, votes, statistics, holds, profiles).
//! - [`server`]: routes, admission, task tracking, shutdown.
//! - [`metrics`]: counters and histograms, rendered at `/metrics`.
//! - [`cleanup`]: ending stale hold sessions and pruning the change log.
//! - [`pginstance`]: the private PostgreSQL of a zero-configuration start.
//! - [`shutdown`]: the shutdown signal and completion tracking.

pub mod aggregate;
pub mod api;
pub mod auth;
pub mod change;
pub mod channel;
pub mod cleanup;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod filter;
pub mod holds;
pub mod listener;
pub mod metrics;
pub mod pginstance;
pub mod policy;
pub mod presence;
pub mod protocol;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod socket;
pub mod sse;
pub mod watermark;
pub mod ws;

pub use config::Config;
pub use server::run;
