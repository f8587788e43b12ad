//! The one dedicated LISTEN session: connect, `LISTEN`, read notifications continuously, probe
//! for liveness, and reconnect with capped backoff.
//!
//! A notification is only a doorbell: it tells the change-log reader to read now. Its payload
//! is ignored, because any role that can connect can NOTIFY on our channel; what is delivered
//! is read from the change log. Doorbells are coalesced: while one is waiting to be handled,
//! more add nothing, so a flood of forged notifications costs reads of the log, back to back
//! at most, and never a growing buffer.
//!
//! tokio-postgres's `Connection` future drops notifications when simply awaited, so this module
//! drives `poll_message` itself and treats `None`/`Err` as the end of the session. The session
//! is never taken from the pool and never runs a transaction or a write: an open transaction
//! would pin the cluster-wide NOTIFY queue, and a session receives its own notifications.
//!
//! Lifecycle: `run` loops over sessions until shutdown. Each session ends on a connection
//! error, a failed probe, or shutdown. Every successful `LISTEN` is reported downstream as
//! [`Event::Listening`], so the reader reads at once what committed while no one listened.

use std::future::poll_fn;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{info, trace, warn};

use crate::shutdown::Shutdown;

/// What the listener hands to the change-log reader, in order.
#[derive(Debug)]
pub enum Event {
    /// Something was committed: read the change log.
    Doorbell,
    /// LISTEN is active. `after_loss` is how long no session was listening, when this one
    /// replaces a lost one; `None` for the first session.
    Listening { after_loss: Option<Duration> },
}

/// Errors that end one LISTEN session.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("liveness probe got no answer within {0:?}")]
    ProbeTimeout(Duration),
}

/// Above this fraction of `pg_notification_queue_usage()` the probe logs a warning.
const QUEUE_USAGE_WARNING: f64 = 0.10;

/// Backoff between reconnect attempts: fast first, capped so a long outage costs little.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The listener's configuration.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub pg: tokio_postgres::Config,
    /// Validated identifier (`config::parse_channel`).
    pub channel: String,
    pub probe_every: Duration,
}

/// Run LISTEN sessions until shutdown. `listening` is set true while LISTEN is active.
pub async fn run(
    cfg: ListenerConfig,
    tx: mpsc::Sender<Event>,
    listening: watch::Sender<bool>,
    mut shutdown: Shutdown,
) {
    let mut backoff = BACKOFF_MIN;
    let mut down_since: Option<Instant> = None;
    loop {
        let result = tokio::select! {
            r = session(&cfg, &tx, &listening, &mut down_since, &mut backoff) => r,
            _ = shutdown.recv() => return,
        };
        let _ = listening.send(false);
        if tx.is_closed() {
            return;
        }
        match result {
            Ok(()) => return,
            Err(err) => {
                down_since.get_or_insert_with(Instant::now);
                warn!(cause = %err, retry_in = ?backoff, error_code = "ListenerLost", "listen session lost");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.recv() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One session: connect, LISTEN, then read until something fails.
async fn session(
    cfg: &ListenerConfig,
    tx: &mpsc::Sender<Event>,
    listening: &watch::Sender<bool>,
    down_since: &mut Option<Instant>,
    backoff: &mut Duration,
) -> Result<(), ListenError> {
    let (client, mut conn) = cfg.pg.connect(NoTls).await?;
    let driver = async {
        loop {
            match poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    trace!(pid = n.process_id(), "doorbell");
                    match tx.try_send(Event::Doorbell) {
                        // Full: a doorbell is already waiting, and one read covers both.
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                    }
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    info!(severity = n.severity(), "postgres notice: {}", n.message())
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ListenError::Postgres(e)),
                None => return Err(ListenError::Closed),
            }
        }
    };

    let control = async {
        client
            .batch_execute(&format!("LISTEN {}", cfg.channel))
            .await?;
        let _ = listening.send(true);
        *backoff = BACKOFF_MIN;
        let after_loss = down_since.take().map(|since| since.elapsed());
        if tx.send(Event::Listening { after_loss }).await.is_err() {
            return Ok(());
        }
        info!(channel = %cfg.channel, "listening");
        loop {
            tokio::time::sleep(cfg.probe_every).await;
            trace!("probing listen session");
            // The probe is read-only and doubles as the NOTIFY queue's health check.
            let probe = client.query_one("SELECT pg_notification_queue_usage()", &[]);
            match tokio::time::timeout(cfg.probe_every, probe).await {
                Ok(r) => {
                    let usage: f64 = r?.try_get(0)?;
                    if usage > QUEUE_USAGE_WARNING {
                        warn!(usage, error_code = "NotifyQueueFilling",
                              "the cluster-wide NOTIFY queue is filling: a listener somewhere is not reading (or a transaction on its session stays open); notifying commits fail when it is full");
                    }
                }
                Err(_) => return Err(ListenError::ProbeTimeout(cfg.probe_every)),
            }
        }
    };

    tokio::select! {
        r = driver => r,
        r = control => r,
    }
}
