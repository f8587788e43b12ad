//! The change-log reader: every change the relay delivers is read here, from
//! `pgrelay.change_log`, by snapshot, in commit-consistent order, exactly once.
//!
//! How: the reader keeps the snapshot of its last read, `prev`. A read takes a new snapshot
//! `now` in the same statement and returns the log rows of every transaction visible in `now`
//! but not in `prev`: those whose xid is at or above `prev`'s xmax, or was in progress in
//! `prev`. Each transaction becomes visible in exactly one such window, so each change is read
//! once, whatever woke the reader and however often. Within a window, transactions are ordered
//! by their last `seq`: a transaction that waited for another's row lock allocated every one
//! of its sequence numbers after the other committed, so two updates of one row always come
//! out in commit order, in one window or across two.
//!
//! What wakes it, by [`IngestMode`]:
//! - a doorbell: the triggers' empty NOTIFY, while `pgrelay.ingest_state.notify` is true;
//! - a timer: every `tail_interval` while tailing (the flag is false, LISTEN is down, or the
//!   switch back to doorbells is still settling), and a safety read every
//!   [`SAFETY_READ`] otherwise.
//!
//! `adaptive` switches the flag by the commit rate it reads: above `tail_above` transactions
//! per second it turns the doorbell off (every notifying commit takes a cluster-wide lock
//! through its WAL flush, which caps the whole cluster's writes), below a quarter of that for
//! [`QUIET_FOR`] it turns it back on. A transaction that read the flag before a switch and
//! commits after it is still found, because nothing but the snapshot decides what is read:
//! after turning the doorbell on, the reader keeps tailing until every transaction that was in
//! progress at the switch has ended, and reads every [`SAFETY_READ`] after that.
//!
//! On a hot standby (`PGRELAY_READ_URL`) the mode is `tail` and the windows are built by
//! [`standby`], because a standby's snapshots do not list the primary's running transactions.
//!
//! Lifecycle: `run` loops over sessions (a dedicated connection, not the pool) until shutdown.
//! A lost session is reconnected with capped backoff and reading resumes from `prev`: the log
//! is durable, so an outage loses nothing unless pruning removed rows the reader had not read
//! yet, which is reported as a [`Delivery::Gap`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_postgres::{Client, NoTls, Statement};
use tracing::{info, trace, warn};

use crate::config::IngestMode;
use crate::db;
use crate::ingest::change::{Catalog, Change};
use crate::ingest::listener::Event;
use crate::ingest::standby;
use crate::ingest::Delivery;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// With the doorbell on, the longest the reader goes without reading: bounds how late a
/// change whose transaction did not ring (it read the flag just before a switch) arrives.
pub const SAFETY_READ: Duration = Duration::from_millis(500);
/// How long the commit rate must stay low before `adaptive` turns the doorbell back on. Long
/// enough that a bursty load does not flip the switch on every lull.
pub const QUIET_FOR: Duration = Duration::from_secs(5);
/// While tailing and changes flow, how often reads start: long enough to gather a batch, short
/// enough that a change waits for the next read no longer than the read itself takes. It
/// counts from the start of the previous read, so the time spent handing a large batch on
/// does not add to it: under write load, on a busy machine, that time is mostly waiting for a
/// CPU, and counting the gap after it made every change wait it out once more (at 32 writers
/// on two cores, p99 commit→client 20–36 ms this way against 15–23 ms). An idle log is read
/// every `tail_interval` only.
const BUSY_READ_GAP: Duration = Duration::from_millis(1);
/// Server-sent event streams follow the reader's snapshots; each new one makes every stream
/// read its window from the log, so they are published at most this often.
const WATERMARK_EVERY: Duration = Duration::from_millis(50);
/// Backoff between reconnects of the reader's session.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The columns of one read's changes: `db::LOG_COLUMNS` (from column [`FIRST_LOG_COLUMN`])
/// and each change's transaction's last seq. Shared with the standby's read.
macro_rules! log_window_columns {
    () => {
        "c.seq, c.schema_name, c.table_name, c.op, c.commit_timestamp, c.record, c.old_record, \
         c.created_at, c.txmax"
    };
}

/// The log rows of a window, as `l` with `txmax`: `xid >= $1` (the last snapshot's xmax) or
/// `xid = ANY ($2)` (its open xids). Shared with the standby's read.
macro_rules! log_window_rows {
    () => {
        "SELECT l.*, max(l.seq) OVER (PARTITION BY l.xid) AS txmax \
         FROM (SELECT * FROM pgrelay.change_log WHERE xid >= $1::text::xid8 \
               UNION ALL \
               SELECT * FROM pgrelay.change_log WHERE xid = ANY ($2::text::xid8[])) AS l"
    };
}
pub(crate) use {log_window_columns, log_window_rows};

/// One read: the new snapshot, the switch as the statement saw it, and the rows of every
/// transaction that became visible, ordered by (last seq of their transaction, seq).
///
/// The session runs it every few milliseconds under load, with a cached generic plan (see
/// [`SESSION_OPTIONS`]). The two halves of the window (`xid >= $1`, the last snapshot's xmax;
/// `xid = ANY ($2)`, its open xids) are separate branches so that each is an index condition
/// in any plan: an `OR` of the two let a plan made while the log was empty walk the whole xid
/// index. They cannot overlap: every open xid is below xmax.
pub const READ_SQL: &str = concat!(
    "SELECT pg_current_snapshot()::text, (SELECT notify FROM pgrelay.ingest_state), ",
    log_window_columns!(),
    " FROM (SELECT 1) AS one LEFT JOIN LATERAL (",
    log_window_rows!(),
    " WHERE pg_visible_in_snapshot(l.xid, pg_current_snapshot())) c ON true \
     ORDER BY c.txmax, c.seq"
);

/// The reader session's settings (its connection's `options`). The plan of [`READ_SQL`] is
/// made once and cached, since planning each read cost three times executing it. It may be
/// made while the log is empty, when a sequential scan looks cheapest and would later read
/// the whole log on every read, so the session never chooses one. A disabled scan still costs
/// its plan 10^10 (on the one-row switch table it is the only scan there is), which made
/// PostgreSQL JIT-compile every read, 300 ms each: JIT is off, as it should be for queries
/// this small.
pub const SESSION_OPTIONS: &str =
    "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off -c jit=off";

/// The column of [`READ_SQL`] (and the standby's read) where `db::LOG_COLUMNS` start.
pub const FIRST_LOG_COLUMN: usize = 2;
/// The column that holds each change's transaction's last seq, just after the log's columns.
pub const TXMAX: usize = FIRST_LOG_COLUMN + db::LOG_COLUMN_COUNT;

/// The reader's settings.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub pg: tokio_postgres::Config,
    pub mode: IngestMode,
    pub tail_interval: Duration,
    pub tail_above: u32,
    /// `pg` is a hot standby (`PGRELAY_READ_URL`): read with [`standby`]'s windows, never
    /// write the switch (the relay sets it on the primary), tail whatever the switch says.
    pub standby: bool,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Db(#[from] db::DbError),
    #[error("unexpected snapshot text {0:?}")]
    Snapshot(String),
}

/// The change-log reader.
#[derive(Debug)]
pub struct Reader {
    pub cfg: ReaderConfig,
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
    /// Where each change goes next. Bounded: routing that falls behind makes the reader wait;
    /// the log keeps the rest.
    pub out: mpsc::Sender<Delivery>,
    /// The snapshot up to which everything has been handed on, for server-sent events.
    pub watermark: watch::Sender<Option<String>>,
    /// Whether the LISTEN session is up: without it no doorbell can ring, so the reader tails.
    pub listening: watch::Receiver<bool>,
}

/// What survives a lost session.
#[derive(Debug)]
struct State {
    /// Snapshot of the last read: everything visible in it has been handed on.
    prev: Option<String>,
    /// The switch as last read or written: true while the triggers ring.
    doorbell: bool,
    /// After turning the doorbell on: tail until a snapshot's xmin reaches this xid, i.e.
    /// until every transaction that may have read the old value has ended.
    settling_until: Option<u64>,
    /// Commit-rate bookkeeping for `adaptive`.
    rate_since: Instant,
    rate_txns: u64,
    quiet_since: Option<Instant>,
    last_watermark: Option<Instant>,
    watermark_pending: bool,
    /// The last read found changes: while they flow, the next read follows after
    /// [`BUSY_READ_GAP`] instead of the full `tail_interval`.
    busy: bool,
    /// On a standby: transactions kept open until their commit is surely replayed (see
    /// [`standby`]).
    settling: HashMap<i64, u64>,
}

impl Reader {
    /// Read until shutdown. `events` are the listener's doorbells.
    pub async fn run(self, mut events: mpsc::Receiver<Event>, mut shutdown: Shutdown) {
        let mut state = State {
            prev: None,
            doorbell: self.cfg.mode != IngestMode::Tail,
            settling_until: None,
            rate_since: Instant::now(),
            rate_txns: 0,
            quiet_since: None,
            last_watermark: None,
            watermark_pending: false,
            busy: false,
            settling: HashMap::new(),
        };
        info!(
            mode = self.cfg.mode.as_str(),
            tail_interval = ?self.cfg.tail_interval,
            tail_above = self.cfg.tail_above,
            "ingest mode {}: {}",
            self.cfg.mode.as_str(),
            match self.cfg.mode {
                _ if self.cfg.standby => "the relay reads the change log on the hot standby PGRELAY_READ_URL every tail_interval; a standby cannot LISTEN, so the triggers' doorbell is off",
                IngestMode::Adaptive => "triggers NOTIFY while writes are quiet; above tail_above commits/s the relay tails the change log instead, so notifying commits do not serialize the app's writes",
                IngestMode::Notify => "every change's transaction NOTIFYs (PGRELAY_INGEST=notify); notifying commits take a cluster-wide lock, which caps write throughput",
                IngestMode::Tail => "triggers never NOTIFY; the relay reads the change log every tail_interval (PGRELAY_INGEST=tail)",
            }
        );
        let mut backoff = BACKOFF_MIN;
        loop {
            let result = tokio::select! {
                r = self.session(&mut state, &mut events) => r,
                _ = shutdown.recv() => return,
            };
            if self.out.is_closed() {
                return;
            }
            match result {
                Ok(()) => return,
                Err(e) => warn!(cause = %e, retry_in = ?backoff, error_code = "ReaderLost",
                                "change-log reader lost its session"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.recv() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One session: connect, set the switch for the mode, then read until something fails.
    async fn session(
        &self,
        state: &mut State,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<(), ReadError> {
        let (client, conn) = self.cfg.pg.connect(NoTls).await?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                trace!(cause = %e, "reader connection ended");
            }
        });
        let _abort = AbortOnDrop(conn);
        let (read, status) = if self.cfg.standby {
            let status = client.prepare(standby::STATUS_SQL).await?;
            (client.prepare(standby::READ_SQL).await?, Some(status))
        } else {
            (client.prepare(READ_SQL).await?, None)
        };
        match &state.prev {
            None => {
                let snap = match &status {
                    // Everything in progress now is left open for the first read.
                    Some(status) => standby::statuses(&client, status, None)
                        .await?
                        .map(|s| s.window(&standby::ReadSeen::default(), &mut state.settling))
                        .ok_or_else(|| ReadError::Snapshot(String::new()))?,
                    None => {
                        let row = client
                            .query_one("SELECT pg_current_snapshot()::text", &[])
                            .await?;
                        row.try_get(0)?
                    }
                };
                state.prev = Some(snap);
                self.publish(state, true);
            }
            Some(prev) => {
                // Resuming after an outage: everything committed meanwhile is still in the log
                // unless pruning got to it first.
                if db::pruned_past(&client, prev).await? {
                    Metrics::inc(&self.metrics.gaps_total);
                    warn!(error_code = "ListenerGap",
                          "the change log was pruned past what the relay had read: changes may be missing");
                    let _ = self.out.send(Delivery::Gap).await;
                }
            }
        }
        match self.cfg.mode {
            // On a standby the switch is the primary's, set once at start.
            _ if self.cfg.standby => {}
            IngestMode::Notify => {
                self.set_doorbell(&client, state, true, "mode notify")
                    .await?
            }
            IngestMode::Tail => {
                self.set_doorbell(&client, state, false, "mode tail")
                    .await?
            }
            IngestMode::Adaptive => {}
        }
        loop {
            let read_started = Instant::now();
            self.read(&client, &read, status.as_ref(), state).await?;
            if self.cfg.mode == IngestMode::Adaptive {
                self.adapt(&client, state).await?;
            }
            let wait = self.next_wait(state, read_started.elapsed());
            let deadline = tokio::time::Instant::now() + wait;
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Doorbell) => {}
                    Some(Event::Listening { after_loss }) => {
                        if after_loss.is_some() {
                            Metrics::inc(&self.metrics.listener_reconnects_total);
                            Metrics::inc(&self.metrics.catchups_total);
                        }
                    }
                    // The listener stopped (shutdown): keep reading on the timer.
                    None => tokio::time::sleep_until(deadline).await,
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// How long to wait for a doorbell before reading anyway. `since_read`: how long ago the
    /// last read started.
    fn next_wait(&self, state: &State, since_read: Duration) -> Duration {
        let tailing = !state.doorbell
            || state.settling_until.is_some()
            || !*self.listening.borrow()
            || self.cfg.mode == IngestMode::Tail;
        let wait = if tailing && state.busy {
            self.cfg
                .tail_interval
                .min(BUSY_READ_GAP)
                .saturating_sub(since_read)
        } else if tailing {
            self.cfg.tail_interval
        } else {
            SAFETY_READ
        };
        match (state.watermark_pending, state.last_watermark) {
            (true, Some(at)) => {
                wait.min((at + WATERMARK_EVERY).saturating_duration_since(Instant::now()))
            }
            _ => wait,
        }
    }

    /// Read what became visible since `prev` and hand it on, in order.
    /// `status`: on a standby, [`standby::STATUS_SQL`], asked before the read.
    async fn read(
        &self,
        client: &Client,
        stmt: &Statement,
        status: Option<&Statement>,
        state: &mut State,
    ) -> Result<(), ReadError> {
        let prev = state.prev.as_deref().unwrap_or("");
        let (xmax, xip) = split_snapshot(prev).ok_or_else(|| ReadError::Snapshot(prev.into()))?;
        let statuses = match status {
            Some(status) => Some(
                standby::statuses(client, status, Some(prev))
                    .await?
                    .ok_or_else(|| ReadError::Snapshot(prev.into()))?,
            ),
            None => None,
        };
        let asked = Instant::now();
        let rows = client.query(stmt, &[&xmax, &xip]).await?;
        self.metrics.ingest_read.observe(asked.elapsed());
        Metrics::inc(&self.metrics.ingest_reads_total);
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let mut now: String = first.try_get(0)?;
        if let Ok(Some(flag)) = first.try_get::<_, Option<bool>>(1) {
            // Another relay (or a DBA) may have flipped it.
            state.doorbell = flag;
            self.metrics
                .ingest_tailing
                .store(u64::from(!flag), std::sync::atomic::Ordering::Relaxed);
        }
        let mut last_tx = None;
        let mut newest = None;
        let mut seen = standby::ReadSeen::default();
        for row in &rows {
            let Some(seq) = row.try_get::<_, Option<i64>>(2)? else {
                continue; // no change: the one row that only carries the snapshot
            };
            if statuses.is_some() {
                let xid: String = row.try_get(standby::XID)?;
                seen.xids.insert(
                    xid.parse::<i64>()
                        .map_err(|_| ReadError::Snapshot(xid.clone()))?,
                );
            }
            let txmax: i64 = row.try_get(TXMAX)?;
            if last_tx != Some(txmax) {
                last_tx = Some(txmax);
                state.rate_txns += 1;
            }
            let logged = db::logged(row, FIRST_LOG_COLUMN)?;
            match Change::from_log(logged, &self.catalog).await {
                Ok(change) => {
                    newest = Some(change.changed_at);
                    if self.out.send(Delivery::Change(change)).await.is_err() {
                        return Ok(()); // routing stopped: shutdown
                    }
                }
                Err(err) => {
                    Metrics::inc(&self.metrics.changes_dropped_total);
                    warn!(error_code = err.code(), cause = %err, seq, "logged change dropped");
                }
            }
        }
        if let Some(at) = newest {
            let micros = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
            self.metrics
                .newest_commit_micros
                .store(micros, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(s) = &statuses {
            let bound = |x: Option<u64>| x.and_then(|x| i64::try_from(x).ok());
            let bad = || ReadError::Snapshot(now.clone());
            seen.xmin = bound(snapshot_xmin(&now)).ok_or_else(bad)?;
            seen.xmax = bound(snapshot_xmax(&now)).ok_or_else(bad)?;
            let replayed: Option<String> = first.try_get(standby::REPLAYED)?;
            seen.replayed = replayed
                .as_deref()
                .and_then(db::standby::parse_lsn)
                .unwrap_or(0);
            now = s.window(&seen, &mut state.settling);
        }
        if let Some(until) = state.settling_until {
            if snapshot_xmin(&now).is_some_and(|xmin| xmin >= until) {
                state.settling_until = None;
            }
        }
        let changed = last_tx.is_some();
        state.busy = changed;
        state.prev = Some(now);
        self.publish(state, changed);
        Ok(())
    }

    /// Publish the new watermark to server-sent event streams, at most every
    /// [`WATERMARK_EVERY`] (a read with changes marks one as pending).
    fn publish(&self, state: &mut State, changed: bool) {
        state.watermark_pending |= changed;
        let due = state
            .last_watermark
            .is_none_or(|at| at.elapsed() >= WATERMARK_EVERY);
        if state.watermark_pending && due || state.last_watermark.is_none() {
            self.watermark.send_replace(state.prev.clone());
            state.last_watermark = Some(Instant::now());
            state.watermark_pending = false;
        } else if !state.watermark_pending
            && state
                .last_watermark
                .is_some_and(|at| at.elapsed() >= Duration::from_secs(1))
        {
            // Keep idle streams' positions fresh, so a reconnect resumes from a recent point.
            self.watermark.send_replace(state.prev.clone());
            state.last_watermark = Some(Instant::now());
        }
    }

    /// `adaptive`: turn the doorbell off under write load, back on when writes are quiet.
    async fn adapt(&self, client: &Client, state: &mut State) -> Result<(), ReadError> {
        let elapsed = state.rate_since.elapsed();
        if elapsed < Duration::from_secs(1) {
            return Ok(());
        }
        let rate = state.rate_txns as f64 / elapsed.as_secs_f64();
        state.rate_since = Instant::now();
        state.rate_txns = 0;
        let above = f64::from(self.cfg.tail_above);
        if state.doorbell && rate > above {
            state.quiet_since = None;
            let why = format!("{rate:.0} commits/s > {above}");
            self.set_doorbell(client, state, false, &why).await?;
        } else if !state.doorbell {
            if rate < above / 4.0 {
                let since = *state.quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= QUIET_FOR {
                    state.quiet_since = None;
                    let why = format!("{rate:.0} commits/s for {QUIET_FOR:?}");
                    self.set_doorbell(client, state, true, &why).await?;
                }
            } else {
                state.quiet_since = None;
            }
        }
        Ok(())
    }

    /// Write the switch. Turning it on starts a settling period (see the module doc).
    async fn set_doorbell(
        &self,
        client: &Client,
        state: &mut State,
        on: bool,
        why: &str,
    ) -> Result<(), ReadError> {
        client
            .execute(
                "UPDATE pgrelay.ingest_state SET notify = $1, changed_at = now(), changed_by = $2 \
                 WHERE notify IS DISTINCT FROM $1",
                &[&on, &why],
            )
            .await?;
        // Taken after the switch committed: every transaction that could have read the old
        // value has an xid below this xmax or none yet.
        let row = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?;
        let snap: String = row.try_get(0)?;
        let was = state.doorbell;
        state.doorbell = on;
        state.settling_until = if on { snapshot_xmax(&snap) } else { None };
        self.metrics
            .ingest_tailing
            .store(u64::from(!on), std::sync::atomic::Ordering::Relaxed);
        if was != on {
            Metrics::inc(&self.metrics.ingest_switches_total);
            info!(
                doorbell = on,
                why,
                "ingest: {}",
                if on {
                    "writes are quiet, triggers NOTIFY again"
                } else {
                    "write load, tailing the change log and triggers stop notifying"
                }
            );
        }
        Ok(())
    }
}

/// `xmin:xmax:xip,…` → (xmax, `{xip,…}`), the parameters of [`READ_SQL`].
fn split_snapshot(snap: &str) -> Option<(String, String)> {
    let mut parts = snap.split(':');
    let _xmin = parts.next()?;
    let xmax = parts.next()?;
    let xip = parts.next()?;
    if parts.next().is_some() || xmax.is_empty() {
        return None;
    }
    Some((xmax.to_owned(), format!("{{{xip}}}")))
}

fn snapshot_xmin(snap: &str) -> Option<u64> {
    snap.split(':').next()?.parse().ok()
}

fn snapshot_xmax(snap: &str) -> Option<u64> {
    snap.split(':').nth(1)?.parse().ok()
}

/// Ends the connection task with the session, so a dropped session frees its socket.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_split_into_read_parameters() {
        assert_eq!(
            split_snapshot("10:15:10,12"),
            Some(("15".into(), "{10,12}".into()))
        );
        assert_eq!(split_snapshot("15:15:"), Some(("15".into(), "{}".into())));
        assert_eq!(split_snapshot("garbage"), None);
        assert_eq!(split_snapshot("1:2:3:4"), None);
        assert_eq!(snapshot_xmin("10:15:10,12"), Some(10));
        assert_eq!(snapshot_xmax("10:15:10,12"), Some(15));
    }
}
