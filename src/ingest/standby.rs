//! Tailing the change log on a hot standby (`PGRELAY_READ_URL`), and measuring how far the
//! standby lags behind the primary.
//!
//! # Why the reader cannot use a standby's snapshot as is
//!
//! The reader's windows are built from snapshots: a transaction is read once, in the first
//! read whose snapshot sees it (see `tail`). On a primary, `pg_current_snapshot()` lists the
//! transactions in progress. On a standby it does not: a snapshot taken during recovery keeps
//! the primary's running transactions out of its `xip` list (PostgreSQL stores them where
//! `pg_current_snapshot()` does not look), so `725:727:` comes back while 725 is still open on
//! the primary. Used as a window bound, that snapshot would say 725 was already read, and its
//! changes would never be.
//!
//! # What the reader uses instead
//!
//! Before each read, one statement asks the standby which candidate transactions are still
//! in progress (`pg_xact_status`): those the last window left open, and every xid from the
//! last window's upper bound up to the standby's current `xmax` (the *horizon*, at most
//! [`STEP`] ahead). The read that follows takes its own snapshot later, and is bounded by
//! `xid < horizon`. Then:
//!
//! - a candidate that was no longer in progress when asked had ended before the read's
//!   snapshot, so its rows, if it committed any, are in this read;
//! - a candidate still in progress when asked is kept open for the next window, unless this
//!   read already returned its rows (it committed in between);
//! - xids at or above the horizon wait for the next window.
//!
//! The window that results, `min(open):horizon:open…`, is written as an ordinary snapshot
//! text: for every transaction that wrote to the change log it says "read" exactly when the
//! reader has handed it on, which is all the reader, its resumption after a lost session,
//! gap detection and server-sent event positions need from a snapshot. Every statement here
//! runs on a hot standby: no xid is assigned, nothing is written, and the sessions are read
//! only.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_postgres::{Client, Statement};
use tracing::{info, warn};

use crate::db::standby;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The most xids one window's status check looks at: after a long outage the reader
/// catches up in windows of this many xids rather than one huge one.
pub const STEP: i64 = 100_000;

/// Which candidates are still in progress, and the horizon below which every xid was
/// checked. `$1`: the open xids of the last window; `$2`: its upper bound (NULL at start:
/// the statement's own xmin); `$3`: [`STEP`].
pub const STATUS_SQL: &str = "\
WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, \
                  pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax), \
     b AS (SELECT coalesce($2::bigint, s.xmin) AS lo, s.xmax FROM s), \
     r AS (SELECT b.lo, greatest(b.lo, least(b.xmax, b.lo + $3::bigint)) AS horizon FROM b) \
SELECT r.horizon, \
       ARRAY(SELECT c FROM (SELECT unnest($1::bigint[]) AS c \
                            UNION SELECT generate_series(r.lo, r.horizon - 1)) AS cand \
             WHERE pg_xact_status(c::text::xid8) = 'in progress' ORDER BY c) \
FROM r";

/// The tail reader's read on a standby: `tail::READ_SQL` bounded by the horizon (`$3`), with
/// each row's xid (column 10) so that a transaction read now is not kept open.
pub const READ_SQL: &str = "\
SELECT pg_current_snapshot()::text, \
       (SELECT notify FROM pgrelay.ingest_state), \
       c.seq, c.schema_name, c.table_name, c.op, c.commit_timestamp, c.record, c.old_record, c.txmax, \
       c.xid::text \
FROM (SELECT 1) AS one \
LEFT JOIN LATERAL ( \
    SELECT l.*, max(l.seq) OVER (PARTITION BY l.xid) AS txmax \
    FROM pgrelay.change_log l \
    WHERE (l.xid >= $1::text::xid8 OR l.xid = ANY ($2::text::xid8[])) \
      AND l.xid < $3::text::xid8 \
) c ON true \
ORDER BY c.txmax, c.seq";

/// The answer of [`STATUS_SQL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statuses {
    /// Every xid below this was checked (or read before).
    pub horizon: i64,
    /// Candidates still in progress when checked, ascending.
    pub in_progress: Vec<i64>,
}

impl Statuses {
    /// The window this read closes: `read` holds the xids whose rows the read returned.
    pub fn window(&self, read: &HashSet<i64>) -> String {
        let open: Vec<String> = self
            .in_progress
            .iter()
            .filter(|x| !read.contains(x) && **x < self.horizon)
            .map(i64::to_string)
            .collect();
        let xmin = self
            .in_progress
            .iter()
            .find(|x| !read.contains(x) && **x < self.horizon)
            .copied()
            .unwrap_or(self.horizon);
        format!("{xmin}:{}:{}", self.horizon, open.join(","))
    }
}

/// Ask which candidates after window `prev` (`None`: at start) are still in progress.
/// `None` when `prev` is not a window text.
pub async fn statuses(
    client: &Client,
    stmt: &Statement,
    prev: Option<&str>,
) -> Result<Option<Statuses>, tokio_postgres::Error> {
    let (lo, open) = match prev {
        None => (None, Vec::new()),
        Some(text) => match parse(text) {
            Some((xmax, open)) => (Some(xmax), open),
            None => return Ok(None),
        },
    };
    let row = client.query_one(stmt, &[&open, &lo, &STEP]).await?;
    Ok(Some(Statuses {
        horizon: row.try_get(0)?,
        in_progress: row.try_get(1)?,
    }))
}

/// `xmin:xmax:xip,…` → (xmax, xip).
fn parse(text: &str) -> Option<(i64, Vec<i64>)> {
    let mut parts = text.split(':');
    let _xmin = parts.next()?;
    let xmax = parts.next()?.parse().ok()?;
    let xip = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let open = xip
        .split(',')
        .filter(|x| !x.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<i64>, _>>()
        .ok()?;
    Some((xmax, open))
}

/// How often replication lag is measured.
pub const LAG_EVERY: Duration = Duration::from_secs(1);

/// Measure replication lag until shutdown: every [`LAG_EVERY`], the primary's WAL position
/// (one `pg_current_wal_lsn()`) and the standby's replay position.
///
/// `pgrelay_replica_lag_seconds` is how long ago the primary had first written WAL that the
/// standby has not replayed yet, to within [`LAG_EVERY`]: 0 when the standby has replayed
/// everything, however long the primary has been idle; growing while the standby is
/// unreachable or stuck. `pgrelay_replica_lag_bytes` is the WAL between the two positions.
pub async fn run_lag(write: Pool, read: Pool, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    metrics.replica.store(1, Ordering::Relaxed);
    // Primary positions not yet replayed, oldest first, each with when it was first seen.
    let mut unreplayed: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut primary_down = false;
    let mut standby_down = false;
    let mut promoted = false;
    let mut tick = tokio::time::interval(LAG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        match standby::primary_lsn(&write).await {
            Ok(lsn) => {
                if primary_down {
                    info!("replication lag: the primary answers again");
                    primary_down = false;
                }
                if unreplayed.back().is_none_or(|(_, last)| lsn > *last) {
                    unreplayed.push_back((Instant::now(), lsn));
                }
            }
            Err(e) if !primary_down => {
                warn!(cause = %e, "replication lag: cannot read the primary's WAL position");
                primary_down = true;
            }
            Err(_) => {}
        }
        match standby::replayed(&read).await {
            Ok((lsn, in_recovery)) => {
                if standby_down {
                    info!("replication lag: the standby answers again");
                    standby_down = false;
                }
                if !in_recovery && !promoted {
                    warn!(
                        error_code = "StandbyPromoted",
                        "PGRELAY_READ_URL is no longer a standby (promoted?): changes are still \
                         read from it, but writes go to DATABASE_URL; fix the configuration"
                    );
                }
                promoted = !in_recovery;
                let replayed = lsn.unwrap_or(0);
                while unreplayed.front().is_some_and(|(_, l)| *l <= replayed) {
                    unreplayed.pop_front();
                }
                let newest = unreplayed.back().map_or(replayed, |(_, l)| *l);
                metrics
                    .replica_lag_bytes
                    .store(newest.saturating_sub(replayed), Ordering::Relaxed);
            }
            Err(e) if !standby_down => {
                warn!(cause = %e, error_code = "StandbyUnreachable",
                      "replication lag: cannot read the standby's replay position; changes wait");
                standby_down = true;
            }
            Err(_) => {}
        }
        let lag = unreplayed
            .front()
            .map_or(Duration::ZERO, |(at, _)| at.elapsed());
        metrics.replica_lag_micros.store(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // Bounded: one entry per second of lag at most, a day's worth.
        while unreplayed.len() > 86_400 {
            unreplayed.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_keep_open_what_was_not_read() {
        let s = Statuses {
            horizon: 730,
            in_progress: vec![725, 727],
        };
        assert_eq!(s.window(&HashSet::new()), "725:730:725,727");
        assert_eq!(s.window(&HashSet::from([725])), "727:730:727");
        assert_eq!(s.window(&HashSet::from([725, 727, 728])), "730:730:");
        assert_eq!(parse("727:730:727"), Some((730, vec![727])));
        assert_eq!(parse("730:730:"), Some((730, vec![])));
        assert_eq!(parse("garbage"), None);
    }
}
