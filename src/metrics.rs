//! Relay figures, kept as atomics on the hot path and rendered in the Prometheus text format
//! at `/metrics`.
//!
//! Counters only ever increase; gauges are read at scrape time. Nothing here takes a lock, so
//! recording a figure never slows delivery.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the commit→send latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds (integer so it can be an atomic).
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // Only the first bucket that fits is incremented; rendering accumulates.
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every figure the relay keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub joins_total: AtomicU64,
    pub changes_total: AtomicU64,
    pub changes_dropped_total: AtomicU64,
    pub deliveries_total: AtomicU64,
    pub cutoffs_total: AtomicU64,
    /// Joins and pushes refused by the per-socket rate limits.
    pub rate_limited_total: AtomicU64,
    /// REST broadcast messages refused by the per-caller limits (counted per message).
    pub broadcasts_refused_total: AtomicU64,
    /// REST broadcast messages a subscriber skipped because its queue was half full.
    pub broadcasts_shed_total: AtomicU64,
    pub listener_reconnects_total: AtomicU64,
    pub catchups_total: AtomicU64,
    pub catchup_changes_total: AtomicU64,
    pub gaps_total: AtomicU64,
    /// Broadcasts handed to Redis for the other relays.
    pub cluster_broadcasts_sent_total: AtomicU64,
    /// Broadcasts from other relays delivered here.
    pub cluster_broadcasts_received_total: AtomicU64,
    /// Broadcasts that reached this relay's clients only: Redis was down or the queue full.
    pub cluster_broadcasts_dropped_total: AtomicU64,
    /// Times Redis became unreachable.
    pub cluster_outages_total: AtomicU64,
    /// 1 while Redis answers, else 0.
    pub cluster_up: AtomicU64,
    /// Reads of the change log (every delivered change comes from one).
    pub ingest_reads_total: AtomicU64,
    /// Times `adaptive` turned the triggers' doorbell off or on.
    pub ingest_switches_total: AtomicU64,
    /// 1 while the relay tails the change log with the doorbell off, else 0.
    pub ingest_tailing: AtomicU64,
    /// `commit_timestamp` of the newest change handed to routing, in µs since the epoch.
    pub newest_commit_micros: AtomicU64,
    /// Most frames ever waiting in one socket's queue.
    pub queue_high_water: AtomicU64,
    pub commit_to_send: Histogram,
    /// How long each read of the change log took, from sending the query to the last row.
    pub ingest_read: Histogram,
    /// 1 when changes are read from a standby (`PGRELAY_READ_URL`): the replica figures below
    /// are rendered only then.
    pub replica: AtomicU64,
    /// How long ago the primary first had WAL the standby has not replayed, in µs.
    pub replica_lag_micros: AtomicU64,
    /// WAL bytes between the primary's position and the standby's replay position.
    pub replica_lag_bytes: AtomicU64,
}

/// Figures read at scrape time rather than counted.
#[derive(Debug, Default)]
pub struct Gauges {
    pub connections: usize,
    pub channels: usize,
    pub bindings: usize,
    pub listening: bool,
    /// `pg_notification_queue_usage()`, when the database answered.
    pub notification_queue_usage: Option<f64>,
    /// Backends waiting for the cluster-wide NOTIFY commit lock, when the database answered.
    pub notify_lock_waiters: Option<u64>,
    /// `PGRELAY_INGEST`.
    pub ingest_mode: &'static str,
    /// With `PGRELAY_REDIS_URL`: the other relays seen alive, and the presences mirrored
    /// from them.
    pub cluster: Option<ClusterGauges>,
}

/// Figures of a relay sharing Redis with others.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterGauges {
    pub peers: usize,
    pub remote_presences: usize,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every figure.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        gauge(
            &mut out,
            "pgrelay_connections",
            "Open WebSocket connections.",
            g.connections as f64,
        );
        gauge(
            &mut out,
            "pgrelay_channels",
            "Joined channels holding postgres_changes bindings.",
            g.channels as f64,
        );
        gauge(
            &mut out,
            "pgrelay_bindings",
            "Distinct bindings in the router (shared ones count once).",
            g.bindings as f64,
        );
        gauge(
            &mut out,
            "pgrelay_listening",
            "1 while the LISTEN session is active.",
            f64::from(u8::from(g.listening)),
        );
        if let Some(u) = g.notification_queue_usage {
            gauge(
                &mut out,
                "pgrelay_pg_notification_queue_usage",
                "pg_notification_queue_usage(): fraction of the cluster-wide NOTIFY queue in use.",
                u,
            );
        }
        if let Some(w) = g.notify_lock_waiters {
            gauge(
                &mut out,
                "pgrelay_notify_lock_waiters",
                "Backends waiting for the cluster-wide lock that notifying commits take (pg_locks, object 1262/0).",
                w as f64,
            );
        }
        let _ = writeln!(
            out,
            "# HELP pgrelay_ingest_mode PGRELAY_INGEST: 1 for the mode in use."
        );
        let _ = writeln!(out, "# TYPE pgrelay_ingest_mode gauge");
        for mode in ["adaptive", "notify", "tail"] {
            let _ = writeln!(
                out,
                "pgrelay_ingest_mode{{mode=\"{mode}\"}} {}",
                u8::from(mode == g.ingest_mode)
            );
        }
        gauge(
            &mut out,
            "pgrelay_ingest_tailing",
            "1 while the relay tails the change log with the triggers' NOTIFY off, 0 while they notify.",
            self.ingest_tailing.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "pgrelay_ingest_reads_total",
            "Reads of the change log (rate: tail polls per second).",
            &self.ingest_reads_total,
        );
        counter(
            &mut out,
            "pgrelay_ingest_switches_total",
            "Times the adaptive ingest turned the triggers' NOTIFY off or on.",
            &self.ingest_switches_total,
        );
        // NaN until a change has been delivered: there is no newest change to be late with.
        let newest = self.newest_commit_micros.load(Ordering::Relaxed);
        let lag = if newest > 0 {
            let now = chrono::Utc::now().timestamp_micros() as f64;
            ((now - newest as f64) / 1e6).max(0.0)
        } else {
            f64::NAN
        };
        gauge(
            &mut out,
            "pgrelay_ingest_lag_seconds",
            "Now minus the commit time of the newest change handed to routing (NaN before the first).",
            lag,
        );
        gauge(
            &mut out,
            "pgrelay_socket_queue_high_water",
            "Most frames ever waiting in one socket's queue.",
            self.queue_high_water.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "pgrelay_connections_total",
            "WebSocket connections accepted.",
            &self.connections_total,
        );
        counter(
            &mut out,
            "pgrelay_joins_total",
            "Channel joins answered ok.",
            &self.joins_total,
        );
        counter(
            &mut out,
            "pgrelay_changes_total",
            "Row changes received from PostgreSQL and routed.",
            &self.changes_total,
        );
        counter(
            &mut out,
            "pgrelay_changes_dropped_total",
            "Notifications that could not be decoded (see logs).",
            &self.changes_dropped_total,
        );
        counter(
            &mut out,
            "pgrelay_deliveries_total",
            "postgres_changes frames queued to sockets.",
            &self.deliveries_total,
        );
        counter(
            &mut out,
            "pgrelay_cutoffs_total",
            "Sockets cut off because their queue was full.",
            &self.cutoffs_total,
        );
        counter(
            &mut out,
            "pgrelay_rate_limited_total",
            "Joins and messages refused by the per-socket rate limits.",
            &self.rate_limited_total,
        );
        counter(
            &mut out,
            "pgrelay_broadcasts_refused_total",
            "REST broadcast messages refused by the per-request and per-caller limits.",
            &self.broadcasts_refused_total,
        );
        counter(
            &mut out,
            "pgrelay_broadcasts_shed_total",
            "REST broadcast messages not queued to a subscriber whose queue was half full.",
            &self.broadcasts_shed_total,
        );
        counter(
            &mut out,
            "pgrelay_listener_reconnects_total",
            "LISTEN sessions re-established after a loss.",
            &self.listener_reconnects_total,
        );
        counter(
            &mut out,
            "pgrelay_catchups_total",
            "Reads of the change log right after the LISTEN session came back.",
            &self.catchups_total,
        );
        counter(
            &mut out,
            "pgrelay_catchup_changes_total",
            "Changes delivered by those reads.",
            &self.catchup_changes_total,
        );
        counter(
            &mut out,
            "pgrelay_gaps_total",
            "Times channels were told changes may be missing.",
            &self.gaps_total,
        );
        if let Some(c) = g.cluster {
            self.render_cluster(&mut out, c);
        }
        self.commit_to_send.render(
            &mut out,
            "pgrelay_commit_to_send_seconds",
            "Time from the row change (commit_timestamp) to its frames being queued.",
        );
        self.ingest_read.render(
            &mut out,
            "pgrelay_ingest_read_seconds",
            "Time one read of the change log took, from sending the query to its last row.",
        );
        if self.replica.load(Ordering::Relaxed) == 1 {
            gauge(
                &mut out,
                "pgrelay_replica_lag_seconds",
                "How long ago the primary first had WAL that the standby (PGRELAY_READ_URL) has not replayed; 0 when caught up, even if the primary is idle.",
                self.replica_lag_micros.load(Ordering::Relaxed) as f64 / 1e6,
            );
            gauge(
                &mut out,
                "pgrelay_replica_lag_bytes",
                "WAL bytes the standby (PGRELAY_READ_URL) has yet to replay.",
                self.replica_lag_bytes.load(Ordering::Relaxed) as f64,
            );
        }
        out
    }
}

impl Metrics {
    fn render_cluster(&self, out: &mut String, c: ClusterGauges) {
        let line = |out: &mut String, name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        };
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64;
        line(
            out,
            "pgrelay_redis_up",
            "gauge",
            "1 while Redis answers, else 0 (each relay then serves its own clients only).",
            load(&self.cluster_up),
        );
        line(
            out,
            "pgrelay_redis_outages_total",
            "counter",
            "Times Redis became unreachable.",
            load(&self.cluster_outages_total),
        );
        line(
            out,
            "pgrelay_cluster_peers",
            "gauge",
            "Other relays seen alive through Redis.",
            c.peers as f64,
        );
        line(
            out,
            "pgrelay_cluster_remote_presences",
            "gauge",
            "Presences tracked on other relays, mirrored here.",
            c.remote_presences as f64,
        );
        line(
            out,
            "pgrelay_cluster_broadcasts_sent_total",
            "counter",
            "Broadcasts handed to Redis for the other relays.",
            load(&self.cluster_broadcasts_sent_total),
        );
        line(
            out,
            "pgrelay_cluster_broadcasts_received_total",
            "counter",
            "Broadcasts from other relays delivered here.",
            load(&self.cluster_broadcasts_received_total),
        );
        line(out, "pgrelay_cluster_broadcasts_dropped_total", "counter", "Broadcasts that reached this relay's clients only (Redis down or the queue to it full).", load(&self.cluster_broadcasts_dropped_total));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }
}
