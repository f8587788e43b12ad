//! The figures of one run: a human summary and one JSON line for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::clients::RecvStats;
use crate::run::{Kind, Params};

/// CPU over the window, in % of one core.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Cpu {
    pub(crate) relay: Option<f64>,
    /// Every `postgres` process (server, backends, WAL writer, …).
    pub(crate) postgres: Option<f64>,
    /// This load generator.
    pub(crate) bench: Option<f64>,
    /// The whole machine (100 % per core).
    pub(crate) machine: Option<f64>,
    /// The machine less the three above: other work on the machine, which disturbs the run.
    pub(crate) other: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) label: Option<String>,
    pub(crate) workload: &'static str,
    /// The writers' `synchronous_commit` (`null`: the server's setting).
    pub(crate) synchronous_commit: Option<String>,
    pub(crate) clients: usize,
    /// Clients subscribed and measured (1 for the baseline's LISTEN session).
    pub(crate) ready: u64,
    pub(crate) writers: usize,
    /// Target changes/s; 0: as fast as possible.
    pub(crate) target_rate: f64,
    pub(crate) polls: usize,
    pub(crate) duration_s: f64,
    pub(crate) warmup_s: f64,
    pub(crate) window_s: f64,
    pub(crate) setup_s: f64,
    pub(crate) drain_s: f64,
    pub(crate) load_before: Option<f64>,

    /// Changes committed inside the window.
    pub(crate) committed: u64,
    /// …of which hold starts, hold ends, votes.
    pub(crate) committed_by_kind: [u64; 3],
    /// Changes committed in the whole run (warmup and window).
    pub(crate) committed_all: u64,
    pub(crate) committed_per_s: f64,
    pub(crate) vote_conflicts: u64,

    /// Frames owed to ready clients for in-window changes.
    pub(crate) expected: u64,
    /// Frames received for in-window changes.
    pub(crate) received: u64,
    pub(crate) drops: u64,
    pub(crate) clients_with_drops: u64,
    /// Received beyond what was owed (duplicates).
    pub(crate) extra: u64,
    /// Change frames received while the window was open, per second.
    pub(crate) deliveries_per_s: f64,
    /// Changes delivered per second, per subscriber-equivalent: received / expected ×
    /// committed/s. Compares with the baseline's notifications/s.
    pub(crate) delivered_changes_per_s: f64,

    pub(crate) latency_n: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,

    pub(crate) cpu: Cpu,
    pub(crate) rss_before_kib: Option<u64>,
    pub(crate) rss_ready_kib: Option<u64>,
    pub(crate) rss_end_kib: Option<u64>,
    pub(crate) rss_peak_kib: Option<u64>,
    /// (RSS with every client joined − RSS before any) / clients, KiB.
    pub(crate) rss_per_conn_kib: Option<f64>,

    pub(crate) join_failures: u64,
    pub(crate) client_errors: u64,
    pub(crate) transport_errors: u64,
    /// Connections the relay closed before the end…
    pub(crate) closes: u64,
    /// …of which with 1008 (slow consumer).
    pub(crate) cutoffs: u64,
    pub(crate) write_errors: u64,
    pub(crate) relay_warnings: u64,
    pub(crate) no_timestamp: u64,
    pub(crate) first_setup_error: Option<String>,
    pub(crate) first_client_error: Option<String>,
    pub(crate) first_write_error: Option<String>,
    pub(crate) note: Option<&'static str>,
}

const MIXED_NOTE: &str = "mixed covers postgres_changes only: presence (button-presence) and live \
aggregate topics are not implemented by the relay yet, so their traffic is not part of this load";

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    pub(crate) fn new(p: &Params) -> Report {
        Report {
            scenario: p.kind.as_str(),
            label: p.label.clone(),
            workload: p.workload.as_str(),
            synchronous_commit: p.synchronous_commit.clone(),
            clients: p.clients,
            ready: 0,
            writers: p.writers,
            target_rate: p.rate,
            polls: p.polls,
            duration_s: p.duration.as_secs_f64(),
            warmup_s: p.warmup.as_secs_f64(),
            window_s: 0.0,
            setup_s: 0.0,
            drain_s: 0.0,
            load_before: None,
            committed: 0,
            committed_by_kind: [0; 3],
            committed_all: 0,
            committed_per_s: 0.0,
            vote_conflicts: 0,
            expected: 0,
            received: 0,
            drops: 0,
            clients_with_drops: 0,
            extra: 0,
            deliveries_per_s: 0.0,
            delivered_changes_per_s: 0.0,
            latency_n: 0,
            p50_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
            mean_ms: 0.0,
            cpu: Cpu::default(),
            rss_before_kib: None,
            rss_ready_kib: None,
            rss_end_kib: None,
            rss_peak_kib: None,
            rss_per_conn_kib: None,
            join_failures: 0,
            client_errors: 0,
            transport_errors: 0,
            closes: 0,
            cutoffs: 0,
            write_errors: 0,
            relay_warnings: 0,
            no_timestamp: 0,
            first_setup_error: None,
            first_client_error: None,
            first_write_error: None,
            note: (p.kind == Kind::Mixed).then_some(MIXED_NOTE),
        }
    }

    /// Fill the delivery figures from the merged receiver stats (after the counts are set).
    pub(crate) fn set_recv(&mut self, r: &RecvStats) {
        let secs = self.duration_s.max(1e-9);
        self.received = r.window;
        self.no_timestamp = r.no_timestamp;
        self.committed_per_s = self.committed as f64 / secs;
        self.deliveries_per_s = r.during_window as f64 / secs;
        self.delivered_changes_per_s = if self.expected > 0 {
            self.committed_per_s * (self.received.min(self.expected) as f64 / self.expected as f64)
        } else {
            0.0
        };
        self.latency_n = r.hist.count();
        self.p50_ms = ms(r.hist.quantile(0.50));
        self.p95_ms = ms(r.hist.quantile(0.95));
        self.p99_ms = ms(r.hist.quantile(0.99));
        self.max_ms = ms(r.hist.max());
        self.mean_ms = r.hist.mean() / 1000.0;
        if let (Some(before), Some(ready)) = (self.rss_before_kib, self.rss_ready_kib) {
            if self.ready > 0 && self.scenario != "baseline" {
                self.rss_per_conn_kib =
                    Some(ready.saturating_sub(before) as f64 / self.ready as f64);
            }
        }
    }

    pub(crate) fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub(crate) fn human(&self) -> String {
        let mut s = String::new();
        let rate = if self.target_rate > 0.0 {
            format!("{} changes/s", self.target_rate)
        } else {
            "as fast as possible".into()
        };
        let who = if self.scenario == "baseline" {
            "1 LISTEN session, no relay".to_owned()
        } else {
            format!("{} clients ({} subscribed)", self.clients, self.ready)
        };
        let sync = self
            .synchronous_commit
            .as_ref()
            .map_or_else(String::new, |s| format!(", synchronous_commit={s}"));
        let _ = writeln!(
            s,
            "== {}: {who}, {} writers ({} load{sync}) at {rate}, {} polls, {:.1} s measured after {:.1} s warmup",
            self.scenario, self.writers, self.workload, self.polls, self.window_s, self.warmup_s
        );
        if self.writers > 0 {
            let _ = writeln!(
                s,
                "committed        {:>10} changes in the window  {:>10.1} changes/s",
                self.committed, self.committed_per_s
            );
            let _ = writeln!(
                s,
                "deliveries       {:>10.1} /s   delivered changes {:.1} /s",
                self.deliveries_per_s, self.delivered_changes_per_s
            );
            let _ = writeln!(
                s,
                "completeness     expected {} received {}  drops {} ({} receivers short)  extra {}",
                self.expected, self.received, self.drops, self.clients_with_drops, self.extra
            );
            let _ = writeln!(
                s,
                "commit→client    p50 {:.3} ms  p95 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (n={})",
                self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms, self.latency_n
            );
        }
        let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} %"));
        let mib = |v: Option<u64>| {
            v.map_or_else(|| "-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0))
        };
        if self.scenario != "baseline" {
            let _ = writeln!(
                s,
                "relay            CPU {} of one core   RSS before clients {}, joined {}, end {}, peak {}",
                pct(self.cpu.relay),
                mib(self.rss_before_kib),
                mib(self.rss_ready_kib),
                mib(self.rss_end_kib),
                mib(self.rss_peak_kib)
            );
            if let Some(per) = self.rss_per_conn_kib {
                let _ = writeln!(s, "relay RSS        {per:.1} KiB per joined connection");
            }
        }
        let _ = writeln!(
            s,
            "machine          CPU {} (postgres {}, load generator {}, other processes {}; 100 % = one core)",
            pct(self.cpu.machine),
            pct(self.cpu.postgres),
            pct(self.cpu.bench),
            pct(self.cpu.other)
        );
        let _ = writeln!(
            s,
            "errors           join failures {}, client errors {}, transport {}, closes {} (1008 slow consumer: {}), write errors {}, relay warnings {}, frames without timestamp {}",
            self.join_failures,
            self.client_errors,
            self.transport_errors,
            self.closes,
            self.cutoffs,
            self.write_errors,
            self.relay_warnings,
            self.no_timestamp
        );
        for (what, e) in [
            ("setup", &self.first_setup_error),
            ("client", &self.first_client_error),
            ("write", &self.first_write_error),
        ] {
            if let Some(e) = e {
                let _ = writeln!(s, "first {what} error: {e}");
            }
        }
        if let Some(n) = self.note {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}
