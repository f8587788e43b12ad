//! Watermark markers: how the relay proves which changes it has received, so that after a
//! LISTEN disconnect it can replay exactly the ones it missed.
//!
//! A marker is one statement on a pooled connection that takes a snapshot and NOTIFYs it on
//! the relay's channel. NOTIFY delivers in commit order and the marker commits after its
//! snapshot was taken, so when the marker comes back through the LISTEN session, every
//! transaction visible in that snapshot has already come through before it: that snapshot
//! becomes the watermark. Markers are sent one at a time (a lock), so they are totally
//! ordered, which the dispatcher's de-duplication relies on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tracing::debug;

use crate::db::{self, DbError};
use crate::shutdown::Shutdown;

/// Sends this relay's markers.
#[derive(Debug)]
pub struct Markers {
    pool: Pool,
    channel: String,
    /// Tells this process's markers from those of other relays on the same channel.
    pub relay_id: String,
    next: AtomicU64,
    /// Held while a marker is in flight: markers never overlap.
    sending: tokio::sync::Mutex<()>,
}

impl Markers {
    pub fn new(pool: Pool, channel: String) -> Self {
        Markers {
            pool,
            channel,
            relay_id: relay_id(),
            next: AtomicU64::new(1),
            sending: tokio::sync::Mutex::new(()),
        }
    }

    /// Send one marker; returns its number and the snapshot it carries.
    ///
    /// # Errors
    /// The database did not take the statement.
    pub async fn send(&self) -> Result<(u64, String), DbError> {
        let _one_at_a_time = self.sending.lock().await;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let snapshot = db::send_marker(&self.pool, &self.channel, &self.relay_id, n).await?;
        Ok((n, snapshot))
    }
}

/// A process-unique id: pid, start time and a counter, hex. Not secret, just distinct.
fn relay_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Send a marker every `every` until shutdown.
///
/// Lifecycle: sleeps until the next deadline; a failed marker is only logged (the LISTEN
/// session notices real outages itself) and the next one is tried on schedule.
pub async fn run(markers: std::sync::Arc<Markers>, every: Duration, mut shutdown: Shutdown) {
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.recv() => return,
        }
        next += every;
        if let Err(e) = markers.send().await {
            debug!(cause = %e, "marker not sent");
        }
        // After a long stall do not fire a burst of catch-up markers.
        let now = tokio::time::Instant::now();
        if next < now {
            next = now + every;
        }
    }
}
