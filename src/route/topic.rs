//! Broadcast and presence topics: what names one ([`TopicKey`]), a channel's membership
//! ([`Member`]), who is in a topic, and what is fanned out to its members ([`Broadcast`]).
//!
//! The router keeps one `Topic` per key that has members or presences, and does the fan-out,
//! since it holds the sockets' queues.

use std::collections::HashMap;
use std::sync::Arc;

use crate::route::presence::TopicPresence;
use crate::route::queue::SocketId;

/// Identifies a topic for broadcast and presence: a private and a public channel of the same
/// name are different topics (as in Supabase), so they never see each other's messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub private: bool,
    /// The wire topic, `realtime:<name>`.
    pub topic: Arc<str>,
}

/// A channel's membership in its topic.
#[derive(Debug, Clone)]
pub struct Member {
    /// Receives presence diffs (presence enabled, or tracked).
    pub presence: bool,
    /// Receives its own broadcasts (`config.broadcast.self`).
    pub broadcast_self: bool,
}

/// Who is in a topic: its members' channels, and the presences they track.
#[derive(Debug, Default)]
pub(super) struct Topic {
    pub(super) members: HashMap<SocketId, Member>,
    pub(super) presence: TopicPresence,
    /// When the last presence diff went out, and the diffs held back since (batching).
    pub(super) last_diff: Option<std::time::Instant>,
    pub(super) pending_diff: Option<crate::route::presence::Diff>,
}

/// A broadcast to fan out.
#[derive(Debug, Clone)]
pub enum Broadcast {
    /// `{"type":"broadcast","event":…,"payload":…}` as JSON text, for every member.
    Json(String),
    /// A raw binary payload: kind 4 to vsn 2.0.0 members; vsn 1.0.0 cannot carry it.
    Binary {
        event: String,
        payload: bytes::Bytes,
    },
}
