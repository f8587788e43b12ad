//! The dispatcher: the one consumer of the listener's events. It decodes each change once,
//! routes it, advances the watermark on this relay's markers, and after a LISTEN disconnect
//! replays from the change log exactly the changes that were missed, before any live change
//! that follows.
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

use crate::change::{self, Catalog, Change, Notice};
use crate::db;
use crate::listener::Event;
use crate::metrics::{parse_commit_timestamp, Metrics};
use crate::router::Router;
use crate::watermark::Markers;

/// Remembered deliveries beyond this mean markers have stopped coming back (the pool cannot
/// reach the database while the LISTEN session can): forget them and treat the next gap as
/// unrecoverable rather than grow without bound.
const MAX_REMEMBERED: usize = 2_000_000;

/// Catch-up delivers this many changes, then lets sockets drain (`Dispatcher::pace`).
const CATCH_UP_BATCH: usize = 128;
/// Longest wait for sockets to drain between catch-up batches.
const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

/// Sent to channels when changes may have been lost.
pub const GAP_MESSAGE: &str = "The relay lost its database connection for a moment and could \
                               not replay every change made meanwhile: some may be missing. \
                               Refetch to be sure.";

/// The dispatcher's state.
#[derive(Debug)]
pub struct Dispatcher {
    pub catalog: Arc<Catalog>,
    pub router: Arc<Router>,
    pub pool: deadpool_postgres::Pool,
    pub metrics: Arc<Metrics>,
    pub markers: Arc<Markers>,
    /// Latest watermark snapshot, published for readers of the change log (server-sent
    /// events) that follow the relay's windows.
    pub watermark_tx: watch::Sender<Option<String>>,
    /// Told about every change, to re-run the live queries that depend on it.
    pub live: Option<Arc<crate::aggregate::LiveQueries>>,
    /// Reloaded when `pgrelay.read_policies` changes (the table is published to the relay).
    pub policies: Option<Arc<crate::policy::Policies>>,
    watermark: Option<String>,
    delivered: HashSet<i64>,
    delivered_prev: HashSet<i64>,
}

impl Dispatcher {
    pub fn new(
        catalog: Arc<Catalog>,
        router: Arc<Router>,
        pool: deadpool_postgres::Pool,
        metrics: Arc<Metrics>,
        markers: Arc<Markers>,
        watermark_tx: watch::Sender<Option<String>>,
    ) -> Self {
        Dispatcher {
            catalog,
            router,
            pool,
            metrics,
            markers,
            watermark_tx,
            policies: None,
            live: None,
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
                if change.schema == "pgrelay"
                    && matches!(change.table.as_str(), "read_policies" | "channel_policies")
                {
                    self.reload_policies();
                }
                self.deliver(&change);
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

    /// Reload read policies in the background; joins from now on use the new ones.
    fn reload_policies(&self) {
        let Some(policies) = self.policies.clone() else {
            return;
        };
        let pool = self.pool.clone();
        tokio::spawn(async move {
            match policies.load(&pool).await {
                Ok(n) => info!(policies = n, "read policies reloaded"),
                Err(e) => warn!(cause = %e, "read policies not reloaded"),
            }
        });
    }

    /// Route a change unless it was already delivered. Returns whether it was delivered.
    fn deliver(&mut self, change: &Change) -> bool {
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
        Metrics::inc(&self.metrics.changes_total);
        self.router.deliver(change);
        if let Some(live) = &self.live {
            live.touched(&change.schema, &change.table);
        }
        if let Some(at) = parse_commit_timestamp(&change.commit_timestamp) {
            let lag = chrono::Utc::now() - at;
            self.metrics
                .commit_to_send
                .observe(lag.to_std().unwrap_or_default());
        }
        true
    }

    /// After a lost LISTEN session: replay what committed since the watermark.
    async fn catch_up(&mut self, down_for: Duration) {
        let Some(after) = self.watermark.clone() else {
            self.gap(down_for, "no watermark had been established yet");
            return;
        };
        let upto = match self.markers.send().await {
            Ok((_, snapshot)) => snapshot,
            Err(e) => {
                self.gap(down_for, &format!("marker failed: {e}"));
                return;
            }
        };
        match db::pruned_past(&self.pool, &after).await {
            Ok(false) => {}
            Ok(true) => self.gap(down_for, "the change log was pruned past the watermark"),
            Err(e) => self.gap(down_for, &format!("cannot check pruning: {e}")),
        }
        let rows = match db::read_window(&self.pool, &after, &upto).await {
            Ok(rows) => rows,
            Err(e) => {
                self.gap(down_for, &format!("cannot read the change log: {e}"));
                return;
            }
        };
        let logged = rows.len();
        let mut replayed = 0u64;
        for (i, row) in rows.into_iter().enumerate() {
            if i % CATCH_UP_BATCH == CATCH_UP_BATCH - 1 {
                self.pace().await;
            }
            match Change::from_log(row, &self.catalog).await {
                Ok(change) => replayed += u64::from(self.deliver(&change)),
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

    /// Let sockets drain between catch-up batches. A catch-up can replay minutes of changes at
    /// once; pushed in one go they would overflow healthy clients' queues and cut them off.
    /// A client that does not drain within the wait keeps filling and is cut off as usual, so
    /// one stuck client stalls the catch-up for a bounded time only.
    async fn pace(&self) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        tokio::task::yield_now().await;
        while self.router.queue_pressure() > 0.5 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn gap(&self, down_for: Duration, why: &str) {
        Metrics::inc(&self.metrics.gaps_total);
        warn!(down_for = ?down_for, error_code = "ListenerGap", cause = why,
              "changes committed while the listener was down may be missing");
        self.router.notify_pg_channels("error", GAP_MESSAGE);
    }
}
