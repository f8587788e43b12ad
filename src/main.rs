//! The `pgrelay` binary: parse configuration, set up logging, and run one command.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use pgrelay::config::{
    CleanupArgs, Cli, Command, LogFormat, ServeArgs, Timeout, TriggersArgs, TriggersCommand,
    DEFAULT_DATABASE_URL,
};
use pgrelay::db::{self, cleanup, demo, home, pginstance, uninstall};
use pgrelay::http::server;
use pgrelay::shutdown::ShutdownController;
use pgrelay::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_logging(log_format);
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
            // One line naming the cause chain; no backtrace. A log collector reading JSON
            // gets it as one more JSON line.
            match log_format {
                LogFormat::Text => eprintln!("pgrelay: error: {e:#}"),
                LogFormat::Json => tracing::error!("pgrelay: error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`): text for people, or one JSON
/// object per line carrying the fields of the enclosing spans (`socket_id`, …).
fn init_logging(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // warp logs every connection a client drops mid-request (an event stream closed, a tab
    // gone) as an ERROR under `warp::server`: the client's doing, not a fault of the relay's.
    // Silenced unless RUST_LOG names warp itself.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("warp")) {
        if let Ok(quiet) = "warp::server=off".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let db = cli.database;
    // An explicitly configured database may still be starting (a compose service): wait for
    // it. The built-in default is a developer's local server: say at once if it is not there.
    let explicit = db.database_url.is_some();
    let read_url = db.read_url.filter(|u| !u.is_empty());
    let url = db
        .database_url
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    match cli.command {
        None => {
            let args = ServeArgs::parse_default();
            serve(url, explicit, read_url, db.pool_size, args).await
        }
        Some(Command::Serve(args)) => serve(url, explicit, read_url, db.pool_size, args).await,
        Some(Command::Migrate) => {
            let url = database(url, explicit).await?;
            let pool = db::connect_pool(&url, 1).await?;
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
            let url = database(url, explicit).await?;
            let pool = db::connect_pool(&url, 1).await?;
            let (source, files) = db::apply_triggers(&pool, triggers_dir.as_deref(), &channel)
                .await
                .context("applying triggers")?;
            println!("applied {files} trigger files from {source} (channel {channel})");
            Ok(())
        }
        Some(Command::Cleanup(args)) => {
            // Never creates pgrelay's own database: without a schema there is nothing to do.
            let url = if explicit { url } else { home::own_url(&url)? };
            cleanup(url, explicit, db.pool_size, args).await
        }
        Some(Command::Uninstall { drop_app_tables }) => {
            let url = if explicit { url } else { home::own_url(&url)? };
            uninstall(&url, drop_app_tables).await
        }
    }
}

/// The database to use: an explicit `DATABASE_URL` as given; with the built-in default (or a
/// private PostgreSQL's URL), pgrelay's own database on that server, created if missing.
/// Either way one log line names it.
async fn database(url: String, explicit: bool) -> anyhow::Result<String> {
    if explicit {
        if let Ok(cfg) = db::pg_config(&url) {
            tracing::info!(database = %db::describe(&cfg), "using the database DATABASE_URL names");
        }
        return Ok(url);
    }
    let (own, created) = home::ensure_own_database(&url).await?;
    let on = db::pg_config(&own)
        .map(|c| db::describe(&c))
        .unwrap_or_default();
    tracing::info!(
        database = home::OWN_DATABASE,
        url = %own,
        created,
        "no DATABASE_URL: using pgrelay's own database {on} (set DATABASE_URL to use another)"
    );
    Ok(own)
}

/// Migrate pgrelay's own database and seed the demo polls when it has none (never done to a
/// database `DATABASE_URL` names).
async fn seed_demo(url: &str) -> anyhow::Result<()> {
    let pool = db::connect_pool(url, 1).await?;
    db::migrate(&pool).await?;
    match demo::seed_when_empty(&pool).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            polls = n,
            "seeded active demo polls (the polls table was empty): open /demo to vote"
        ),
        Err(e) => tracing::warn!(cause = %e, "could not seed the demo polls"),
    }
    Ok(())
}

/// `pgrelay uninstall`: what was removed, on stdout.
async fn uninstall(url: &str, drop_app_tables: bool) -> anyhow::Result<()> {
    let pool = db::connect_pool(url, 1).await?;
    let removed = uninstall::uninstall(&pool, drop_app_tables).await?;
    for t in &removed.triggers {
        println!("dropped trigger {t}");
    }
    if removed.schema {
        println!(
            "dropped schema pgrelay and its {} tables and functions",
            removed.pgrelay_objects
        );
    }
    if removed.history {
        println!("dropped refinery_schema_history");
    }
    if drop_app_tables {
        println!(
            "dropped the app's tables: {}",
            removed.app_tables.join(", ")
        );
    } else {
        println!(
            "kept the app's tables and their rows (--drop-app-tables drops them); to install \
             pgrelay here again, drop them first, since the migrations create them"
        );
    }
    if removed.triggers.is_empty() && !removed.schema && !removed.history {
        println!("pgrelay was not installed in this database");
    }
    Ok(())
}

/// How long to retry an unreachable database at startup; `None`: for ever.
fn startup_timeout(configured: Option<Timeout>, explicit_url: bool) -> Option<Duration> {
    match configured {
        Some(t) => t.as_option(),
        None if explicit_url => None,
        None => Some(Duration::ZERO),
    }
}

async fn serve(
    database_url: String,
    explicit_url: bool,
    read_url: Option<String>,
    pool_size: usize,
    args: ServeArgs,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // Zero configuration: with no DATABASE_URL and nothing on the default address, a private
    // PostgreSQL under .pgrelay/, stopped when the relay stops.
    let private = if explicit_url {
        None
    } else {
        pginstance::zero_config().await?
    };
    let database_url = private.as_ref().map_or(database_url, |p| p.url.clone());
    let database_url = database(database_url, explicit_url).await?;
    if !explicit_url {
        seed_demo(&database_url).await?;
    }
    let cleanup = args.session_cleanup();
    let config = Config {
        database_url,
        pool_size,
        read_url,
        channel: args.triggers.channel,
        triggers_dir: args.triggers.triggers_dir,
        startup_timeout: startup_timeout(args.startup_timeout, explicit_url),
        retention: args.retention,
        jwt_secret: args.jwt_secret,
        jwt_public_key: args.jwt_public_key,
        jwks_file: args.jwks_file,
        hold_channel: Some(args.hold_channel).filter(|c| !c.is_empty()),
        hold_heartbeat: args.hold_heartbeat,
        cleanup,
        metrics_token: args.metrics_token.filter(|t| !t.is_empty()),
        allowed_origins: args.allowed_origins,
        redis_url: args.redis_url.filter(|u| !u.is_empty()),
        redis_prefix: args.redis_prefix,
        limits: args.limits,
    };
    let served = server::run(config, listener, shutdown_signal()).await;
    if let Some(private) = private {
        let _ = tokio::task::spawn_blocking(move || private.stop()).await;
    }
    served?;
    Ok(())
}

/// `pgrelay cleanup`: end stale sessions and prune the change log until Ctrl-C or SIGTERM,
/// then finish the passes in progress and exit.
async fn cleanup(
    database_url: String,
    explicit_url: bool,
    pool_size: usize,
    args: CleanupArgs,
) -> anyhow::Result<()> {
    // One connection per loop is all it can use.
    let pool = db::build_pool(&database_url, pool_size.min(2))?;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let timeout = startup_timeout(args.startup_timeout, explicit_url);
    tokio::select! {
        r = db::wait_until_reachable(&pool, &database_url, timeout) => r?,
        () = &mut signal => return Ok(()),
    }
    cleanup::check_schema(&pool).await?;
    let controller = ShutdownController::new();
    tokio::join!(
        cleanup::run_sweeper(pool.clone(), args.session_cleanup(), controller.subscribe()),
        cleanup::run_pruner(pool, args.retention, controller.subscribe()),
        async {
            signal.await;
            controller.signal();
        },
    );
    tracing::info!("stopped");
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
