//! Housekeeping the database needs: pruning the change log past its retention.
//!
//! Pruning deletes in small batches (each its own short transaction, `SKIP LOCKED`), so it
//! never holds long locks and several relays or cleanup processes can run it at once. It
//! records the newest transaction it pruned, so a catch-up that would have needed a pruned
//! change can say so instead of silently skipping it.

use std::time::Duration;

use deadpool_postgres::Pool;
use tracing::{debug, info, warn};

use crate::db::{self, DbError};
use crate::shutdown::Shutdown;

/// Rows deleted per statement: small enough to keep each transaction short.
const PRUNE_BATCH: i64 = 5_000;
/// How often the pruner runs.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Delete change-log rows older than `retention`, in batches. Returns how many were deleted.
///
/// Only rows of transactions older than every running one are pruned (`xid` below the current
/// snapshot's xmin), so a long transaction's changes are never pruned before they commit.
///
/// # Errors
/// The database did not take a statement.
pub async fn prune_change_log(pool: &Pool, retention: Duration) -> Result<u64, DbError> {
    let client = db::client(pool).await?;
    let stmt = client
        .prepare_cached(
            "WITH doomed AS ( \
                 SELECT seq FROM pgrelay.change_log \
                 WHERE created_at < now() - make_interval(secs => $1) \
                   AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             gone AS ( \
                 DELETE FROM pgrelay.change_log c USING doomed d WHERE c.seq = d.seq \
                 RETURNING c.xid), \
             mark AS ( \
                 UPDATE pgrelay.prune_state \
                 SET max_pruned_xid = greatest(max_pruned_xid, (SELECT max(xid) FROM gone)) \
                 WHERE EXISTS (SELECT 1 FROM gone) RETURNING 1) \
             SELECT count(*) FROM gone",
        )
        .await?;
    let secs = retention.as_secs_f64();
    let mut total = 0u64;
    loop {
        let row = client.query_one(&stmt, &[&secs, &PRUNE_BATCH]).await?;
        let n: i64 = row.try_get(0)?;
        total += u64::try_from(n).unwrap_or(0);
        if n < PRUNE_BATCH {
            return Ok(total);
        }
        // Let other work in between batches.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Prune every [`PRUNE_EVERY`] until shutdown.
///
/// Lifecycle: sleeps until the next deadline, prunes, logs what it did; a failed run is logged
/// with its code and retried at the next deadline.
pub async fn run_pruner(pool: Pool, retention: Duration, mut shutdown: Shutdown) {
    let mut next = tokio::time::Instant::now() + PRUNE_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.recv() => return,
        }
        next = tokio::time::Instant::now() + PRUNE_EVERY;
        match prune_change_log(&pool, retention).await {
            Ok(0) => debug!("change log: nothing to prune"),
            Ok(n) => info!(pruned = n, retention = ?retention, "change log pruned"),
            Err(e) => warn!(cause = %e, error_code = "PruneFailed", "change log pruning failed"),
        }
    }
}
