//! `pgrelay-bench`: drives a pgrelay process with WebSocket clients and PostgreSQL writers and
//! reports throughput, commit→client latency, and the relay's CPU and memory.
//!
//! Every run creates its own database, starts its own relay (`pgrelay serve --listen
//! 127.0.0.1:0`), and removes both at the end; it is bounded in time and stops by itself.
//! See BENCHMARKS.md for the method and `bench/run.sh` for the full matrix.

mod clients;
mod db;
mod hist;
mod procfs;
mod relay;
mod report;
mod run;
mod ts;
mod writecost;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::db::Workload;

/// Benchmark pgrelay against the bare LISTEN rate of the same PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgrelay-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// No relay: one bare LISTEN session under the same write load (the physical limit).
    Baseline(Opts),
    /// N clients (default 1000) all subscribed to INSERT on public.button_holds.
    Fanout(Opts),
    /// N clients (default 1000) each subscribed with `poll_id=eq.<k>` over K polls (default N).
    Filtered(Opts),
    /// N joined, idle connections (default 10,000): relay RSS per connection.
    Idle(Opts),
    /// The reference app at N users (default 1000): polls-changes, statistics-updates,
    /// button-sessions, button-presence (presence) and the live topic statistics per user; a
    /// share of users press and release the hold button through presence (the relay runs the
    /// holds) and the writers vote. The rate counts hold starts, hold ends and votes alike.
    Mixed(Opts),
    /// What publishing a table costs the app's writes: commits/s at 4, 16 and 32 writers with
    /// no trigger and with the trigger in each ingest mode, interleaved, medians of 3; plus
    /// latency at a quiet 100 commits/s and the relay's idle cost. Needs `pgbench`.
    Writecost(writecost::WriteCostOpts),
}

/// Options shared by every scenario. Unset ones take the scenario's default.
#[derive(Debug, Clone, Args)]
struct Opts {
    /// WebSocket clients (users for `mixed`). Defaults: fanout, filtered, mixed 1000; idle 10000.
    #[arg(long)]
    clients: Option<usize>,
    /// Writer connections (idle: 0).
    #[arg(long)]
    writers: Option<usize>,
    /// Target changes/s over all writers; 0 = as fast as possible. Defaults: baseline 0,
    /// fanout 100, filtered 1000, mixed 60 (mixed: a third are votes by the writers, two
    /// thirds hold starts and ends that the relay runs for the pressing users).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of writes before measuring (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Longest wait, in seconds, for deliveries still in flight after the window closes.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds to wait after every client joined, before measuring (lets memory settle).
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Polls seeded (writes spread over them). Defaults: filtered and idle N; mixed 100; else 10.
    #[arg(long)]
    polls: Option<usize>,
    /// Profiles seeded. Defaults: mixed N; baseline with `--workload app` 1000; else 8.
    #[arg(long)]
    profiles: Option<usize>,
    /// Write load of `baseline`: `holds` (as fanout/filtered) or `app` (as mixed).
    #[arg(long, value_enum)]
    workload: Option<Workload>,
    /// `synchronous_commit` of the writer sessions (e.g. `off`: commits do not wait for the
    /// WAL flush, so the disk no longer bounds the write rate). Default: the server's setting.
    #[arg(long, value_parser = ["on", "off", "local", "remote_write", "remote_apply"])]
    synchronous_commit: Option<String>,
    /// The relay binary (default: `pgrelay` next to this binary, i.e. target/release/pgrelay).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Extra argument for `pgrelay serve` (repeatable), e.g. `--relay-arg=--socket-queue=4096`.
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// RUST_LOG of the relay (its listening address is read from an info line of
    /// pgrelay::server).
    #[arg(long, default_value = "warn,pgrelay::http::server=info")]
    relay_log: String,
    /// Server on which each run creates (and drops) its own database.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Clients connecting and joining at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print one JSON line on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
    /// Free text copied into the JSON line (e.g. the matrix point).
    #[arg(long)]
    label: Option<String>,
}

fn writecost_main(opts: writecost::WriteCostOpts) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgrelay-bench: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(writecost::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgrelay-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (kind, opts) = match cli.scenario {
        Scenario::Writecost(o) => return writecost_main(o),
        Scenario::Baseline(o) => (run::Kind::Baseline, o),
        Scenario::Fanout(o) => (run::Kind::Fanout, o),
        Scenario::Filtered(o) => (run::Kind::Filtered, o),
        Scenario::Idle(o) => (run::Kind::Idle, o),
        Scenario::Mixed(o) => (run::Kind::Mixed, o),
    };
    let params = match run::Params::resolve(kind, opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgrelay-bench: error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(params.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgrelay-bench: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = params.json;
    let result = runtime.block_on(run::run(params));
    // Client tasks still running (after an error) are dropped with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(report) => {
            if json {
                eprint!("{}", report.human());
                println!("{}", report.json_line());
            } else {
                print!("{}", report.human());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgrelay-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
