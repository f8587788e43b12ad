//! The figures of each run, and the table over runs.

use super::{ClusterOpts, Lat, Run};

pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

pub(super) fn human(rep: usize, r: &Run) -> String {
    let lat = |l: &Lat| {
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
            l.p50, l.p99, l.max, l.n
        )
    };
    let pres = |v: &[f64]| format!("median {:.1} ms  max {:.1} ms", median(v), max(v));
    let mut s = format!(
        "== cluster run {rep}: {} + {} clients on relays A + B, {} sent ({:.0}/s)\n",
        r.ready[0], r.ready[1], r.sent, r.send_rate
    );
    s += &format!("cross-relay      {}\n", lat(&r.cross));
    s += &format!("same-relay       {}\n", lat(&r.same));
    s += &format!(
        "completeness     expected {} delivered {}  missing {}  duplicates {}  out of order {}\n",
        r.expected,
        r.delivered,
        r.expected.saturating_sub(r.delivered),
        r.duplicates,
        r.out_of_order
    );
    s += &format!(
        "CPU              relay A {:.0} %, relay B {:.0} %, load generator {:.0} %, redis-server {:.0} % (of one core); machine {:.0} %\n",
        r.relay_cpu[0], r.relay_cpu[1], r.bench_cpu, r.redis_cpu, r.machine_cpu
    );
    s += &format!(
        "presence join   {}  (A tracks → B's diff)\n",
        pres(&r.join_ms)
    );
    s += &format!(
        "presence leave  {}  (A untracks → B's diff)\n",
        pres(&r.leave_ms)
    );
    s += &format!(
        "presence kill   {}  (SIGKILL of C → B's diff; C's join: {})\n",
        pres(&r.kill_ms),
        pres(&r.fresh_join_ms)
    );
    s += &format!("errors           receivers {}\n", r.receiver_errors);
    if let Some(e) = &r.first_error {
        s += &format!("first error: {e}\n");
    }
    s
}

/// The table of BENCHMARKS.md: every run, and the median over runs.
pub(super) fn summary(o: &ClusterOpts, runs: &[Run]) -> String {
    let mut s = format!(
        "\ncluster: {} clients over 2 relays, {}/s broadcasts from {} senders for {} s (+{} s warmup), {} runs\n",
        o.clients, o.rate, o.senders, o.duration, o.warmup, runs.len()
    );
    let head: Vec<String> = (1..=runs.len()).map(|i| format!("run {i}")).collect();
    s += &format!("| figure | {} | median |\n", head.join(" | "));
    s += &format!("|---|{}---|\n", "---|".repeat(runs.len()));
    let mut row = |name: &str, f: &dyn Fn(&Run) -> f64, digits: usize| {
        let vals: Vec<f64> = runs.iter().map(f).collect();
        let cells: Vec<String> = vals.iter().map(|v| format!("{v:.digits$}")).collect();
        s += &format!(
            "| {name} | {} | {:.digits$} |\n",
            cells.join(" | "),
            median(&vals)
        );
    };
    row("cross-relay p50 ms", &|r| r.cross.p50, 2);
    row("cross-relay p99 ms", &|r| r.cross.p99, 2);
    row("cross-relay max ms", &|r| r.cross.max, 1);
    row("same-relay p50 ms", &|r| r.same.p50, 2);
    row("same-relay p99 ms", &|r| r.same.p99, 2);
    row("same-relay max ms", &|r| r.same.max, 1);
    row("broadcasts sent/s", &|r| r.send_rate, 0);
    row("expected deliveries", &|r| r.expected as f64, 0);
    row(
        "missing",
        &|r| r.expected.saturating_sub(r.delivered) as f64,
        0,
    );
    row("duplicates", &|r| r.duplicates as f64, 0);
    row("out of order", &|r| r.out_of_order as f64, 0);
    row("relay A CPU %", &|r| r.relay_cpu[0], 0);
    row("relay B CPU %", &|r| r.relay_cpu[1], 0);
    row("load generator CPU %", &|r| r.bench_cpu, 0);
    row("redis-server CPU %", &|r| r.redis_cpu, 0);
    row("machine CPU % (200 = both cores)", &|r| r.machine_cpu, 0);
    row("presence join, median ms", &|r| median(&r.join_ms), 1);
    row("presence join, max ms", &|r| max(&r.join_ms), 1);
    row("presence leave, median ms", &|r| median(&r.leave_ms), 1);
    row("presence leave, max ms", &|r| max(&r.leave_ms), 1);
    row(
        "kill → leave, median s",
        &|r| median(&r.kill_ms) / 1000.0,
        2,
    );
    row("kill → leave, max s", &|r| max(&r.kill_ms) / 1000.0, 2);
    s
}
