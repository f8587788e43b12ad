//! `cluster`: two relays sharing Redis, measured from the clients' side.
//!
//! Each run: a fresh database, two relays (A and B) with the same Redis URL and a key prefix of
//! their own, and N WebSocket clients (default 1,000) spread evenly over them, all joined to
//! one broadcast topic with `self: false` (vsn 1.0.0 JSON frames). Sender sockets (default 10,
//! alternately on A and B, not counted among the clients) broadcast on the socket at an even
//! total rate (default 1,000/s); every message carries its sender's relay, the sender, a
//! sequence number and the send time. Every client records the latency of every message, split
//! by where the sender was: on the other relay (cross-relay: through Redis PUB/SUB) or on its
//! own (same-relay: the baseline, in the same run); and checks that it got every message once,
//! in order per sender.
//!
//! Then presence convergence, seen by an observer on relay B: a client on relay A tracks (time
//! to B's `presence_diff` join) and untracks (the leave); then, per repetition, a third relay C
//! starts, a client of it tracks, C is killed with SIGKILL, and the time to B's leave is
//! measured. C starts 0, 1.1, 2.2, 0.3 … s after the previous leave and is killed 0, 1.3, 2.6 …
//! s after the track, so that the kills fall at different points of C's 3 s refresh cycle and
//! of B's 3 s check.

mod clients;
mod output;
mod presence;

use std::path::Path;

use crate::relay::Target;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::db::BenchDb;
use crate::hist::Histogram;
use crate::relay::{prepare_schema, resolve_bin, Relay};
use crate::ts::now_us;
use clients::{receive, send, Received};
use output::{human, summary};
use presence::{join, presence};

/// The broadcast topic every client joins.
const TOPIC: &str = "bench-cluster";
/// The presence topic of the convergence measurements.
const PRESENCE_TOPIC: &str = "bench-presence";
/// Heartbeat period of every socket (the relay closes sockets silent for 60 s).
const HEARTBEAT: Duration = Duration::from_secs(20);
/// How long a join, or a presence diff, may take.
const WAIT: Duration = Duration::from_secs(30);
const LOG: &str = "warn,pgrelay::http::server=info";

/// The scenario's options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterOpts {
    /// WebSocket clients receiving the broadcasts, spread evenly over the two relays.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Broadcasts per second, over all senders.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Sender sockets, alternately on relay A and B (each sends rate/senders per second; the
    /// relay allows 1,000 pushes per second per socket).
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Measured seconds of broadcasting.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of broadcasting before measuring latency (deliveries are still checked).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Longest wait, in seconds, for messages in flight after the last send.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Repetitions of each presence measurement (join, leave, kill) per run.
    #[arg(long, default_value_t = 5)]
    presence_reps: usize,
    /// Runs (each with a fresh database, relays and Redis prefix); the summary gives medians.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// The Redis the relays share.
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    #[command(flatten)]
    target: Target,
    /// Clients connecting and joining at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Print one JSON line per run on stdout (the tables go to stderr).
    #[arg(long)]
    json: bool,
}

/// Latency figures of one histogram, in ms.
#[derive(Debug, Clone, Copy, Default)]
struct Lat {
    n: u64,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Lat {
    fn of(h: &Histogram) -> Lat {
        let ms = |us: u64| us as f64 / 1000.0;
        Lat {
            n: h.count(),
            p50: ms(h.quantile(0.5)),
            p99: ms(h.quantile(0.99)),
            max: ms(h.max()),
        }
    }

    fn json(&self) -> Value {
        json!({"n": self.n, "p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max})
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    ready: [usize; 2],
    sent: u64,
    send_rate: f64,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    receiver_errors: u64,
    first_error: Option<String>,
    cross: Lat,
    same: Lat,
    relay_cpu: [f64; 2],
    /// This process (the clients and senders), and the local `redis-server` (0 if none).
    bench_cpu: f64,
    redis_cpu: f64,
    machine_cpu: f64,
    join_ms: Vec<f64>,
    leave_ms: Vec<f64>,
    fresh_join_ms: Vec<f64>,
    kill_ms: Vec<f64>,
}

impl Run {
    fn json(&self, rep: usize, o: &ClusterOpts) -> String {
        json!({
            "scenario": "cluster", "rep": rep, "clients": o.clients, "ready": self.ready,
            "senders": o.senders, "rate": o.rate, "duration_s": o.duration,
            "warmup_s": o.warmup, "sent": self.sent, "send_rate": self.send_rate,
            "expected": self.expected, "delivered": self.delivered,
            "duplicates": self.duplicates, "out_of_order": self.out_of_order,
            "receiver_errors": self.receiver_errors, "first_error": self.first_error,
            "cross": self.cross.json(), "same": self.same.json(),
            "relay_cpu_pct": self.relay_cpu, "bench_cpu_pct": self.bench_cpu,
            "redis_cpu_pct": self.redis_cpu, "machine_cpu_pct": self.machine_cpu,
            "presence_join_ms": self.join_ms, "presence_leave_ms": self.leave_ms,
            "presence_fresh_join_ms": self.fresh_join_ms, "presence_kill_ms": self.kill_ms,
        })
        .to_string()
    }
}

pub(crate) async fn run(o: ClusterOpts) -> Result<(), String> {
    if o.clients == 0 || o.senders == 0 || o.reps == 0 || o.connect_concurrency == 0 {
        return Err(
            "--clients, --senders, --reps and --connect-concurrency must be at least 1".into(),
        );
    }
    if !o.rate.is_finite() || o.rate <= 0.0 || o.rate / o.senders as f64 > 900.0 {
        return Err("--rate must be positive and at most 900 per sender (the relay allows 1,000 pushes/s per socket)".into());
    }
    for (what, v) in [
        ("duration", o.duration),
        ("warmup", o.warmup),
        ("drain", o.drain),
    ] {
        if !v.is_finite() || !(0.0..=3600.0).contains(&v) {
            return Err(format!("--{what} must be between 0 and 3600 seconds"));
        }
    }
    crate::procfs::ensure_nofile((2 * (o.clients + o.senders) + 256) as u64)?;
    let bin = resolve_bin(o.target.relay_bin.as_deref())?;
    let mut runs = Vec::new();
    for rep in 0..o.reps {
        let db = BenchDb::create(&o.target.database_url).await?;
        let result = one_run(&bin, &o, &db, rep).await;
        db.drop_db().await?;
        let r = result?;
        eprint!("{}", human(rep, &r));
        if o.json {
            println!("{}", r.json(rep, &o));
        }
        runs.push(r);
    }
    eprint!("{}", summary(&o, &runs));
    Ok(())
}

async fn one_run(bin: &Path, o: &ClusterOpts, db: &BenchDb, rep: usize) -> Result<Run, String> {
    prepare_schema(bin, &db.url).await?;
    let prefix = format!("pgrelay-bench-{}-{}-{rep}", std::process::id(), now_us());
    let args = vec![
        format!("--redis-url={}", o.redis_url),
        format!("--redis-prefix={prefix}"),
    ];
    let a = Relay::start(bin, &db.url, LOG, &args).await?;
    let b = Relay::start(bin, &db.url, LOG, &args).await?;
    let mut run = Run::default();
    let result = async {
        broadcasts(o, [&a, &b], &mut run).await?;
        presence(bin, &db.url, &args, o.presence_reps, &a, &b, &mut run).await
    }
    .await;
    let stop_a = a.stop().await;
    let stop_b = b.stop().await;
    result?;
    stop_a?;
    stop_b?;
    Ok(run)
}

async fn broadcasts(o: &ClusterOpts, relays: [&Relay; 2], run: &mut Run) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(o.connect_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<usize, String>>();
    let window_start = Arc::new(AtomicU64::new(u64::MAX));
    let mut receivers = Vec::with_capacity(o.clients);
    for i in 0..o.clients {
        let relay = i % 2;
        let addr = relays[relay].addr;
        let (stop, total, permits, ready) = (
            stop.clone(),
            total.clone(),
            permits.clone(),
            ready_tx.clone(),
        );
        let (senders, window_start) = (o.senders, window_start.clone());
        receivers.push(tokio::spawn(async move {
            let joined = match permits.acquire_owned().await {
                Ok(_permit) => join(addr, TOPIC, None, i as u32).await,
                Err(e) => Err(e.to_string()),
            };
            let ws = match joined {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready.send(Err(e.clone()));
                    return Received {
                        error: Some(e),
                        ..Received::default()
                    };
                }
            };
            let _ = ready.send(Ok(relay));
            // The count of joins ends when every client has answered.
            drop(ready);
            receive(ws, relay, senders, &window_start, &stop, &total).await
        }));
    }
    drop(ready_tx);
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(relay) => run.ready[relay] += 1,
            Err(e) => {
                run.receiver_errors += 1;
                run.first_error.get_or_insert(format!("join: {e}"));
            }
        }
    }
    let ready = (run.ready[0] + run.ready[1]) as u64;
    eprintln!(
        "cluster: {} clients joined on relay A, {} on relay B",
        run.ready[0], run.ready[1]
    );
    let mut senders = Vec::new();
    for s in 0..o.senders {
        let ws = join(relays[s % 2].addr, TOPIC, None, 1_000_000 + s as u32).await?;
        senders.push(ws);
    }
    // Everyone is joined: send for warmup + duration, evenly spaced over all senders.
    let per_sender = o.rate / o.senders as f64;
    let count = (per_sender * (o.warmup + o.duration)).round() as u64;
    let start = Instant::now() + Duration::from_millis(500);
    let start_us = now_us() + 500_000;
    window_start.store(
        (start_us + (o.warmup * 1e6) as i64).max(0) as u64,
        Ordering::Relaxed,
    );
    let redis_pid = redis_server_pid();
    let cpu_before = cpu_sample(relays, redis_pid);
    let cpu_start = Instant::now();
    let mut tasks = Vec::new();
    for (s, ws) in senders.into_iter().enumerate() {
        // Sender s starts s/senders of a period late, so sends interleave evenly.
        let offset = Duration::from_secs_f64(s as f64 / o.rate);
        let stop = stop.clone();
        tasks.push(tokio::spawn(send(
            ws,
            s % 2,
            s,
            per_sender,
            start + offset,
            count,
            stop,
        )));
    }
    let mut sent_done = Vec::new();
    for t in tasks {
        sent_done.push(t.await.map_err(|e| format!("sender: {e}"))?);
    }
    let send_end = Instant::now();
    let cpu_after = cpu_sample(relays, redis_pid);
    let mut sent = 0;
    for (n, err) in &sent_done {
        sent += n;
        if let Some(e) = err {
            run.first_error.get_or_insert(format!("sender: {e}"));
        }
    }
    run.sent = sent;
    run.send_rate = sent as f64 / send_end.duration_since(start).as_secs_f64().max(1e-9);
    run.expected = sent * ready;
    // Wait for the messages in flight, or for the drain limit.
    let deadline = Instant::now() + Duration::from_secs_f64(o.drain);
    while total.load(Ordering::Relaxed) < run.expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut same, mut cross) = (Histogram::default(), Histogram::default());
    for r in receivers {
        let r = r.await.map_err(|e| format!("receiver: {e}"))?;
        same.merge(&r.same);
        cross.merge(&r.cross);
        run.delivered += r.unique;
        run.duplicates += r.duplicates;
        run.out_of_order += r.out_of_order;
        if let Some(e) = r.error {
            run.receiver_errors += 1;
            run.first_error.get_or_insert(e);
        }
    }
    run.same = Lat::of(&same);
    run.cross = Lat::of(&cross);
    let secs = send_end.duration_since(cpu_start).as_secs_f64().max(1e-9);
    let tck = crate::procfs::clk_tck().max(1) as f64;
    let pct = |i: usize| 100.0 * cpu_after.0[i].saturating_sub(cpu_before.0[i]) as f64 / tck / secs;
    run.relay_cpu = [pct(0), pct(1)];
    run.bench_cpu = pct(2);
    run.redis_cpu = pct(3);
    if let (Some((b0, t0)), Some((b1, t1))) = (cpu_before.1, cpu_after.1) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        run.machine_cpu =
            100.0 * cores * b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64;
    }
    Ok(())
}

/// CPU ticks of relay A, relay B, this process and Redis; the machine's (busy, total) ticks.
fn cpu_sample(relays: [&Relay; 2], redis: Option<u32>) -> ([u64; 4], Option<(u64, u64)>) {
    let t = |pid: u32| crate::procfs::cpu_ticks(pid).unwrap_or(0);
    let ticks = [
        t(relays[0].pid),
        t(relays[1].pid),
        t(std::process::id()),
        redis.map_or(0, t),
    ];
    (ticks, crate::procfs::machine_ticks())
}

/// The local `redis-server`, if one runs here (the first found).
fn redis_server_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "redis-server").then_some(pid)
    })
}
