//! The figures of one run: a human summary and one JSON line for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cpu::Cpu;
use crate::params::{Kind, Params};
use crate::stats::{AppStats, RecvStats};

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
    /// Every frame the relay fanned out, per second: `deliveries_per_s` plus, in `mixed`,
    /// presence diffs and `statistics` updates.
    pub(crate) deliveries_all_per_s: f64,

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
    /// Presence, relay-run holds and the live topic (`mixed` only).
    pub(crate) app: Option<AppReport>,
    pub(crate) note: Option<&'static str>,
}

/// The presence and live-topic side of `mixed`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct AppReport {
    /// Users pressing the hold button, each every `press_period_s` for `hold_s`, in turn.
    pub(crate) pressers: usize,
    pub(crate) press_period_s: f64,
    pub(crate) hold_s: f64,
    /// Target presses/s over all pressers (each: a hold start and a hold end by the relay).
    pub(crate) target_press_rate: f64,
    /// Target votes/s of the writers (0: as fast as possible).
    pub(crate) target_vote_rate: f64,
    /// Presses sent (tracks), the whole run.
    pub(crate) tracks: u64,
    /// Presses inside the window that the relay accepted, per second.
    pub(crate) tracks_per_s: f64,
    /// Releases (untracks) of presses inside the window, per second.
    pub(crate) untracks_per_s: f64,
    /// Tracks answered with an error.
    pub(crate) track_errors: u64,
    /// Holds neither released nor refused when the run ended (0 unless the relay stalled).
    pub(crate) holds_open_at_end: u64,
    /// Track sent → its ok reply (the relay has inserted the hold row), ms.
    pub(crate) hold_start_p50_ms: f64,
    pub(crate) hold_start_p99_ms: f64,
    /// Presence diffs owed to the clients for in-window presses (each press and each release
    /// to every client), received, missing, in excess.
    pub(crate) presence_expected: u64,
    pub(crate) presence_received: u64,
    pub(crate) presence_drops: u64,
    pub(crate) presence_clients_with_drops: u64,
    pub(crate) presence_extra: u64,
    pub(crate) presence_no_timestamp: u64,
    /// Presence diffs received while the window was open, per second (all clients; per client).
    pub(crate) presence_diffs_per_s: f64,
    pub(crate) presence_diffs_per_client_per_s: f64,
    /// Track sent → the diff showing the holder at each client (hold row insert included), ms.
    pub(crate) presence_latency_n: u64,
    pub(crate) presence_p50_ms: f64,
    pub(crate) presence_p95_ms: f64,
    pub(crate) presence_p99_ms: f64,
    pub(crate) presence_max_ms: f64,
    /// `statistics` updates received while the window was open, per second (all clients; per
    /// client: at most 1000 / the query's debounce, 250 ms by default).
    pub(crate) statistics_updates_per_s: f64,
    pub(crate) statistics_per_client_per_s: f64,
    /// Clients that got the current value right after joining `statistics`.
    pub(crate) statistics_initial: u64,
    /// Clients whose last update differs from most clients' last (or that got none).
    pub(crate) statistics_stale: u64,
}

impl AppReport {
    fn new(p: &Params) -> Option<AppReport> {
        let press = p.press?;
        Some(AppReport {
            pressers: press.pressers,
            press_period_s: press.period.as_secs_f64(),
            hold_s: press.hold.as_secs_f64(),
            target_press_rate: press.rate,
            target_vote_rate: press.vote_rate,
            ..AppReport::default()
        })
    }

    /// Fill from the merged stats and, per ready client, its in-window diffs and last update.
    pub(crate) fn set(&mut self, a: &AppStats, per_client: &[(u64, Option<Vec<u8>>)], secs: f64) {
        let secs = secs.max(1e-9);
        let clients = per_client.len().max(1) as f64;
        self.tracks = a.tracks;
        self.tracks_per_s = a.tracks_window as f64 / secs;
        self.untracks_per_s = a.untracks_window as f64 / secs;
        self.track_errors = a.track_errors;
        self.hold_start_p50_ms = ms(a.track_hist.quantile(0.50));
        self.hold_start_p99_ms = ms(a.track_hist.quantile(0.99));
        // Every client sees every press and every release.
        let owed = a.tracks_window + a.untracks_window;
        for (got, _) in per_client {
            self.presence_expected += owed;
            self.presence_received += got;
            self.presence_drops += owed.saturating_sub(*got);
            self.presence_extra += got.saturating_sub(owed);
            if *got < owed {
                self.presence_clients_with_drops += 1;
            }
        }
        self.presence_no_timestamp = a.diffs_no_timestamp;
        self.presence_diffs_per_s = a.diffs_during_window as f64 / secs;
        self.presence_diffs_per_client_per_s = self.presence_diffs_per_s / clients;
        self.presence_latency_n = a.diff_hist.count();
        self.presence_p50_ms = ms(a.diff_hist.quantile(0.50));
        self.presence_p95_ms = ms(a.diff_hist.quantile(0.95));
        self.presence_p99_ms = ms(a.diff_hist.quantile(0.99));
        self.presence_max_ms = ms(a.diff_hist.max());
        self.statistics_updates_per_s = a.updates_during_window as f64 / secs;
        self.statistics_per_client_per_s = self.statistics_updates_per_s / clients;
        self.statistics_initial = a.initial;
        let mut last: std::collections::HashMap<&[u8], u64> = std::collections::HashMap::new();
        for (_, u) in per_client {
            if let Some(u) = u {
                *last.entry(u.as_slice()).or_default() += 1;
            }
        }
        let most = last.values().copied().max().unwrap_or(0);
        self.statistics_stale = (per_client.len() as u64).saturating_sub(most);
    }
}

const MIXED_NOTE: &str = "mixed: every user joins polls-changes, statistics-updates and \
button-sessions (postgres_changes), button-presence (presence, keyed by the user's id) and the live \
topic statistics; the pressing users track {user_id, poll_id} on button-presence (the relay inserts \
the button_holds row) and untrack after the hold (the relay ends it), so hold starts and ends come \
from the relay; the writers only vote (INSERT user_votes). deliveries/s counts postgres_changes \
frames; deliveries_all_per_s adds presence diffs and statistics updates";

impl AppReport {
    fn human(&self, s: &mut String, users: usize, by_kind: [u64; 3]) {
        let votes = if self.target_vote_rate > 0.0 {
            format!("{:.1} votes/s", self.target_vote_rate)
        } else {
            "votes as fast as possible".into()
        };
        let _ = writeln!(
            s,
            "app load         {} of {users} users press every {:.1} s and hold {:.1} s ({:.1} presses/s, run by the relay through presence); writers: {votes}",
            self.pressers, self.press_period_s, self.hold_s, self.target_press_rate
        );
        let _ = writeln!(
            s,
            "                 in the window: hold starts {}, hold ends {}, votes {}",
            by_kind[0], by_kind[1], by_kind[2]
        );
        let _ = writeln!(
            s,
            "holds            tracks {:.1}/s accepted, untracks {:.1}/s, track errors {}, open at the end {}; track→reply (hold row inserted) p50 {:.3} ms p99 {:.3} ms",
            self.tracks_per_s,
            self.untracks_per_s,
            self.track_errors,
            self.holds_open_at_end,
            self.hold_start_p50_ms,
            self.hold_start_p99_ms
        );
        let _ = writeln!(
            s,
            "presence_diff    {:>10.1} /s   ({:.1} per client)   expected {} received {}  drops {} ({} clients short)  extra {}",
            self.presence_diffs_per_s,
            self.presence_diffs_per_client_per_s,
            self.presence_expected,
            self.presence_received,
            self.presence_drops,
            self.presence_clients_with_drops,
            self.presence_extra
        );
        let _ = writeln!(
            s,
            "press→diff       p50 {:.3} ms  p95 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (n={}; track sent → holder shown, hold row insert included)",
            self.presence_p50_ms,
            self.presence_p95_ms,
            self.presence_p99_ms,
            self.presence_max_ms,
            self.presence_latency_n
        );
        let _ = writeln!(
            s,
            "statistics       {:>10.1} /s   ({:.2} per client; ≤ 4 with the 250 ms debounce)   value on join {}/{users}, stale at the end {}",
            self.statistics_updates_per_s,
            self.statistics_per_client_per_s,
            self.statistics_initial,
            self.statistics_stale
        );
    }
}

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
            deliveries_all_per_s: 0.0,
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
            app: AppReport::new(p),
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
        if let Some(a) = &self.app {
            a.human(&mut s, self.clients, self.committed_by_kind);
            let _ = writeln!(
                s,
                "deliveries, all  {:>10.1} /s   (postgres_changes {:.1} + presence_diff {:.1} + statistics {:.1})",
                self.deliveries_all_per_s,
                self.deliveries_per_s,
                a.presence_diffs_per_s,
                a.statistics_updates_per_s
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
