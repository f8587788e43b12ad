//! The `pgrelay` binary: parse configuration, set up logging, and run one command.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use pgrelay::config::{Cli, Command, ServeArgs, TriggersArgs, TriggersCommand};
use pgrelay::{db, server, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgrelay: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the cause chain; no backtrace.
            eprintln!("pgrelay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let db = cli.database;
    match cli.command {
        None => {
            let args = ServeArgs::parse_default();
            serve(db.database_url, db.pool_size, args).await
        }
        Some(Command::Serve(args)) => serve(db.database_url, db.pool_size, args).await,
        Some(Command::Migrate) => {
            let pool = db::connect_pool(&db.database_url, 1).await?;
            let applied = db::migrate(&pool).await?;
            if applied.is_empty() {
                println!("schema is up to date");
            } else {
                println!("applied migrations: {}", applied.join(", "));
            }
            Ok(())
        }
        Some(Command::Triggers {
            command:
                TriggersCommand::Apply(TriggersArgs {
                    triggers_dir,
                    channel,
                }),
        }) => {
            let pool = db::connect_pool(&db.database_url, 1).await?;
            let (source, files) = db::apply_triggers(&pool, triggers_dir.as_deref(), &channel)
                .await
                .context("applying triggers")?;
            println!("applied {files} trigger files from {source} (channel {channel})");
            Ok(())
        }
    }
}

async fn serve(database_url: String, pool_size: usize, args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = Config {
        database_url,
        pool_size,
        channel: args.triggers.channel,
        triggers_dir: args.triggers.triggers_dir,
        limits: args.limits,
    };
    server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
