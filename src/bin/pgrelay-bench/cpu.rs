//! CPU over the measured window: counters sampled at both ends, turned into % of one core for
//! the relay, PostgreSQL, this load generator and the rest of the machine.

use std::collections::HashMap;

use serde::Serialize;
use tokio::time::Instant;

use crate::procfs;

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

/// CPU counters at one instant.
#[derive(Debug, Clone)]
pub(crate) struct CpuSample {
    pub(crate) at: Instant,
    relay: Option<u64>,
    postgres: HashMap<u32, u64>,
    bench: Option<u64>,
    machine: Option<(u64, u64)>,
}

pub(crate) fn sample(relay_pid: Option<u32>, db: &str) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        relay: relay_pid.and_then(procfs::cpu_ticks),
        postgres: procfs::postgres_ticks(db),
        bench: procfs::cpu_ticks(std::process::id()),
        machine: procfs::machine_ticks(),
    }
}

pub(crate) fn cpu_between(a: &CpuSample, b: &CpuSample, tck: u64, cores: usize) -> Cpu {
    let wall = (b.at - a.at).as_secs_f64().max(1e-9);
    let pct = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / tck as f64 / wall * 100.0),
        _ => None,
    };
    let machine = match (a.machine, b.machine) {
        (Some((ab, at)), Some((bb, bt))) if bt > at => {
            Some(bb.saturating_sub(ab) as f64 / (bt - at) as f64 * cores as f64 * 100.0)
        }
        _ => None,
    };
    let relay = pct(a.relay, b.relay);
    let postgres = pct(
        Some(0),
        Some(procfs::ticks_between(&a.postgres, &b.postgres)),
    );
    let bench = pct(a.bench, b.bench);
    let other = machine.map(|m| {
        (m - relay.unwrap_or(0.0) - postgres.unwrap_or(0.0) - bench.unwrap_or(0.0)).max(0.0)
    });
    Cpu {
        relay,
        postgres,
        bench,
        machine,
        other,
    }
}
