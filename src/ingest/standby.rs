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
//! last window's upper bound up to the standby's current `xmax` (the *horizon*). The read
//! that follows takes its own snapshot later and, as on a primary, returns every transaction
//! of the window it sees committed. (Bounding it by xid would break commit order: a
//! transaction can take its xid before another and commit after it.) A candidate is then:
//!
//! - *read*, when the read returned its rows: it is closed;
//! - *open*, when it was still in progress when asked, or took its xid after the question:
//!   it is kept for the next window;
//! - *done*, when it is below the read snapshot's `xmin`: that snapshot saw it finished, so
//!   had it committed rows, the read would have returned them;
//! - otherwise *settling*: it had finished when asked, but a standby marks a commit in the
//!   commit log a moment before it takes the transaction out of its running set, and a
//!   snapshot taken in between still sees it running. It is kept open until the standby's
//!   replay position has moved past where it stood during the read that first missed it
//!   (replay finishes records in order, so the commit record is then fully replayed), and
//!   one more read has missed it: then it committed no rows.
//!
//! The window that results, `xmin:xmax:open…` with the read snapshot's `xmax`, is written as an ordinary snapshot text:
//! for every transaction that wrote to the change log it says "read" exactly when the reader
//! has handed it on, which is all the reader, its resumption after a lost session, gap
//! detection and server-sent event positions need from a snapshot. Every statement here runs
//! on a hot standby: no xid is assigned, nothing is written, and the sessions are read only.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_postgres::{Client, Statement};
use tracing::{info, warn};

use crate::db::standby;
use crate::ingest::tail;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Which candidates are still in progress, the horizon below which every xid was checked, and
/// the standby's replay position. `$1`: the open xids of the last window; `$2`: its upper
/// bound (NULL at start: the statement's own xmin).
pub const STATUS_SQL: &str = "\
WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, \
                  pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax), \
     b AS (SELECT coalesce($2::bigint, s.xmin) AS lo, s.xmax FROM s), \
     r AS (SELECT b.lo, greatest(b.lo, b.xmax) AS horizon FROM b) \
SELECT r.horizon, \
       ARRAY(SELECT c FROM (SELECT unnest($1::bigint[]) AS c \
                            UNION SELECT generate_series(r.lo, r.horizon - 1)) AS cand \
             WHERE pg_xact_status(c::text::xid8) = 'in progress' ORDER BY c), \
       pg_last_wal_replay_lsn()::text \
FROM r";

/// The tail reader's read on a standby: `tail::READ_SQL` without its visibility test (the
/// window is built from [`STATUS_SQL`]), with each row's xid (column [`XID`]) and the replay
/// position during the read (column [`REPLAYED`]).
pub const READ_SQL: &str = concat!(
    "SELECT pg_current_snapshot()::text, (SELECT notify FROM pgrelay.ingest_state), ",
    tail::log_window_columns!(),
    ", c.xid::text, pg_last_wal_replay_lsn()::text \
     FROM (SELECT 1) AS one LEFT JOIN LATERAL (",
    tail::log_window_rows!(),
    ") c ON true ORDER BY c.txmax, c.seq"
);

/// The column of [`READ_SQL`] that holds each row's xid.
pub const XID: usize = tail::TXMAX + 1;
/// The column of [`READ_SQL`] that holds the standby's replay position.
pub const REPLAYED: usize = tail::TXMAX + 2;

/// The answer of [`STATUS_SQL`], with the window it was asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statuses {
    /// The last window's upper bound and open xids (`None`: the first window).
    pub after: Option<(i64, Vec<i64>)>,
    /// Every xid below this was checked (or read before).
    pub horizon: i64,
    /// Candidates still in progress when checked, ascending.
    pub in_progress: Vec<i64>,
    /// The standby's replay position when checked.
    pub replayed: u64,
}

/// What one read saw, for [`Statuses::window`].
#[derive(Debug, Default)]
pub struct ReadSeen {
    /// The xids whose rows the read returned.
    pub xids: HashSet<i64>,
    /// The read snapshot's xmin and xmax.
    pub xmin: i64,
    pub xmax: i64,
    /// The standby's replay position during the read.
    pub replayed: u64,
}

impl Statuses {
    /// The window the read closes. `settling` maps each settling xid to the replay position
    /// during the read that first missed it; it is kept across windows.
    pub fn window(&self, read: &ReadSeen, settling: &mut HashMap<i64, u64>) -> String {
        let upper = self.horizon.max(read.xmax);
        let mut open: BTreeSet<i64> = self
            .in_progress
            .iter()
            .copied()
            .filter(|x| !read.xids.contains(x) && *x >= read.xmin)
            .collect();
        if let Some((lo, prev_open)) = &self.after {
            let in_progress: HashSet<i64> = self.in_progress.iter().copied().collect();
            let fresh = (*lo).max(read.xmin)..upper;
            let candidates = prev_open.iter().copied().chain(fresh);
            for x in candidates {
                if x < read.xmin || read.xids.contains(&x) || in_progress.contains(&x) {
                    continue;
                }
                if x >= self.horizon {
                    // Took its xid after the question: asked about next time.
                    open.insert(x);
                    continue;
                }
                match settling.get(&x) {
                    // Its commit had been fully replayed before this read: nothing to read.
                    Some(missed_at) if self.replayed > *missed_at => {}
                    Some(_) => {
                        open.insert(x);
                    }
                    None => {
                        settling.insert(x, read.replayed);
                        open.insert(x);
                    }
                }
            }
        }
        settling.retain(|x, _| open.contains(x));
        let xmin = open.first().copied().unwrap_or(upper);
        let xip: Vec<String> = open.iter().map(i64::to_string).collect();
        format!("{xmin}:{upper}:{}", xip.join(","))
    }
}

/// Ask which candidates after window `prev` (`None`: at start) are still in progress.
/// `None` when `prev` is not a window text.
pub async fn statuses(
    client: &Client,
    stmt: &Statement,
    prev: Option<&str>,
) -> Result<Option<Statuses>, tokio_postgres::Error> {
    let after = match prev {
        None => None,
        Some(text) => match parse(text) {
            Some(after) => Some(after),
            None => return Ok(None),
        },
    };
    let (lo, open) = match &after {
        Some((lo, open)) => (Some(*lo), open.clone()),
        None => (None, Vec::new()),
    };
    let row = client.query_one(stmt, &[&open, &lo]).await?;
    let replayed: Option<String> = row.try_get(2)?;
    Ok(Some(Statuses {
        after,
        horizon: row.try_get(0)?,
        in_progress: row.try_get(1)?,
        replayed: replayed
            .as_deref()
            .and_then(standby::parse_lsn)
            .unwrap_or(0),
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

    fn seen(xids: &[i64], xmin: i64, replayed: u64) -> ReadSeen {
        ReadSeen {
            xids: xids.iter().copied().collect(),
            xmin,
            xmax: 730,
            replayed,
        }
    }

    #[test]
    fn the_first_window_leaves_open_what_runs() {
        let s = Statuses {
            after: None,
            horizon: 730,
            in_progress: vec![725, 727],
            replayed: 100,
        };
        let mut settling = HashMap::new();
        assert_eq!(
            s.window(&seen(&[], 725, 100), &mut settling),
            "725:730:725,727"
        );
        assert!(settling.is_empty());
    }

    #[test]
    fn read_running_done_and_settling_candidates() {
        // Last window 725:728:725; now 725 and 729 run, 726 was read, 727 finished below
        // the read's xmin, 728 finished above it and settles.
        let s = Statuses {
            after: Some((728, vec![725])),
            horizon: 730,
            in_progress: vec![725, 729],
            replayed: 100,
        };
        let mut settling = HashMap::new();
        let w = s.window(&seen(&[726], 725, 100), &mut settling);
        assert_eq!(w, "725:730:725,728,729");
        assert_eq!(settling, HashMap::from([(728, 100)]));
        // Replay has not moved: 728 still settles.
        let s = Statuses {
            after: Some((730, vec![725, 728, 729])),
            horizon: 730,
            in_progress: vec![725, 729],
            replayed: 100,
        };
        assert_eq!(
            s.window(&seen(&[], 725, 100), &mut settling),
            "725:730:725,728,729"
        );
        // Replay moved past: a read that still misses 728 closes it; 725 is read.
        let s = Statuses { replayed: 101, ..s };
        assert_eq!(
            s.window(&seen(&[725], 729, 101), &mut settling),
            "729:730:729"
        );
        assert!(settling.is_empty());
        // The read's snapshot is newer than the question: 730 and 731 were not asked about;
        // 731 was read, 730 stays open.
        let s = Statuses {
            after: Some((730, vec![729])),
            horizon: 730,
            in_progress: vec![],
            replayed: 101,
        };
        let read = ReadSeen {
            xmax: 732,
            ..seen(&[729, 731], 729, 101)
        };
        assert_eq!(s.window(&read, &mut settling), "730:732:730");
        assert_eq!(parse("729:730:729"), Some((730, vec![729])));
        assert_eq!(parse("730:730:"), Some((730, vec![])));
        assert_eq!(parse("garbage"), None);
    }
}
