//! Realtime: one client's WebSocket and its channels.
//!
//! [`ws`] answers the upgrade with the relay's own small buffers, over a connection whose
//! client messages must complete in time ([`deadline`]); [`socket`] is the per-client
//! task (read, act, write queued frames in batches, heartbeats, cut-off), a folder with its
//! loop in `socket/mod.rs` and a file per kind of push (`join`, `presence`, `broadcast`) and
//! for writing (`write`); [`channel`] turns a `phx_join` into subscriptions; [`holds`] runs
//! press-and-hold sessions for clients that track on the hold channel.
//!
//! May use: `route`, `ingest`, `db` and the small cross-cutting modules. Never `http`.

pub mod channel;
pub mod deadline;
pub mod holds;
pub mod socket;
pub mod ws;
