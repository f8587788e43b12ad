//! Shutdown signalling and completion tracking for every long-lived task.
//!
//! warp spawns each upgraded WebSocket as a detached task and its graceful shutdown only waits
//! for HTTP connections, so the relay tracks its own tasks: each holds a [`Shutdown`] to learn
//! that it must stop and a [`Tracker`] guard whose drop says it has stopped.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

/// Listens for the shutdown signal. Cheap to clone; every clone sees the same signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// True once shutdown has begun.
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when shutdown begins (at once if it already has). Cancel-safe: meant for
    /// `select!` in every loop.
    pub async fn recv(&mut self) {
        // An error means the trigger was dropped, which also means "stop".
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// Starts shutdown and waits for every tracked task to finish.
#[derive(Debug)]
pub struct ShutdownController {
    tx: watch::Sender<bool>,
    /// Every tracked task holds a clone of this sender inside its [`Tracker`]; when the last
    /// clone is dropped, `done_rx.recv()` returns `None`: that is the "all finished" signal.
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

impl Default for ShutdownController {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownController {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        ShutdownController {
            tx,
            done_tx,
            done_rx,
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// A guard for one task; hold it for as long as the task runs.
    pub fn tracker(&self) -> Tracker {
        Tracker {
            _done: Arc::new(self.done_tx.clone()),
        }
    }

    /// Tell every task to stop (without waiting).
    pub fn signal(&self) {
        let _ = self.tx.send(true);
    }

    /// Signal every task, then wait until all trackers are dropped.
    pub async fn shutdown(self) {
        let ShutdownController {
            tx,
            done_tx,
            mut done_rx,
        } = self;
        let _ = tx.send(true);
        drop(done_tx);
        // Keep `tx` alive while waiting: dropping it would also read as a signal, which is
        // fine, but holding it makes the order of events explicit.
        let _ = done_rx.recv().await;
        drop(tx);
    }
}

/// Held by a running task; dropping it marks the task finished.
#[derive(Debug, Clone)]
pub struct Tracker {
    _done: Arc<mpsc::Sender<()>>,
}
