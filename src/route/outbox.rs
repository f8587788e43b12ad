//! What the router hands to other relays when several share Redis: the broadcasts sent here
//! and the presence changes of this relay's channels, in the order they happened.
//!
//! The router only queues them (never waits): the cluster engine drains the queue and
//! publishes. A full queue loses the broadcast (counted) and asks the engine to rewrite this
//! relay's whole presence state, so the other relays still converge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::route::topic::{Broadcast, TopicKey};

/// One thing to tell the other relays.
#[derive(Debug)]
pub enum Outgoing {
    /// A broadcast, already fanned out to this relay's members. `ack` learns whether Redis
    /// accepted it.
    Broadcast {
        key: TopicKey,
        msg: Broadcast,
        ack: Option<oneshot::Sender<bool>>,
    },
    /// A presence diff of this relay's own channels: `(key, meta)` pairs.
    Presence {
        key: TopicKey,
        joins: Vec<(String, Value)>,
        leaves: Vec<(String, Value)>,
    },
}

/// The sending side, installed in the router by the cluster engine.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    /// Set when a presence change could not be queued: the engine rewrites the whole state.
    resync: Arc<AtomicBool>,
}

/// The receiving side, for the engine.
#[derive(Debug)]
pub struct Inbox {
    pub rx: mpsc::Receiver<Outgoing>,
    pub resync: Arc<AtomicBool>,
}

impl Inbox {
    /// True once after a presence change was lost.
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }
}

/// A queue of `capacity` items.
pub fn channel(capacity: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let resync = Arc::new(AtomicBool::new(false));
    (
        Outbox {
            tx,
            resync: resync.clone(),
        },
        Inbox { rx, resync },
    )
}

impl Outbox {
    /// Queue a broadcast; false when the queue is full or the engine is gone.
    pub fn broadcast(
        &self,
        key: &TopicKey,
        msg: Broadcast,
        ack: Option<oneshot::Sender<bool>>,
    ) -> bool {
        self.tx
            .try_send(Outgoing::Broadcast {
                key: key.clone(),
                msg,
                ack,
            })
            .is_ok()
    }

    /// Queue a presence diff; when it cannot be, the next refresh rewrites the whole state.
    pub fn presence(
        &self,
        key: &TopicKey,
        joins: Vec<(String, Value)>,
        leaves: Vec<(String, Value)>,
    ) {
        let sent = self.tx.try_send(Outgoing::Presence {
            key: key.clone(),
            joins,
            leaves,
        });
        if sent.is_err() {
            self.resync.store(true, Ordering::Release);
        }
    }
}
