//! `writecost`: what publishing a table costs the application's own writes.
//!
//! Every notifying commit takes a cluster-wide lock through its WAL flush, so the NOTIFY path
//! caps the whole cluster's writes. This scenario measures app commits/s with durable commits
//! (`synchronous_commit` as the server has it) for a table with no pgrelay trigger, and for the
//! trigger in each ingest mode, at several writer counts, interleaved and repeated: each
//! repetition runs every (writers, setup) point once, in the same order, so a noisy neighbour
//! hurts all setups alike.
//!
//! Each point gets a fresh database, its own relay (`--ingest=<mode>`) and 100 WebSocket
//! subscribers on the table, each with `k=eq.<i>`: every committed row goes to exactly one
//! subscriber, so delivery is checked exactly once per row and latency is sampled on every
//! row. The load is `pgbench` (single-row INSERT transactions, prepared). A sampler counts the
//! backends waiting for the NOTIFY lock (`pg_locks`, object 1262/0 in database 0) every 50 ms.
//!
//! Latency is measured twice. From the insert: client receipt minus the row's
//! `clock_timestamp()`, which includes the transaction's own commit (its wait for the WAL
//! flush, a few ms under load, in every setup alike). From the commit: client receipt minus
//! the moment pgbench saw that row's commit acknowledged, which is commit→client as the app
//! sees it; rows are matched to pgbench's per-transaction log through the client id each row
//! carries (see [`crate::writeload::ack_to_receipt`]).

use crate::relay::Target;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{connect, BenchDb};
use crate::hist::Histogram;
use crate::relay::{prepare_schema, resolve_bin, Relay};
use crate::ts::{change_ts_us, now_us};
use crate::writeload::{
    ack_to_receipt, histogram_bound_ms, logged_transactions, pgbench, relay_metrics, relay_reads,
    renice, Load,
};
use crate::ws::{WsClient, OP_TEXT};

const COMMIT_TO_SEND: &str = "pgrelay_commit_to_send_seconds";
const READ: &str = "pgrelay_ingest_read_seconds";

/// What the table is published with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Setup {
    /// No pgrelay trigger on the table (the relay still runs, with its subscribers).
    None,
    /// The trigger, relay in `--ingest=adaptive` (the default).
    Adaptive,
    /// The trigger, relay in `--ingest=notify`.
    Notify,
    /// The trigger, relay in `--ingest=tail`.
    Tail,
}

impl Setup {
    fn as_str(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::Adaptive => "adaptive",
            Setup::Notify => "notify",
            Setup::Tail => "tail",
        }
    }
}

/// The scenario's options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WriteCostOpts {
    /// Writer counts (pgbench clients), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,16,32")]
    writers: Vec<usize>,
    /// Setups, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,adaptive,notify,tail"
    )]
    setups: Vec<Setup>,
    /// Repetitions of the whole interleaved matrix (medians are over these).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Measured seconds per point.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of writes before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Also measure latency at this many commits/s (pgbench `-R`, 4 clients), per setup with a
    /// trigger, and the relay's idle cost; 0 skips it.
    #[arg(long, default_value_t = 100.0)]
    quiet_rate: f64,
    /// WebSocket subscribers on the table.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    #[command(flatten)]
    target: Target,
    /// Print one JSON line per point on stdout (the tables go to stderr).
    #[arg(long)]
    json: bool,
    /// Renice the relay and its reader's PostgreSQL backend to this niceness (e.g. -10; needs
    /// root). On a machine where the database, the writers and the relay share two cores, this
    /// stands in for the relay having a core of its own, as in production; 0 leaves them be.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    relay_nice: i32,
}

/// One measured point.
#[derive(Debug, Clone)]
struct Point {
    setup: Setup,
    writers: usize,
    commits_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Rows committed over the whole run, and rows the subscribers received (once each).
    committed: u64,
    delivered: u64,
    duplicates: u64,
    lock_waiters_mean: f64,
    lock_waiters_max: i64,
    relay_reads_per_s: f64,
    relay_cpu_pct: f64,
    /// Commit→routing latency inside the relay (its `/metrics` histogram bucket bounds), which
    /// leaves out the subscribers' own scheduling on a shared machine.
    relay_p50_ms: f64,
    relay_p99_ms: f64,
    /// The writers' own transaction latency (pgbench's, begin to commit acknowledged): the
    /// part of commit→client that is the app's commit on this machine, in every setup.
    txn_p50_ms: f64,
    txn_p99_ms: f64,
    /// Commit acknowledged to pgbench → client receipt, per row (see
    /// [`crate::writeload::ack_to_receipt`]): commit→client as the app sees its commit.
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    /// How long the relay's reads of the change log took (its histogram's bucket bounds).
    read_p50_ms: f64,
    read_p99_ms: f64,
}

impl Point {
    fn json(&self, rep: usize) -> String {
        format!(
            "{{\"scenario\":\"writecost\",\"rep\":{rep},\"setup\":\"{}\",\"writers\":{},\"commits_per_s\":{:.1},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"committed\":{},\"delivered\":{},\"duplicates\":{},\"lock_waiters_mean\":{:.2},\"lock_waiters_max\":{},\"relay_reads_per_s\":{:.1},\"relay_cpu_pct\":{:.1},\"relay_p50_ms\":{},\"relay_p99_ms\":{},\"txn_p50_ms\":{:.2},\"txn_p99_ms\":{:.2},\"ack_p50_ms\":{:.2},\"ack_p99_ms\":{:.2},\"read_p50_ms\":{},\"read_p99_ms\":{}}}",
            self.setup.as_str(),
            self.writers,
            self.commits_per_s,
            self.p50_ms,
            self.p99_ms,
            self.committed,
            self.delivered,
            self.duplicates,
            self.lock_waiters_mean,
            self.lock_waiters_max,
            self.relay_reads_per_s,
            self.relay_cpu_pct,
            self.relay_p50_ms,
            self.relay_p99_ms,
            self.txn_p50_ms,
            self.txn_p99_ms,
            self.ack_p50_ms,
            self.ack_p99_ms,
            self.read_p50_ms,
            self.read_p99_ms
        )
    }
}

pub(crate) async fn run(opts: WriteCostOpts) -> Result<(), String> {
    let bin = resolve_bin(opts.target.relay_bin.as_deref())?;
    let mut points: BTreeMap<(usize, &'static str), Vec<Point>> = BTreeMap::new();
    for rep in 0..opts.reps {
        for &w in &opts.writers {
            for &setup in &opts.setups {
                let p = point(&bin, &opts, setup, Load::Flat(w)).await?;
                eprintln!(
                    "rep {rep} writers {w:>2} {:<8} {:>8.0} commits/s  p50 {:>7.2} ms  p99 {:>7.2} ms  (from ack {:.2} / {:.2} ms, relay ≤{} / ≤{} ms, reads ≤{} / ≤{} ms, app txn {:.1} / {:.1} ms)  delivered {}/{} dup {}  lock waiters {:.1} (max {})",
                    setup.as_str(),
                    p.commits_per_s,
                    p.p50_ms,
                    p.p99_ms,
                    p.ack_p50_ms,
                    p.ack_p99_ms,
                    p.relay_p50_ms,
                    p.relay_p99_ms,
                    p.read_p50_ms,
                    p.read_p99_ms,
                    p.txn_p50_ms,
                    p.txn_p99_ms,
                    p.delivered,
                    p.committed,
                    p.duplicates,
                    p.lock_waiters_mean,
                    p.lock_waiters_max
                );
                if opts.json {
                    println!("{}", p.json(rep));
                }
                points.entry((w, setup.as_str())).or_default().push(p);
            }
        }
    }
    eprintln!(
        "\nmedians of {} interleaved runs (commits/s; latency from the row's insert, and from its commit acknowledged, to the client)",
        opts.reps
    );
    eprintln!("| writers | setup | commits/s | ÷ none | ÷ none, per run | p50 ms | p99 ms | from ack p50 / p99 ms | relay p50 / p99 ms (bucket bound) | app transaction p50 / p99 ms | delivered/committed | NOTIFY-lock waiters (mean / max) |");
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &w in &opts.writers {
        let none = points
            .get(&(w, "none"))
            .map(|ps| median(ps.iter().map(|p| p.commits_per_s)));
        for &setup in &opts.setups {
            let Some(ps) = points.get(&(w, setup.as_str())) else {
                continue;
            };
            let rate = median(ps.iter().map(|p| p.commits_per_s));
            let ratio = none.map_or("–".to_owned(), |n| format!("{:.2}", rate / n));
            // Each repetition runs `none` and this setup back to back: the median of those
            // pairs' ratios is less exposed to the machine drifting between repetitions.
            let paired = points.get(&(w, "none")).map_or("–".to_owned(), |nones| {
                format!(
                    "{:.2}",
                    median(
                        ps.iter()
                            .zip(nones)
                            .map(|(p, n)| p.commits_per_s / n.commits_per_s)
                    )
                )
            });
            let (delivered, committed): (u64, u64) = ps
                .iter()
                .fold((0, 0), |(d, c), p| (d + p.delivered, c + p.committed));
            let latency = if setup == Setup::None {
                "– | – | – | –".to_owned()
            } else {
                format!(
                    "{:.1} | {:.1} | {:.1} / {:.1} | ≤{} / ≤{}",
                    median(ps.iter().map(|p| p.p50_ms)),
                    median(ps.iter().map(|p| p.p99_ms)),
                    median(ps.iter().map(|p| p.ack_p50_ms)),
                    median(ps.iter().map(|p| p.ack_p99_ms)),
                    median(ps.iter().map(|p| p.relay_p50_ms)),
                    median(ps.iter().map(|p| p.relay_p99_ms))
                )
            };
            let txn = format!(
                "{:.1} / {:.1}",
                median(ps.iter().map(|p| p.txn_p50_ms)),
                median(ps.iter().map(|p| p.txn_p99_ms))
            );
            eprintln!(
                "| {w} | {} | {rate:.0} | {ratio} | {paired} | {latency} | {txn} | {delivered}/{committed} | {:.1} / {} |",
                setup.as_str(),
                median(ps.iter().map(|p| p.lock_waiters_mean)),
                ps.iter().map(|p| p.lock_waiters_max).max().unwrap_or(0)
            );
        }
    }
    if opts.quiet_rate > 0.0 {
        eprintln!(
            "\nquiet load ({} commits/s, 4 clients) and idle (no writes, 10 s)",
            opts.quiet_rate
        );
        eprintln!("| setup | p50 ms | p99 ms | from ack p50 / p99 ms | relay p50 / p99 ms | relay reads/s | relay CPU % | idle reads/s | idle relay CPU % |");
        eprintln!("|---|---|---|---|---|---|---|---|---|");
        for &setup in opts.setups.iter().filter(|s| **s != Setup::None) {
            let q = point(&bin, &opts, setup, Load::Rate(opts.quiet_rate)).await?;
            let idle = point(&bin, &opts, setup, Load::Idle).await?;
            if opts.json {
                println!("{}", q.json(usize::MAX));
                println!("{}", idle.json(usize::MAX));
            }
            eprintln!(
                "| {} | {:.2} | {:.2} | {:.2} / {:.2} | ≤{} / ≤{} | {:.0} | {:.1} | {:.1} | {:.2} |",
                setup.as_str(),
                q.p50_ms,
                q.p99_ms,
                q.ack_p50_ms,
                q.ack_p99_ms,
                q.relay_p50_ms,
                q.relay_p99_ms,
                q.relay_reads_per_s,
                q.relay_cpu_pct,
                idle.relay_reads_per_s,
                idle.relay_cpu_pct
            );
        }
    }
    Ok(())
}

fn median(it: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = it.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn point(
    bin: &std::path::Path,
    opts: &WriteCostOpts,
    setup: Setup,
    load: Load,
) -> Result<Point, String> {
    let db = BenchDb::create(&opts.target.database_url).await?;
    let result = point_in(bin, opts, setup, load, &db).await;
    db.drop_db().await?;
    result
}

async fn point_in(
    bin: &std::path::Path,
    opts: &WriteCostOpts,
    setup: Setup,
    load: Load,
    db: &BenchDb,
) -> Result<Point, String> {
    prepare_schema(bin, &db.url).await?;
    let admin = connect(&db.url).await?;
    admin
        .batch_execute(
            "CREATE TABLE public.bench_writes (
                 id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 at   timestamptz NOT NULL DEFAULT clock_timestamp(),
                 k    int NOT NULL,
                 w    int NOT NULL,
                 note text NOT NULL)",
        )
        .await
        .map_err(|e| format!("create table: {e}"))?;
    if setup != Setup::None {
        admin
            .batch_execute(
                "CREATE TRIGGER pgrelay_notify AFTER INSERT OR UPDATE OR DELETE \
                 ON public.bench_writes FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change()",
            )
            .await
            .map_err(|e| format!("create trigger: {e}"))?;
    }
    let mode = match setup {
        Setup::None | Setup::Adaptive => "adaptive",
        Setup::Notify => "notify",
        Setup::Tail => "tail",
    };
    let relay = Relay::start(
        bin,
        &db.url,
        "warn,pgrelay::http::server=info",
        &[format!("--ingest={mode}")],
    )
    .await?;
    if opts.relay_nice != 0 {
        renice(relay.pid, opts.relay_nice).await?;
        // The reader's backend: its name is set by the relay.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgrelay reader' \
                 AND datname = current_database()",
                &[],
            )
            .await
            .map_err(|e| format!("reader backend: {e}"))?;
        if let Some(row) = row {
            renice(
                u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
                opts.relay_nice,
            )
            .await?;
        }
    }
    let result = measure(opts, setup, load, db, &relay).await;
    relay.stop().await?;
    result
}

async fn measure(
    opts: &WriteCostOpts,
    setup: Setup,
    load: Load,
    db: &BenchDb,
    relay: &Relay,
) -> Result<Point, String> {
    let writers = match load {
        Load::Flat(w) => w,
        Load::Rate(_) | Load::Idle => 4,
    };
    // The measured window, in the clock the rows' `at` and the clients' receipts both use.
    let warmup = Duration::from_secs_f64(opts.warmup);
    let duration = Duration::from_secs_f64(opts.duration);
    let window_start = now_us() + i64::try_from(warmup.as_micros()).unwrap_or(0) + 2_000_000;
    let window_end = window_start + i64::try_from(duration.as_micros()).unwrap_or(0);
    let txn_log =
        std::env::temp_dir().join(format!("pgrelay-writecost-{}-txns", std::process::id()));

    // Subscribers: k = 0..n, each `k=eq.<i>`.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..opts.subscribers {
        let mut ws = WsClient::connect(
            relay.addr,
            "/realtime/v1/websocket?apikey=bench&vsn=2.0.0",
            u32::try_from(i).unwrap_or(0),
        )
        .await?;
        let join = format!(
            "[\"1\",\"1\",\"realtime:w{i}\",\"phx_join\",{{\"config\":{{\"postgres_changes\":[{{\"event\":\"INSERT\",\"schema\":\"public\",\"table\":\"bench_writes\",\"filter\":\"k=eq.{i}\"}}]}}}}]"
        );
        ws.send_text(&join).await?;
        let stop = stop.clone();
        readers.push(tokio::spawn(read_changes(
            ws,
            stop,
            window_start,
            window_end,
        )));
    }
    let before_cpu = crate::procfs::cpu_ticks(relay.pid);
    let before_reads = relay_reads(&relay_metrics(relay).await);
    let started = Instant::now();

    // The NOTIFY-lock sampler.
    let sampler = {
        let url = db.url.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(c) = connect(&url).await else {
                return Vec::new();
            };
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(row) = c
                    .query_one(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'object' AND database = 0 \
                         AND classid = 1262 AND objid = 0 AND NOT granted",
                        &[],
                    )
                    .await
                {
                    let at = now_us();
                    if at >= window_start && at < window_end {
                        samples.push(row.get::<_, i64>(0));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };

    // Give the joins a moment, then write for warmup + duration.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = warmup + duration;
    match load {
        Load::Idle => tokio::time::sleep(total).await,
        Load::Flat(_) | Load::Rate(_) => {
            pgbench(&db.url, writers, load, total, Some(&txn_log)).await?;
        }
    }
    let logged = logged_transactions(&txn_log)?;
    let txns: Histogram = logged
        .iter()
        .filter(|t| t.end_us >= window_start && t.end_us < window_end)
        .map(|t| t.latency_us)
        .collect();
    let elapsed = started.elapsed();
    // Let deliveries in flight land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_cpu = crate::procfs::cpu_ticks(relay.pid);
    let after_metrics = relay_metrics(relay).await;
    let after_reads = relay_reads(&after_metrics);
    let (relay_p50_ms, relay_p99_ms) = (
        histogram_bound_ms(&after_metrics, COMMIT_TO_SEND, 0.5),
        histogram_bound_ms(&after_metrics, COMMIT_TO_SEND, 0.99),
    );
    let (read_p50_ms, read_p99_ms) = (
        histogram_bound_ms(&after_metrics, READ, 0.5),
        histogram_bound_ms(&after_metrics, READ, 0.99),
    );
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::default();
    let mut received = std::collections::HashMap::new();
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    for r in readers {
        let (h, ids) = r.await.map_err(|e| format!("reader: {e}"))?;
        hist.merge(&h);
        for (id, at) in ids {
            delivered += 1;
            if received.insert(id, at).is_some() {
                duplicates += 1;
            }
        }
    }
    let samples = sampler.await.map_err(|e| format!("sampler: {e}"))?;
    let c = connect(&db.url).await?;
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE at >= to_timestamp($1::float8 / 1e6) \
                                              AND at < to_timestamp($2::float8 / 1e6)) \
             FROM public.bench_writes",
            &[&(window_start as f64), &(window_end as f64)],
        )
        .await
        .map_err(|e| format!("count: {e}"))?;
    let committed = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    let rows: Vec<(u32, i64)> = c
        .query("SELECT w, id FROM public.bench_writes", &[])
        .await
        .map_err(|e| format!("rows: {e}"))?
        .iter()
        .map(|r| (u32::try_from(r.get::<_, i32>(0)).unwrap_or(0), r.get(1)))
        .collect();
    let acked: Histogram = ack_to_receipt(&logged, &rows, &received, window_start, window_end)
        .into_iter()
        .collect();
    let in_window = row.get::<_, i64>(1) as f64;
    let ticks = match (before_cpu, after_cpu) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64,
        _ => 0.0,
    };
    let secs = elapsed.as_secs_f64() + 2.0;
    Ok(Point {
        setup,
        writers,
        commits_per_s: in_window / duration.as_secs_f64(),
        p50_ms: hist.quantile_ms(0.5),
        p99_ms: hist.quantile_ms(0.99),
        committed,
        delivered: if setup == Setup::None { 0 } else { delivered },
        duplicates,
        lock_waiters_mean: if samples.is_empty() {
            0.0
        } else {
            samples.iter().sum::<i64>() as f64 / samples.len() as f64
        },
        lock_waiters_max: samples.iter().copied().max().unwrap_or(0),
        relay_reads_per_s: (after_reads - before_reads) / secs,
        relay_cpu_pct: 100.0 * ticks / crate::procfs::clk_tck() as f64 / secs,
        relay_p50_ms,
        relay_p99_ms,
        txn_p50_ms: txns.quantile_ms(0.5),
        txn_p99_ms: txns.quantile_ms(0.99),
        ack_p50_ms: acked.quantile_ms(0.5),
        ack_p99_ms: acked.quantile_ms(0.99),
        read_p50_ms,
        read_p99_ms,
    })
}

/// Read one subscriber's frames until told to stop: latency of every change committed in the
/// window, and the id of every change received with when it was received (µs).
async fn read_changes(
    mut ws: WsClient,
    stop: Arc<AtomicBool>,
    window_start: i64,
    window_end: i64,
) -> (Histogram, Vec<(i64, i64)>) {
    let mut hist = Histogram::default();
    let mut ids = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        loop {
            let frame = match ws.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return (hist, ids),
            };
            if frame.opcode != OP_TEXT {
                continue;
            }
            let payload = ws.payload(&frame);
            if crate::ts::find(payload, b"\"postgres_changes\"").is_none()
                || crate::ts::find(payload, b"\"record\"").is_none()
            {
                continue;
            }
            let now = now_us();
            if let Some(at) = change_ts_us(payload, &[b"\"at\""]) {
                if at >= window_start && at < window_end {
                    hist.record(u64::try_from(now - at).unwrap_or(0));
                }
            }
            if let Some(id) = record_id(payload) {
                ids.push((id, now));
            }
        }
        match tokio::time::timeout(Duration::from_millis(200), ws.read_more()).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    (hist, ids)
}

/// `"id":<n>` inside `"record"`.
fn record_id(frame: &[u8]) -> Option<i64> {
    let rec = crate::ts::rfind(frame, b"\"record\"")?;
    let body = &frame[rec..];
    let p = crate::ts::find(body, b"\"id\":")? + 5;
    let digits: Vec<u8> = body[p..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}
