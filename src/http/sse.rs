//! Server-sent events: `GET /api/v1/changes?schema=…&table=…&event=…&filter=…`, a
//! `text/event-stream` of changes that a browser `EventSource` resumes with `Last-Event-ID`
//! across reconnects and relay restarts, without losing or repeating a change.
//!
//! The stream is read from the change log, one watermark window at a time: when the relay's
//! watermark advances from `lo` to `hi`, every change committed in between is known and is
//! sent in the order the change-log reader uses (transactions by their last `seq`, then `seq`). An
//! event's id names its place in that order: `lo/hi/txmax/seq`; after each window an id-only
//! message moves the client's position to `hi`. A resumed position is therefore exact, in this
//! process or any other: the window is re-read from the log and the events up to the id are
//! skipped. The price is a little latency: an event leaves at the reader's next watermark (at
//! most every 50 ms while changes flow), not the instant it commits. A stream opened without
//! an id starts at a snapshot taken when it connects.

use std::convert::Infallible;
use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tracing::debug;
use warp::sse::Event;

use crate::db::{self, DbError};
use crate::ingest::change::{Catalog, Change};
use crate::ingest::GAP_MESSAGE;
use crate::realtime::channel;
use crate::route::bindings::NewBinding;

/// Events buffered per SSE client; a client that falls this far behind blocks only its own
/// reader task (which then reads the log later, losing nothing).
const BUFFER: usize = 256;

/// Where a client is in the change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Everything visible in this snapshot has been sent.
    pub lo: String,
    /// Inside the window (lo, hi]: events up to (txmax, seq) have been sent.
    pub within: Option<(String, i64, i64)>,
}

impl Position {
    /// Parse a `Last-Event-ID`. Snapshots are checked for shape here; the database parses them.
    pub fn parse(id: &str) -> Option<Position> {
        let parts: Vec<&str> = id.trim().split('/').collect();
        match parts.as_slice() {
            [lo] if is_snapshot(lo) => Some(Position {
                lo: (*lo).to_owned(),
                within: None,
            }),
            [lo, hi, txmax, seq] if is_snapshot(lo) && is_snapshot(hi) => Some(Position {
                lo: (*lo).to_owned(),
                within: Some(((*hi).to_owned(), txmax.parse().ok()?, seq.parse().ok()?)),
            }),
            _ => None,
        }
    }
}

/// `xmin:xmax:xip,xip,…` as `pg_snapshot` prints it.
fn is_snapshot(s: &str) -> bool {
    let mut parts = s.splitn(3, ':');
    let num =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let (a, b, c) = (parts.next(), parts.next(), parts.next());
    num(a)
        && num(b)
        && c.is_some_and(|c| {
            s.len() <= 4096 && (c.is_empty() || c.split(',').all(|x| num(Some(x))))
        })
}

/// Why a stream cannot start (answered with 400 and `{"error": …}`).
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("{0}")]
    Binding(String),
    #[error("invalid Last-Event-ID")]
    BadLastEventId,
}

/// Validate the query (the same rules and texts as a `postgres_changes` binding).
pub async fn binding_from_query(
    catalog: &Catalog,
    query: &std::collections::HashMap<String, String>,
    access: Option<channel::Access<'_>>,
) -> Result<NewBinding, SseError> {
    let mut b = Map::new();
    for key in ["event", "schema", "table", "filter"] {
        if let Some(v) = query.get(key) {
            b.insert(key.into(), Value::String(v.clone()));
        }
    }
    b.entry("event")
        .or_insert_with(|| Value::String("*".into()));
    let mut bindings = channel::validate(catalog, &[b], &[1], access)
        .await
        .map_err(SseError::Binding)?;
    bindings
        .pop()
        .ok_or_else(|| SseError::Binding("no binding".into()))
}

/// Feed `tx` with the events of `binding` from `start` on, until the client goes away.
pub async fn stream(
    pool: Pool,
    catalog: Arc<Catalog>,
    binding: NewBinding,
    start: Option<Position>,
    mut watermark: watch::Receiver<Option<String>>,
    tx: mpsc::Sender<Event>,
) {
    if let Err(e) = feed(&pool, &catalog, &binding, start, &mut watermark, &tx).await {
        debug!(cause = %e, "event stream ended");
        let _ = tx
            .send(system_event("error", &format!("stream interrupted: {e}")))
            .await;
    }
}

#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("client gone")]
    Gone,
    #[error("the relay is stopping")]
    Stopping,
}

async fn feed(
    pool: &Pool,
    catalog: &Catalog,
    binding: &NewBinding,
    start: Option<Position>,
    watermark: &mut watch::Receiver<Option<String>>,
    tx: &mpsc::Sender<Event>,
) -> Result<(), FeedError> {
    let mut pos = match start {
        Some(p) => {
            let client = db::client(pool).await?;
            if db::pruned_past(&client, &p.lo).await? {
                send(tx, system_event("error", GAP_MESSAGE)).await?;
            }
            // A position from another process (or one that is ahead of this relay's last
            // watermark) is only safe to continue from a snapshot taken after the client got
            // it: wait for this relay's next watermark.
            watermark.borrow_and_update();
            p
        }
        None => {
            // A fresh stream starts where it connects: at a snapshot of its own, not at the
            // reader's last watermark, which may be older.
            let client = db::client(pool).await?;
            let lo: String = client
                .query_one("SELECT pg_current_snapshot()::text", &[])
                .await
                .map_err(db::DbError::from)?
                .try_get(0)
                .map_err(db::DbError::from)?;
            watermark.borrow_and_update();
            send(tx, Event::default().id(lo.clone())).await?;
            Position { lo, within: None }
        }
    };
    if let Some((hi, txmax, seq)) = pos.within.take() {
        send_window(pool, catalog, binding, &pos.lo, &hi, Some((txmax, seq)), tx).await?;
        pos.lo = hi;
    }
    loop {
        let hi = next_watermark(watermark, Some(&pos.lo)).await?;
        send_window(pool, catalog, binding, &pos.lo, &hi, None, tx).await?;
        pos.lo = hi;
    }
}

/// Wait for a watermark that differs from `current`.
async fn next_watermark(
    watermark: &mut watch::Receiver<Option<String>>,
    current: Option<&str>,
) -> Result<String, FeedError> {
    loop {
        {
            let w = watermark.borrow_and_update();
            if let Some(w) = w.as_deref() {
                if Some(w) != current {
                    return Ok(w.to_owned());
                }
            }
        }
        watermark.changed().await.map_err(|_| FeedError::Stopping)?;
    }
}

/// Send the window (lo, hi] after `skip_to`, then an id-only event moving the client to `hi`.
async fn send_window(
    pool: &Pool,
    catalog: &Catalog,
    binding: &NewBinding,
    lo: &str,
    hi: &str,
    skip_to: Option<(i64, i64)>,
    tx: &mpsc::Sender<Event>,
) -> Result<(), FeedError> {
    for (txmax, row) in db::read_window_keyed(pool, lo, hi).await? {
        let key = (txmax, row.seq);
        if skip_to.is_some_and(|s| key <= s) {
            continue;
        }
        let change = match Change::from_log(row, catalog).await {
            Ok(c) => c,
            Err(e) => {
                debug!(cause = %e, "logged change skipped");
                continue;
            }
        };
        if !binding.matches(&change) {
            continue;
        }
        let event = Event::default()
            .id(format!("{lo}/{hi}/{txmax}/{}", change.seq))
            .data(binding.data(&change));
        send(tx, event).await?;
    }
    send(tx, Event::default().id(hi.to_owned())).await
}

async fn send(tx: &mpsc::Sender<Event>, e: Event) -> Result<(), FeedError> {
    tx.send(e).await.map_err(|_| FeedError::Gone)
}

pub(crate) fn system_event(status: &str, message: &str) -> Event {
    let payload = serde_json::json!({"extension": "system", "status": status, "message": message});
    Event::default().event("system").data(payload.to_string())
}

/// The body stream for warp: events from the feeder task.
pub fn body(
    rx: mpsc::Receiver<Event>,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + Sync + 'static {
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

/// The feeder's channel capacity.
pub fn channel() -> (mpsc::Sender<Event>, mpsc::Receiver<Event>) {
    mpsc::channel(BUFFER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        assert_eq!(
            Position::parse("10:20:12,15"),
            Some(Position {
                lo: "10:20:12,15".into(),
                within: None
            })
        );
        assert_eq!(
            Position::parse("10:20:/21:22:/19/18"),
            Some(Position {
                lo: "10:20:".into(),
                within: Some(("21:22:".into(), 19, 18))
            })
        );
        for bad in [
            "",
            "x",
            "1:2",
            "1:2:3/4",
            "1:2:/3:4:/x/1",
            "1:2:a",
            "1:2:3,,4",
            "'; drop",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }
}
