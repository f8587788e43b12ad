//! `pgrelay-bench`: drives a pgrelay process with WebSocket clients and PostgreSQL writers and
//! reports throughput, commit→client latency, and the relay's CPU and memory.
//!
//! Every run creates its own database, starts its own relay (`pgrelay serve --listen
//! 127.0.0.1:0`), and removes both at the end; it is bounded in time and stops by itself.
//! See BENCHMARKS.md for the method and `bench/run.sh` for the full matrix.

mod clients;
mod cluster;
mod cpu;
mod db;
mod hist;
mod params;
mod press;
mod procfs;
mod relay;
mod report;
mod run;
mod spec;
mod stats;
mod ts;
mod writecost;
mod writeload;
mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::params::{Kind, Opts, Params};

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
    /// Two relays sharing Redis, N clients (default 1000) spread over them on one broadcast
    /// topic: cross-relay vs same-relay broadcast latency at 1,000 messages/s, losses and order;
    /// then presence convergence across relays after a join, a leave and a SIGKILL.
    Cluster(cluster::ClusterOpts),
}

/// The load generator's runtime, or the error line and exit code when it cannot start.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("pgrelay-bench: error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn writecost_main(opts: writecost::WriteCostOpts) -> ExitCode {
    let runtime = match runtime(2) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(writecost::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgrelay-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cluster_main(opts: cluster::ClusterOpts) -> ExitCode {
    let runtime = match runtime(2) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(cluster::run(opts));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
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
        Scenario::Cluster(o) => return cluster_main(o),
        Scenario::Baseline(o) => (Kind::Baseline, o),
        Scenario::Fanout(o) => (Kind::Fanout, o),
        Scenario::Filtered(o) => (Kind::Filtered, o),
        Scenario::Idle(o) => (Kind::Idle, o),
        Scenario::Mixed(o) => (Kind::Mixed, o),
    };
    let params = match Params::resolve(kind, opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgrelay-bench: error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(params.threads) {
        Ok(rt) => rt,
        Err(code) => return code,
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
