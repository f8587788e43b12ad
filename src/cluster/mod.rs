//! Cluster: several relays acting as one through Redis (`PGRELAY_REDIS_URL`).
//!
//! Without Redis nothing here runs and a relay is a single node, as before. With it, each
//! relay:
//! - publishes what its clients broadcast, and delivers what the others publish
//!   (Redis PUB/SUB), so a topic's subscribers on every relay receive it;
//! - keeps its own presences in a Redis hash that expires unless the relay refreshes it, and
//!   announces each presence diff; it mirrors the other relays' presences from those diffs
//!   and, every few seconds, from their hashes. A relay that dies stops refreshing, and its
//!   members leave everywhere once its entry expires.
//!
//! When Redis is unreachable every relay keeps serving its own clients as a single node: one
//! log line, `pgrelay_redis_up 0`, broadcasts that could not cross counted; presence
//! converges again within a few seconds of Redis coming back.
//!
//! [`wire`] is what goes to Redis and how it is read back; [`engine`] runs the tasks.
//!
//! May use: `route` (the router it feeds and reads), and the cross-cutting modules.

pub mod engine;
pub mod wire;

pub use engine::{start, Cluster};
