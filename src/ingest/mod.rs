//! Ingest: from PostgreSQL to one ordered stream of decoded changes.
//!
//! The [`listener`] holds the one LISTEN session; [`change`] decodes a trigger's payload
//! once, with the per-table column cache; [`watermark`] markers prove which changes came
//! through; the [`dispatch`]er orders, de-duplicates and, after a lost session, catches up
//! from the change log before any live change that follows.
//!
//! May use: `db`, `config`, `metrics`, `protocol`, `shutdown`. Nothing here knows about
//! sockets or subscriptions: the stream is handed to `route` through a channel.

pub mod change;
pub mod dispatch;
pub mod listener;
pub mod watermark;

use change::Change;

/// What ingest hands to routing, in order: every change exactly once.
#[derive(Debug)]
pub enum Delivery {
    /// A committed row change.
    Change(Change),
    /// Changes may have been lost (the change log was pruned past what the relay had read,
    /// or it could not be read after an outage): subscribers should refetch.
    Gap,
}

/// Sent to channels after a [`Delivery::Gap`].
pub const GAP_MESSAGE: &str = "The relay lost its database connection for a moment and could \
                               not replay every change made meanwhile: some may be missing. \
                               Refetch to be sure.";
