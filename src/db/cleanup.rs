//! Housekeeping the database needs: ending button-hold sessions whose heartbeat went stale,
//! and pruning the change log past its retention.
//!
//! Both run inside `serve` (the sweeper only with `--cleanup`) or in a `pgrelay cleanup`
//! process, and any number of them may run against one database at once. A sweep ends every
//! stale session in one `UPDATE`; under READ COMMITTED a second, concurrent `UPDATE` waits for
//! the first one's row locks and then re-checks `is_active` on the committed row, so a session
//! is ended exactly once whoever runs. An advisory lock lets a concurrent pass skip instead of
//! queueing behind the one in progress. The `UPDATE` changes `is_active` and `ended_at`, so
//! the `button_holds` trigger announces every ended session to subscribers.
//!
//! Pruning deletes in small batches (each its own short transaction, `SKIP LOCKED`), so it
//! never holds long locks and several relays or cleanup processes can run it at once. It
//! records the newest transaction it pruned, so a catch-up that would have needed a pruned
//! change can say so instead of silently skipping it.

use std::time::Duration;

use deadpool_postgres::Pool;
use tracing::{debug, info, trace, warn};

use crate::config::SessionCleanup;
use crate::db::{self, DbError};
use crate::shutdown::Shutdown;

/// The `pg_try_advisory_xact_lock` key a sweep holds for its transaction ("pgrelayS" in
/// ASCII). Advisory locks are per database, so sweepers of different databases never meet.
pub const SWEEP_LOCK: i64 = 0x7067_7265_6c61_7953;

/// Why `pgrelay cleanup` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(
        "the pgrelay schema is not set up in database {database}: {missing} missing \
         (run `pgrelay migrate`, or start `pgrelay serve` once)"
    )]
    SchemaMissing { database: String, missing: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// This many sessions were ended.
    Ended(u64),
    /// Another sweep held the lock and is ending these sessions; any that go stale after its
    /// statement began are ended at the next deadline.
    Skipped,
}

/// Check that the tables the cleanup loops write exist, so a process pointed at the wrong
/// database says so once instead of failing every pass. Warns (only) when `button_holds` is
/// not published, because ended sessions would then reach nobody.
///
/// # Errors
/// [`CleanupError::SchemaMissing`] naming what is missing; or the database did not answer.
pub async fn check_schema(pool: &Pool) -> Result<(), CleanupError> {
    let client = db::client(pool).await?;
    let row = client
        .query_one(
            "SELECT current_database()::text, \
                    array_remove(ARRAY[ \
                        CASE WHEN to_regclass('public.button_holds') IS NULL \
                             THEN 'public.button_holds' END, \
                        CASE WHEN to_regclass('pgrelay.change_log') IS NULL \
                             THEN 'pgrelay.change_log' END, \
                        CASE WHEN to_regclass('pgrelay.prune_state') IS NULL \
                             THEN 'pgrelay.prune_state' END], NULL), \
                    EXISTS (SELECT 1 FROM pg_trigger \
                            WHERE tgrelid = to_regclass('public.button_holds') \
                              AND tgname = 'pgrelay_notify')",
            &[],
        )
        .await
        .map_err(DbError::from)?;
    let database: String = row.try_get(0).map_err(DbError::from)?;
    let missing: Vec<String> = row.try_get(1).map_err(DbError::from)?;
    let published: bool = row.try_get(2).map_err(DbError::from)?;
    if !missing.is_empty() {
        return Err(CleanupError::SchemaMissing {
            database,
            missing: match missing.len() {
                1 => format!("{} is", missing[0]),
                _ => format!("{} are", missing.join(", ")),
            },
        });
    }
    if !published {
        warn!(
            database = %database,
            "public.button_holds has no pgrelay trigger: ended sessions reach no subscriber until `pgrelay triggers apply`"
        );
    }
    Ok(())
}

/// End every active session whose `last_heartbeat` is older than `stale_after`, in one
/// statement; returns how many it ended.
///
/// Safe to run concurrently with itself without any other lock: a concurrent run blocks on the
/// rows this one updates and, once it commits, re-evaluates `is_active` on their new versions
/// (READ COMMITTED) and skips them.
///
/// # Errors
/// The database did not take the statement.
pub async fn end_stale_sessions<C>(client: &C, stale_after: Duration) -> Result<u64, DbError>
where
    C: tokio_postgres::GenericClient + Sync,
{
    // The threshold is bound as a parameter, never formatted into the SQL.
    Ok(client
        .execute(
            "UPDATE public.button_holds SET is_active = false, ended_at = now() \
             WHERE is_active AND last_heartbeat < now() - make_interval(secs => $1)",
            &[&stale_after.as_secs_f64()],
        )
        .await?)
}

/// One sweep: take the sweep lock for a short transaction and end the stale sessions, or skip
/// when another sweep holds it.
///
/// # Errors
/// No connection, or the database did not take a statement.
pub async fn sweep(pool: &Pool, stale_after: Duration) -> Result<Sweep, DbError> {
    let mut client = db::client(pool).await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SWEEP_LOCK])
        .await?;
    let locked: bool = row.try_get(0)?;
    if !locked {
        tx.rollback().await?;
        return Ok(Sweep::Skipped);
    }
    let ended = end_stale_sessions(&*tx, stale_after).await?;
    tx.commit().await?;
    Ok(Sweep::Ended(ended))
}

/// Sweep every `settings.interval` until shutdown.
///
/// Lifecycle: the first sweep runs at once (sessions may have gone stale while nothing
/// swept), then one per deadline, each deadline an interval after the previous sweep began.
/// Shutdown is only noticed between sweeps: a sweep in progress is finished (its `UPDATE` would
/// run to completion on the server anyway; cancelling it would only lose its count from the log
/// and leave its pooled connection mid-transaction). A failed sweep is logged with its code and
/// retried at the next deadline.
pub async fn run_sweeper(pool: Pool, settings: SessionCleanup, mut shutdown: Shutdown) {
    info!(
        interval = ?settings.interval,
        stale_after = ?settings.stale_after,
        "session cleanup running"
    );
    let mut next = tokio::time::Instant::now();
    loop {
        trace!(until = ?next, "session cleanup waiting");
        tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let began = tokio::time::Instant::now();
        // An overrun sweep starts the next one at once rather than skipping a beat.
        next = began + settings.interval;
        match sweep(&pool, settings.stale_after).await {
            Ok(Sweep::Ended(0)) => debug!("no stale sessions"),
            Ok(Sweep::Ended(n)) => info!(
                ended = n,
                stale_after = ?settings.stale_after,
                "stale sessions ended"
            ),
            Ok(Sweep::Skipped) => debug!("another cleanup is sweeping; skipped"),
            Err(e) => warn!(
                cause = %e,
                error_code = "CleanupFailed",
                retry_in = ?next.saturating_duration_since(tokio::time::Instant::now()),
                "stale session cleanup failed"
            ),
        }
    }
    debug!("session cleanup stopped");
}

/// Rows deleted per statement: small enough to keep each transaction short.
const PRUNE_BATCH: i64 = 5_000;
/// How often the pruner runs.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Delete change-log rows older than `retention`, in batches. Returns how many were deleted.
///
/// The log has no index on `created_at` (each index slows every published write): rows are
/// pruned oldest `seq` first, up to the first row young enough to keep. `created_at` is the
/// clock time at which the row was logged, as is `seq`'s allocation, so the two agree but for
/// microseconds between concurrent writers; the walk along the primary key reads the rows it
/// deletes and one more.
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
            "WITH bound AS ( \
                 SELECT coalesce( \
                     (SELECT seq FROM pgrelay.change_log \
                      WHERE created_at >= now() - make_interval(secs => $1) \
                      ORDER BY seq LIMIT 1), \
                     (SELECT max(seq) + 1 FROM pgrelay.change_log)) AS below), \
             doomed AS ( \
                 SELECT seq FROM pgrelay.change_log, bound \
                 WHERE seq < bound.below \
                   AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED), \
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
