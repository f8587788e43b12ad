//! Route: from a decoded change to frames on the right sockets' queues.
//!
//! The [`router`] is the topic registry: `postgres_changes` subscriptions indexed by table,
//! presence members ([`presence`]) and broadcast fan-out. [`filter`] parses and evaluates
//! `column=op.value` filters by column type; [`policy`] holds read policies and private
//! channel rules, evaluated in memory; [`live`] re-runs live aggregate queries after a change
//! and pushes their results as broadcasts.
//!
//! May use: `ingest` (the `Change` type and the stream of changes), `db`, and the small
//! cross-cutting modules. Never `realtime` or `http`: sockets register here, not the reverse.

pub mod deliver;
pub mod filter;
pub mod live;
pub mod policy;
pub mod presence;
pub mod router;
