//! A socket as the route stage sees it: its id, and the bounded queue its frames go onto.
//!
//! The router puts frames on a socket's queue with `try_queue` and never waits: when the
//! queue is full (in frames or in bytes) it cuts the socket off instead
//! ([`SocketShared::cut_off`]). The socket task in `realtime` holds the other end: it writes
//! the frames to the WebSocket, and closes with the [`CutOff`] reason once there is one.
//!
//! A module of its own because presence, topics and bindings name sockets by [`SocketId`]
//! too, and the router uses all three.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use crate::metrics::Metrics;
use crate::protocol::Vsn;

/// A socket registered with the router, which numbers them from 1.
pub type SocketId = u64;

/// Text frame bytes, shared: cloning one for another socket is a reference count, and the
/// socket hands the same bytes to the WebSocket without copying them.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// A frame waiting in a socket's queue. Text is shared by every socket that gets the same
/// (topic, ids) group: it is serialized once.
#[derive(Debug, Clone)]
pub enum Outbound {
    Text(Frame),
    /// A binary broadcast (kind 4), for vsn 2.0.0 sockets.
    Binary(bytes::Bytes),
}

impl Outbound {
    pub fn len(&self) -> usize {
        match self {
            Outbound::Text(t) => t.len(),
            Outbound::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why the relay closed a socket on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutOff {
    /// WebSocket close code.
    pub code: u16,
    /// Stable PascalCase code (ERROR_CODES.md).
    pub error_code: &'static str,
    /// Human-readable reason, sent in the `system` message and the close frame.
    pub reason: &'static str,
}

pub const SLOW_CONSUMER: CutOff = CutOff {
    code: 1008,
    error_code: "SlowConsumer",
    reason: "Client is too slow: its outbound queue is full",
};

/// State shared between the router (producer) and one socket task (consumer).
#[derive(Debug, Default)]
pub struct SocketShared {
    /// Bytes sitting in the queue; the router adds, the socket subtracts after writing.
    pub queued_bytes: AtomicUsize,
    cutoff: Mutex<Option<CutOff>>,
    cutoff_notify: Notify,
}

impl SocketShared {
    /// Ask the socket task to close with `why`. The first reason wins.
    /// Returns whether this call cut it off: false when it already was (a full queue fails
    /// every change until the socket task has gone).
    pub fn cut_off(&self, why: CutOff) -> bool {
        {
            let mut slot = self.cutoff.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() {
                return false;
            }
            *slot = Some(why);
        }
        // notify_one stores a permit if the socket is not waiting right now.
        self.cutoff_notify.notify_one();
        true
    }

    /// Completes when the socket has been cut off; returns why.
    pub async fn cut(&self) -> CutOff {
        loop {
            if let Some(why) = *self.cutoff.lock().unwrap_or_else(|p| p.into_inner()) {
                return why;
            }
            self.cutoff_notify.notified().await;
        }
    }
}

/// The router's view of a socket.
#[derive(Debug)]
pub struct SocketHandle {
    pub vsn: Vsn,
    pub tx: mpsc::Sender<Outbound>,
    pub shared: Arc<SocketShared>,
    pub max_queued_bytes: usize,
}

/// Whether a socket's queue is half full or more (frames or bytes).
pub(super) fn half_full(handle: &SocketHandle) -> bool {
    let frames = handle.tx.max_capacity() - handle.tx.capacity();
    frames.saturating_mul(2) >= handle.tx.max_capacity()
        || handle
            .shared
            .queued_bytes
            .load(Ordering::Relaxed)
            .saturating_mul(2)
            >= handle.max_queued_bytes
}

/// Queue a frame without waiting. False when the socket's queue (messages or bytes) is full.
pub(super) fn try_queue(handle: &SocketHandle, out: Outbound, metrics: &Metrics) -> bool {
    let len = out.len();
    let before = handle.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
    if before + len > handle.max_queued_bytes || handle.tx.try_send(out).is_err() {
        handle.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        return false;
    }
    let queued = handle.tx.max_capacity() - handle.tx.capacity();
    metrics
        .queue_high_water
        .fetch_max(queued as u64, Ordering::Relaxed);
    true
}
