//! The routing stage's loop: takes ingest's ordered stream of changes and puts each on the
//! sockets that subscribed to it, tells live aggregate topics what changed, and reloads the
//! read policies when their own table changes.
//!
//! Lifecycle: runs until ingest drops its sender (shutdown). It never awaits a client: the
//! router only `try_send`s to socket queues. After a burst (a reader back from an outage can
//! hand on minutes of changes at once) it lets sockets drain now and then, so healthy clients
//! are not cut off for a backlog that is not theirs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::ingest::change::Change;
use crate::ingest::{Delivery, GAP_MESSAGE};
use crate::metrics::Metrics;
use crate::route::live::LiveQueries;
use crate::route::policy::Policies;
use crate::route::router::Router;

/// While a backlog is waiting, every this many changes the loop lets sockets drain.
const BURST_BATCH: usize = 128;
/// What counts as a burst: this many changes waiting. Live flow, even at thousands of changes
/// a second, arrives a read's worth at a time and is never paced: pacing waits for the fullest
/// socket queue, so pacing live flow would let one slow client delay everyone.
const BURST_BACKLOG: usize = 1024;
/// Longest wait for sockets to drain between burst batches.
const BURST_WAIT: Duration = Duration::from_millis(250);

/// What the loop routes to.
#[derive(Debug)]
pub struct Deliverer {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub pool: deadpool_postgres::Pool,
    /// Told about every change, to re-run the live queries that depend on it.
    pub live: Option<Arc<LiveQueries>>,
    /// Reloaded when `pgrelay.read_policies` or `pgrelay.channel_policies` changes.
    pub policies: Option<Arc<Policies>>,
}

impl Deliverer {
    /// Route every delivery until the sender is gone.
    pub async fn run(self, mut deliveries: mpsc::Receiver<Delivery>) {
        let mut since_pause = 0usize;
        while let Some(delivery) = deliveries.recv().await {
            match delivery {
                Delivery::Change(change) => self.deliver(&change),
                Delivery::Gap => self.router.notify_pg_channels("error", GAP_MESSAGE),
            }
            since_pause += 1;
            if since_pause >= BURST_BATCH {
                since_pause = 0;
                if deliveries.len() >= BURST_BACKLOG {
                    self.pace().await;
                }
            }
        }
    }

    fn deliver(&self, change: &Change) {
        if change.schema == "pgrelay"
            && matches!(change.table.as_str(), "read_policies" | "channel_policies")
        {
            self.reload_policies();
        }
        Metrics::inc(&self.metrics.changes_total);
        self.router.deliver(change);
        if let Some(live) = &self.live {
            live.touched(&change.schema, &change.table);
        }
        let lag = std::time::SystemTime::now()
            .duration_since(change.changed_at)
            .unwrap_or_default();
        self.metrics.commit_to_send.observe(lag);
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

    /// Let sockets drain. A client that does not drain within the wait keeps filling and is
    /// cut off as usual, so one stuck client stalls a burst for a bounded time only.
    async fn pace(&self) {
        let deadline = tokio::time::Instant::now() + BURST_WAIT;
        tokio::task::yield_now().await;
        while self.router.queue_pressure() > 0.5 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
