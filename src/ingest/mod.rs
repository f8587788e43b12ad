//! Ingest: from PostgreSQL to one ordered stream of decoded changes.
//!
//! The triggers write every change to `pgrelay.change_log`; the [`tail`] reader reads it by
//! snapshot, exactly once and in commit-consistent order, woken by the [`listener`]'s
//! doorbells while writes are quiet and by a timer under write load. [`change`] turns a
//! log row into a `Change` once, with the per-table column cache. With `PGRELAY_READ_URL`, the
//! reader tails the log on a hot standby ([`standby`]), which also measures replication lag.
//!
//! May use: `db`, `config`, `metrics`, `protocol`, `shutdown`. Nothing here knows about
//! sockets or subscriptions: the stream is handed to `route` through a channel.

pub mod change;
pub mod listener;
pub mod standby;
pub mod tail;

use change::Change;

/// What ingest hands to routing, in order: every change exactly once.
#[derive(Debug)]
pub enum Delivery {
    /// A committed row change.
    Change(Change),
    /// Changes may have been lost (the change log was pruned past what the relay had read):
    /// subscribers should refetch.
    Gap,
}

/// Sent to channels after a [`Delivery::Gap`].
pub const GAP_MESSAGE: &str = "The relay lost its database connection for a moment and could \
                               not replay every change made meanwhile: some may be missing. \
                               Refetch to be sure.";
