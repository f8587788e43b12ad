//! The relay process: database setup, the listener, change-log reader and routing tasks,
//! serving the routes (`routes`), and an orderly shutdown.
//!
//! Lifecycle of `run`: connect the pool (failing fast with one clear line), migrate, apply
//! the triggers, start LISTEN and wait until it is active, then serve until `shutdown`
//! completes. Then stop accepting, close every socket with 1001 so clients reconnect
//! elsewhere, and wait (bounded) for every task to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{info, warn};

use crate::auth::Verifier;
use crate::config::Config;
use crate::config::IngestMode;
use crate::db::cleanup;
use crate::db::{self, standby, DbError};
use crate::http::listen;
use crate::http::origin::Origins;
use crate::http::relay::Relay;
use crate::http::throttle::Throttle;
use crate::ingest::change::Catalog;
use crate::ingest::listener::{self, ListenerConfig};
use crate::ingest::standby as standby_ingest;
use crate::ingest::tail::{self, Reader, ReaderConfig};
use crate::metrics::Metrics;
use crate::protocol::TOPIC_PREFIX;
use crate::realtime::holds;
use crate::route::deliver::Deliverer;
use crate::route::live::{self, LiveQueries};
use crate::route::policy::Policies;
use crate::route::router::Router;
use crate::shutdown::ShutdownController;

/// Presence diffs of one topic less than this apart go out together: when many members join
/// at once, each member gets one frame per window rather than one per join.
const PRESENCE_BATCH_WINDOW: Duration = Duration::from_millis(50);

/// How long shutdown waits for sockets to say goodbye and tasks to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Why the relay could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Config(String),
}

/// Turn off Nagle's algorithm for every connection: frames are small and each should leave at
/// once. With it on, a frame written while the previous one is unacknowledged waits for the
/// client's delayed ACK (up to 40 ms on Linux). Set on the listener, whose accepted sockets
/// inherit it (Linux; `accepted_sockets_inherit_no_delay` checks it).
fn no_delay(listener: &TcpListener) {
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_nodelay(true) {
        warn!(cause = %e, "cannot set TCP_NODELAY on the listener: small frames may be delayed");
    }
}

/// Run the relay on an already bound listener until `shutdown` completes.
///
/// HTTP is served at once (`/health`, and `/ready` answering 503) while the database is set
/// up: connect (retried while it is unreachable, for up to `config.startup_timeout`),
/// migrate, apply the triggers, start LISTEN. Then WebSocket clients are admitted.
///
/// # Errors
/// Startup failures: bad URL, database unreachable past the startup timeout, failed migration
/// or trigger SQL. Once serving, database trouble is retried, never returned.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    no_delay(&listener);
    listen::raise_file_limit(config.limits.max_connections);
    let pool = db::build_pool(&config.database_url, config.pool_size)?;
    // With PGRELAY_READ_URL, reads go to the standby and writes to DATABASE_URL.
    let read_pool = match &config.read_url {
        Some(url) => standby::build_read_pool(url, config.pool_size).map_err(|e| match e {
            DbError::BadUrl(m) => ServerError::Config(format!("invalid PGRELAY_READ_URL: {m}")),
            other => other.into(),
        })?,
        None => pool.clone(),
    };
    log_databases(&config);
    let auth = Verifier::from_config(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
        config.jwks_file.as_deref(),
    )
    .map_err(ServerError::Config)?
    .map(Arc::new);
    if auth.is_none() {
        warn!(
            error_code = "AuthOff",
            "AUTH IS OFF: no PGRELAY_JWT_SECRET, PGRELAY_JWT_PUBLIC_KEY or PGRELAY_JWKS_FILE is set, \
             so any client may connect and read every published row; read policies are not applied"
        );
    }
    let policies = Arc::new(Policies::default());
    let controller = ShutdownController::new();
    let mut limits = config.limits.clone();
    if config.read_url.is_some() {
        // A standby cannot LISTEN: the reader tails it.
        limits.ingest = IngestMode::Tail;
    }
    let limits = Arc::new(limits);
    let metrics = Arc::new(Metrics::default());
    let router = Arc::new(Router::new(metrics.clone()));
    router.batch_presence_diffs(PRESENCE_BATCH_WINDOW);
    let catalog = Arc::new(Catalog::new(read_pool.clone()));
    let (started_tx, started) = watch::channel(false);
    let (listening_tx, listening) = watch::channel(false);
    let (watermark_tx, watermark) = watch::channel(None);

    let cluster = match &config.redis_url {
        Some(url) => {
            let (cluster, tasks) = crate::cluster::start(
                url,
                &config.redis_prefix,
                router.clone(),
                metrics.clone(),
                &controller.subscribe(),
            )
            .map_err(ServerError::Config)?;
            for task in tasks {
                let tracker = controller.tracker();
                tokio::spawn(async move {
                    task.await;
                    drop(tracker);
                });
            }
            Some(cluster)
        }
        None => None,
    };

    let origins = Origins::from_setting(config.allowed_origins.as_deref(), auth.is_some());
    info!(allowed = %origins.describe(), "web page origins");
    let relay = Arc::new(Relay {
        router: router.clone(),
        catalog: catalog.clone(),
        metrics: metrics.clone(),
        pool: pool.clone(),
        read_pool: read_pool.clone(),
        standby: config.read_url.is_some(),
        limits: limits.clone(),
        metrics_token: config.metrics_token.clone(),
        origins: Arc::new(origins),
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        shutdown: controller.subscribe(),
        tracker: controller.tracker(),
        started,
        listening,
        watermark,
        holds: std::sync::OnceLock::new(),
        live: std::sync::OnceLock::new(),
        cluster,
        auth,
        policies: policies.clone(),
        broadcasts: Throttle::new(Duration::from_secs(1)),
        boosts: Throttle::new(Duration::from_secs(60)),
    });
    let addr = listener.local_addr().ok();
    info!(addr = %addr.map_or_else(|| "?".into(), |a: SocketAddr| a.to_string()), "pgrelay listening");

    // HTTP first, so /health and /ready answer while the database is set up.
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = {
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(listen::serve(listener, relay.clone(), stop))
    };
    let user_stop = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
    };

    let setup = async {
        db::wait_until_reachable(&pool, &config.database_url, config.startup_timeout).await?;
        if let Some(url) = &config.read_url {
            let urls = (config.database_url.as_str(), url.as_str());
            check_standby(&pool, &read_pool, urls, config.startup_timeout).await?;
        }
        let applied = db::migrate(&pool).await?;
        if !applied.is_empty() {
            info!(migrations = ?applied, "schema migrated");
        }
        let (source, files) =
            db::apply_triggers(&pool, config.triggers_dir.as_deref(), &config.channel).await?;
        info!(source = %source, files, channel = %config.channel, "triggers applied");
        if let Some(url) = &config.read_url {
            setup_standby(&pool, &read_pool, url).await?;
        }
        let n = policies.load(&read_pool).await?;
        info!(policies = n, "read policies loaded");
        let live = Arc::new(LiveQueries::load(&read_pool).await?);
        Ok::<_, ServerError>(live)
    };
    let mut stopping = stop_rx.clone();
    let setup_result = tokio::select! {
        r = setup => r.map(Some),
        _ = stopping.wait_for(|s| *s) => Ok(None),
    };
    let live = match setup_result {
        Ok(live) => live,
        Err(e) => {
            let _ = stop_tx.send(true);
            user_stop.abort();
            let _ = http.await;
            drop(relay);
            controller.shutdown().await;
            return Err(e);
        }
    };

    if let Some(live) = live.filter(|_| !*stop_rx.borrow()) {
        let _ = relay.live.set(live.clone());
        if let Some(channel) = &config.hold_channel {
            let (holds, task) =
                holds::spawn(pool.clone(), config.hold_heartbeat, controller.subscribe());
            let tracker = controller.tracker();
            tokio::spawn(async move {
                let _ = task.await;
                drop(tracker);
            });
            let topic: Arc<str> = format!("{TOPIC_PREFIX}{channel}").into();
            let _ = relay.holds.set((holds, topic));
        }
        start_pipeline(
            &config,
            &controller,
            &pool,
            &read_pool,
            router,
            catalog,
            metrics,
            listening_tx,
            watermark_tx,
            policies.clone(),
            live,
        )?;
        let _ = started_tx.send(true);
    }

    let mut stopping = stop_rx.clone();
    let _ = stopping.wait_for(|s| *s).await;
    // Tasks stop now too: server-sent event streams are HTTP responses that warp's graceful
    // shutdown would otherwise wait on for ever.
    controller.signal();
    let _ = http.await;
    info!(
        sockets = relay.router.socket_count(),
        "shutting down: flushing and closing sockets"
    );
    drop(relay);
    if tokio::time::timeout(DRAIN_DEADLINE, controller.shutdown())
        .await
        .is_err()
    {
        warn!(deadline = ?DRAIN_DEADLINE, "some tasks did not finish before the deadline");
    }
    info!("stopped");
    Ok(())
}

/// One line saying which database the relay writes to and which it reads from (hosts, ports
/// and database names: never a password).
fn log_databases(config: &Config) {
    let describe = |url: &str| {
        db::pg_config(url)
            .map(|c| db::describe(&c))
            .unwrap_or_default()
    };
    let writes = describe(&config.database_url);
    match &config.read_url {
        Some(url) => info!(
            writes = %writes,
            reads = %describe(url),
            "databases: writes (migrations, holds, votes, profiles, boosts, cleanup, the ingest switch) \
             go to DATABASE_URL; changes and reads come from the standby PGRELAY_READ_URL"
        ),
        None => {
            info!(writes = %writes, reads = %writes, "databases: reads and writes go to DATABASE_URL")
        }
    }
}

/// With `PGRELAY_READ_URL`, before anything is written: wait for the standby, and prove it
/// is a standby of the primary.
async fn check_standby(
    pool: &deadpool_postgres::Pool,
    read_pool: &deadpool_postgres::Pool,
    (database_url, url): (&str, &str),
    timeout: Option<Duration>,
) -> Result<(), ServerError> {
    db::wait_until_reachable(read_pool, url, timeout)
        .await
        .map_err(|e| ServerError::Config(format!("PGRELAY_READ_URL: {e}")))?;
    standby::check(pool, database_url, read_pool, url)
        .await
        .map_err(|e| ServerError::Config(e.to_string()))
}

/// With `PGRELAY_READ_URL`, after migrating: let the standby replay the schema, and turn the
/// triggers' doorbell off (nobody can LISTEN for it on a standby, and every notifying commit
/// takes the primary's NOTIFY lock).
async fn setup_standby(
    pool: &deadpool_postgres::Pool,
    read_pool: &deadpool_postgres::Pool,
    url: &str,
) -> Result<(), ServerError> {
    standby::wait_replayed(pool, read_pool, url)
        .await
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let client = db::client(pool).await?;
    let switched = client
        .execute(
            "UPDATE pgrelay.ingest_state SET notify = false, changed_at = now(), \
             changed_by = 'a relay reading a standby' WHERE notify",
            &[],
        )
        .await
        .map_err(DbError::from)?;
    if switched > 0 {
        info!("ingest: the triggers' doorbell is off (a relay reading a standby tails the log)");
    }
    Ok(())
}

/// Start the listener, the change-log reader, the routing loop and the side loops, each tracked for shutdown.
#[allow(clippy::too_many_arguments)]
fn start_pipeline(
    config: &Config,
    controller: &ShutdownController,
    pool: &deadpool_postgres::Pool,
    read_pool: &deadpool_postgres::Pool,
    router: Arc<Router>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    listening_tx: watch::Sender<bool>,
    watermark_tx: watch::Sender<Option<String>>,
    policies: Arc<Policies>,
    live: Arc<LiveQueries>,
) -> Result<(), ServerError> {
    let router_for_live = router.clone();
    let limits = &config.limits;
    // Doorbells are coalesced: a few in flight are as good as many.
    let (events_tx, events_rx) = mpsc::channel(4);
    let mut listen_pg = db::pg_config(&config.database_url)?;
    // Named apart from the pool so a DBA can tell it in pg_stat_activity.
    listen_pg.application_name("pgrelay listener");
    let listener_cfg = ListenerConfig {
        pg: listen_pg.clone(),
        channel: config.channel.clone(),
        probe_every: limits.listener_probe,
    };
    let mut reader_pg = match &config.read_url {
        Some(url) => standby::read_config(url, "pgrelay reader")?,
        None => listen_pg,
    };
    reader_pg.application_name("pgrelay reader");
    reader_pg.options(&if config.read_url.is_some() {
        format!(
            "{} -c default_transaction_read_only=on",
            tail::SESSION_OPTIONS
        )
    } else {
        tail::SESSION_OPTIONS.to_owned()
    });
    let spawn = |task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
        let tracker = controller.tracker();
        tokio::spawn(async move {
            task.await;
            drop(tracker);
        });
    };
    let listening = listening_tx.subscribe();
    if config.read_url.is_none() {
        spawn(Box::pin(listener::run(
            listener_cfg,
            events_tx,
            listening_tx,
            controller.subscribe(),
        )));
    } else {
        // No LISTEN session on the primary: the reader tails the standby. Dropping the sender
        // tells the reader that no doorbell will ring.
        drop((events_tx, listening_tx));
        spawn(Box::pin(standby_ingest::run_lag(
            pool.clone(),
            read_pool.clone(),
            metrics.clone(),
            controller.subscribe(),
        )));
    }
    // Ingest hands changes to routing through a bounded queue: routing falling behind makes
    // the reader wait, and the change log holds the rest.
    let (deliveries_tx, deliveries_rx) = mpsc::channel(limits.change_buffer.max(1));
    let reader = Reader {
        cfg: ReaderConfig {
            pg: reader_pg,
            mode: if config.read_url.is_some() {
                IngestMode::Tail
            } else {
                limits.ingest
            },
            tail_interval: limits.tail_interval,
            tail_above: limits.tail_above,
            standby: config.read_url.is_some(),
        },
        catalog,
        metrics: metrics.clone(),
        out: deliveries_tx,
        watermark: watermark_tx,
        listening,
    };
    let deliverer = Deliverer {
        router,
        metrics,
        pool: read_pool.clone(),
        live: Some(live.clone()),
        policies: Some(policies),
    };
    spawn(Box::pin(live::run(
        live,
        read_pool.clone(),
        router_for_live,
        controller.subscribe(),
    )));
    spawn(Box::pin(reader.run(events_rx, controller.subscribe())));
    spawn(Box::pin(deliverer.run(deliveries_rx)));
    spawn(Box::pin(cleanup::run_pruner(
        pool.clone(),
        config.retention,
        controller.subscribe(),
    )));
    if let Some(settings) = config.cleanup {
        spawn(Box::pin(cleanup::run_sweeper(
            pool.clone(),
            settings,
            controller.subscribe(),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_no_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        no_delay(&listener);
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
