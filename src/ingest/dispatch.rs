//! The dispatcher: the one consumer of the listener's events. It decodes each change once,
//! hands it on to routing, advances the watermark on this relay's markers, and after a LISTEN
//! disconnect replays from the change log exactly the changes that were missed, before any
//! live change that follows.
//!
//! Exactly once: every change delivered since the last two watermarks is remembered by `seq`
//! (two generations, rotated at each marker). A catch-up replays the transactions committed
//! after the watermark and visible in a fresh marker's snapshot, skipping remembered ones;
//! live notifications of transactions the catch-up already delivered are skipped the same way.
//! Why two generations suffice: a change delivered before marker k's arrival but committed
//! after its snapshot stays remembered until marker k+1 arrives, whose snapshot (taken after
//! marker k committed) makes it visible, so no catch-up can ask for it again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::db;
use crate::ingest::change::{self, Catalog, Change, Notice};
use crate::ingest::listener::Event;
use crate::ingest::watermark::Markers;
use crate::ingest::Delivery;
use crate::metrics::Metrics;

/// Remembered deliveries beyond this mean markers have stopped coming back (the pool cannot
/// reach the database while the LISTEN session can): forget them and treat the next gap as
/// unrecoverable rather than grow without bound.
const MAX_REMEMBERED: usize = 2_000_000;

/// The dispatcher's state.
#[derive(Debug)]
pub struct Dispatcher {
    pub catalog: Arc<Catalog>,
    /// Where each change goes next, in order. Bounded: a routing stage that falls behind
    /// slows the dispatcher, and through it the listener, instead of growing a buffer.
    pub out: mpsc::Sender<Delivery>,
    pub pool: deadpool_postgres::Pool,
    pub metrics: Arc<Metrics>,
    pub markers: Arc<Markers>,
    /// Latest watermark snapshot, published for readers of the change log (server-sent
    /// events) that follow the relay's windows.
    pub watermark_tx: watch::Sender<Option<String>>,
    watermark: Option<String>,
    delivered: HashSet<i64>,
    delivered_prev: HashSet<i64>,
}

impl Dispatcher {
    pub fn new(
        catalog: Arc<Catalog>,
        out: mpsc::Sender<Delivery>,
        pool: deadpool_postgres::Pool,
        metrics: Arc<Metrics>,
        markers: Arc<Markers>,
        watermark_tx: watch::Sender<Option<String>>,
    ) -> Self {
        Dispatcher {
            catalog,
            out,
            pool,
            metrics,
            markers,
            watermark_tx,
            watermark: None,
            delivered: HashSet::new(),
            delivered_prev: HashSet::new(),
        }
    }

    /// Consume events until the listener is gone.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Notification(payload) => self.on_payload(&payload).await,
                Event::Listening { after_loss: None } => {
                    // First session: establish a watermark as soon as possible.
                    if let Err(e) = self.markers.send().await {
                        warn!(cause = %e, "first watermark marker not sent");
                    }
                }
                Event::Listening {
                    after_loss: Some(down_for),
                } => {
                    Metrics::inc(&self.metrics.listener_reconnects_total);
                    self.catch_up(down_for).await;
                }
            }
        }
    }

    async fn on_payload(&mut self, payload: &str) {
        match change::decode(payload, &self.catalog).await {
            Ok(Notice::Change(change)) => {
                self.deliver(change).await;
            }
            Ok(Notice::Marker(m)) if m.relay == self.markers.relay_id => {
                self.watermark = Some(m.snapshot.clone());
                self.delivered_prev = std::mem::take(&mut self.delivered);
                self.watermark_tx.send_replace(Some(m.snapshot));
            }
            Ok(Notice::Marker(_)) => {} // another relay's
            Err(err) => {
                Metrics::inc(&self.metrics.changes_dropped_total);
                error!(error_code = err.code(), cause = %err, payload = %crate::protocol::truncate(payload, 200), "change dropped");
            }
        }
    }

    /// Hand a change on unless it was already delivered. Returns whether it was handed on.
    async fn deliver(&mut self, change: Change) -> bool {
        if self.delivered_prev.contains(&change.seq) || !self.delivered.insert(change.seq) {
            return false;
        }
        if self.delivered.len() > MAX_REMEMBERED {
            warn!(
                "no watermark marker came back for a long time; catch-up disabled until one does"
            );
            self.delivered.clear();
            self.delivered_prev.clear();
            self.watermark = None;
        }
        // Closed only when routing has stopped, i.e. at shutdown.
        let _ = self.out.send(Delivery::Change(change)).await;
        true
    }

    /// After a lost LISTEN session: replay what committed since the watermark.
    async fn catch_up(&mut self, down_for: Duration) {
        let Some(after) = self.watermark.clone() else {
            self.gap(down_for, "no watermark had been established yet")
                .await;
            return;
        };
        let upto = match self.markers.send().await {
            Ok((_, snapshot)) => snapshot,
            Err(e) => {
                self.gap(down_for, &format!("marker failed: {e}")).await;
                return;
            }
        };
        match db::pruned_past(&self.pool, &after).await {
            Ok(false) => {}
            Ok(true) => {
                self.gap(down_for, "the change log was pruned past the watermark")
                    .await
            }
            Err(e) => {
                self.gap(down_for, &format!("cannot check pruning: {e}"))
                    .await
            }
        }
        let rows = match db::read_window(&self.pool, &after, &upto).await {
            Ok(rows) => rows,
            Err(e) => {
                self.gap(down_for, &format!("cannot read the change log: {e}"))
                    .await;
                return;
            }
        };
        let logged = rows.len();
        let mut replayed = 0u64;
        for row in rows {
            match Change::from_log(row, &self.catalog).await {
                Ok(change) => replayed += u64::from(self.deliver(change).await),
                Err(err) => {
                    Metrics::inc(&self.metrics.changes_dropped_total);
                    error!(error_code = err.code(), cause = %err, "logged change dropped");
                }
            }
        }
        Metrics::inc(&self.metrics.catchups_total);
        self.metrics
            .catchup_changes_total
            .fetch_add(replayed, std::sync::atomic::Ordering::Relaxed);
        info!(down_for = ?down_for, logged, replayed, "caught up after listener reconnect");
    }

    async fn gap(&self, down_for: Duration, why: &str) {
        Metrics::inc(&self.metrics.gaps_total);
        warn!(down_for = ?down_for, error_code = "ListenerGap", cause = why,
              "changes committed while the listener was down may be missing");
        let _ = self.out.send(Delivery::Gap).await;
    }
}
