//! Everything the relay asks of PostgreSQL except LISTEN: the connection pool, the embedded
//! migrations, installing the triggers, and catalog and change-log reads.
//!
//! The LISTEN session lives in `listener`: it must be a dedicated connection, never a pooled one,
//! because a pooled connection is shared and may sit behind a transaction-pooling proxy.
//!
//! Also here: [`pginstance`], the private PostgreSQL of a zero-configuration start, and
//! [`cleanup`], the loop that ends stale hold sessions and prunes the change log; [`home`],
//! pgrelay's own database under the built-in default URL, and [`demo`], the polls seeded
//! there; [`uninstall`], removing pgrelay from a database.
//!
//! May use: `config` and `shutdown` only. Every other folder builds on this one.

pub mod cleanup;
pub mod demo;
pub mod home;
pub mod pginstance;
pub mod standby;
pub mod uninstall;

use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Trigger SQL compiled into the binary, used when no triggers directory is given or found.
const EMBEDDED_TRIGGERS: &[(&str, &str)] = &[
    (
        "000_notify_change.sql",
        include_str!("../../triggers/000_notify_change.sql"),
    ),
    (
        "button_holds.sql",
        include_str!("../../triggers/button_holds.sql"),
    ),
    ("polls.sql", include_str!("../../triggers/polls.sql")),
    (
        "pgrelay_read_policies.sql",
        include_str!("../../triggers/pgrelay_read_policies.sql"),
    ),
    ("profiles.sql", include_str!("../../triggers/profiles.sql")),
    (
        "user_votes.sql",
        include_str!("../../triggers/user_votes.sql"),
    ),
];

/// Errors talking to PostgreSQL, with the context an operator needs to act on them.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to PostgreSQL at {target}: {cause}")]
    Unreachable { target: String, cause: String },
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("cannot read trigger SQL {path}: {cause}")]
    TriggerFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("applying trigger SQL {file} failed: {cause}")]
    TriggerSql {
        file: String,
        cause: tokio_postgres::Error,
    },
    #[error("no database connection available: {0}")]
    Pool(String),
}

impl DbError {
    /// True when the error is about reaching the server, not about a statement: worth retrying.
    pub fn is_unreachable(&self) -> bool {
        match self {
            DbError::Unreachable { cause, .. } => !is_permanent(cause),
            DbError::Pool(_) => true,
            DbError::Query(e) => e.is_closed(),
            _ => false,
        }
    }
}

/// Server answers that waiting will not fix: wrong credentials or database name.
fn is_permanent(cause: &str) -> bool {
    [
        "password authentication failed",
        "does not exist",
        "no pg_hba.conf entry",
    ]
    .iter()
    .any(|m| cause.contains(m))
}

/// Parse the URL and set the socket options every relay connection wants.
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::BadUrl(e.to_string()))?;
    if cfg.get_application_name().is_none() {
        cfg.application_name("pgrelay");
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    // A half-open TCP connection would otherwise look alive for hours.
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    Ok(cfg)
}

/// Where a config points, for error messages (never includes the password).
pub fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
}

/// Build the pool. Connections are made on first use, so a bad URL fails here and an
/// unreachable server shows up in [`check`].
pub fn build_pool(url: &str, size: usize) -> Result<Pool, DbError> {
    pool_for(pg_config(url)?, size)
}

/// A pool of `size` sessions made with `cfg`.
pub(crate) fn pool_for(cfg: tokio_postgres::Config, size: usize) -> Result<Pool, DbError> {
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Prove the pool can connect, naming the server in the error.
pub async fn check(pool: &Pool, url: &str) -> Result<(), DbError> {
    match pool.get().await {
        Ok(_) => Ok(()),
        Err(e) => Err(DbError::Unreachable {
            target: pg_config(url).map(|c| describe(&c)).unwrap_or_default(),
            cause: pool_cause(e),
        }),
    }
}

/// Build the pool and prove it can connect, so a bad URL or a dead server fails with one
/// clear line (the one-shot commands).
pub async fn connect_pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let pool = build_pool(url, size)?;
    check(&pool, url).await?;
    Ok(pool)
}

/// Wait until the pool can connect. An unreachable database is retried with backoff (500 ms
/// doubling to 10 s) for up to `timeout` (`None`: for ever); any other failure (bad
/// credentials, unknown database) is returned at once.
///
/// # Errors
/// The last [`check`] failure, once it is not worth retrying or the timeout would pass.
pub async fn wait_until_reachable(
    pool: &Pool,
    url: &str,
    timeout: Option<Duration>,
) -> Result<(), DbError> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        let err = match check(pool, url).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_unreachable() => e,
            Err(e) => return Err(e),
        };
        match timeout {
            Some(limit) if started.elapsed() + backoff > limit => return Err(err),
            _ => {}
        }
        tracing::warn!(cause = %err, retry_in = ?backoff, "database not reachable yet");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn pool_cause(e: deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_cause(&e),
        other => other.to_string(),
    }
}

/// The most specific text tokio-postgres has for an error (its Display is often just "db error").
pub fn db_cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

pub async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, DbError> {
    pool.get().await.map_err(|e| DbError::Pool(pool_cause(e)))
}

/// Several relays starting at once against one database (two compose services, replicas
/// behind a load balancer) take turns to migrate and apply the triggers: concurrent runs would
/// race on creating the same objects. A session-level advisory lock, released at the end.
const SETUP_LOCK: &str = "SELECT pg_advisory_lock(hashtext('pgrelay.setup'))";
const SETUP_UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('pgrelay.setup'))";

/// Release the setup lock; a session that cannot is closed rather than returned to the pool
/// still holding it (which would stall every other relay's start).
async fn unlock_setup(obj: deadpool_postgres::Object) {
    if obj.batch_execute(SETUP_UNLOCK).await.is_err() {
        drop(deadpool_postgres::Object::take(obj));
    }
}

/// Run the migrations in sql/ (embedded at build time). Returns the versions applied now.
pub async fn migrate(pool: &Pool) -> Result<Vec<String>, DbError> {
    let mut obj = client(pool).await?;
    obj.batch_execute(SETUP_LOCK).await?;
    let report = {
        let client: &mut tokio_postgres::Client = &mut obj;
        embedded::migrations::runner().run_async(client).await
    };
    unlock_setup(obj).await;
    let report = report.map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// Where trigger SQL comes from: an explicit directory, else `./triggers` when it exists, else
/// the embedded copies.
pub fn trigger_sources(dir: Option<&Path>) -> Result<(String, Vec<(String, String)>), DbError> {
    let dir = match dir {
        Some(d) => Some(d.to_path_buf()),
        None => {
            let local = PathBuf::from("triggers");
            local
                .join("000_notify_change.sql")
                .is_file()
                .then_some(local)
        }
    };
    let Some(dir) = dir else {
        let files = EMBEDDED_TRIGGERS
            .iter()
            .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
            .collect();
        return Ok(("embedded".into(), files));
    };
    let read_err = |path: &Path, cause| DbError::TriggerFile {
        path: path.to_path_buf(),
        cause,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| read_err(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for p in names {
        let sql = std::fs::read_to_string(&p).map_err(|e| read_err(&p, e))?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((name, sql));
    }
    Ok((dir.display().to_string(), files))
}

/// Apply the trigger SQL (idempotent) and point `pgrelay.channel()` at our NOTIFY channel.
/// Returns where the SQL came from and how many files ran.
pub async fn apply_triggers(
    pool: &Pool,
    dir: Option<&Path>,
    channel: &str,
) -> Result<(String, usize), DbError> {
    let (source, files) = trigger_sources(dir)?;
    let client = client(pool).await?;
    client.batch_execute(SETUP_LOCK).await?;
    let applied = apply_trigger_files(&client, &files, channel).await;
    unlock_setup(client).await;
    applied?;
    Ok((source, files.len()))
}

async fn apply_trigger_files(
    client: &tokio_postgres::Client,
    files: &[(String, String)],
    channel: &str,
) -> Result<(), DbError> {
    for (name, sql) in files {
        client
            .batch_execute(sql)
            .await
            .map_err(|cause| DbError::TriggerSql {
                file: name.clone(),
                cause,
            })?;
    }
    // `channel` is validated as a plain identifier by `config::parse_channel`; it is still
    // quoted by the server (`%L`), not by us. Replacing the function invalidates cached plans that
    // folded it in, so sessions pick up the new name.
    let stmt = "SELECT format('CREATE OR REPLACE FUNCTION pgrelay.channel() RETURNS text \
                LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $b$ SELECT %L::text $b$', $1::text)";
    let row = client.query_one(stmt, &[&channel]).await?;
    let ddl: String = row.try_get(0)?;
    client
        .batch_execute(&ddl)
        .await
        .map_err(|cause| DbError::TriggerSql {
            file: "pgrelay.channel()".into(),
            cause,
        })?;
    Ok(())
}

/// Tables whose rows are published, i.e. that have the pgrelay trigger attached.
pub async fn published_tables(pool: &Pool) -> Result<Vec<(String, String)>, DbError> {
    let client = client(pool).await?;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text \
             FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.tgfoid = 'pgrelay.notify_change'::regproc AND NOT t.tgisinternal",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// A table's columns in `attnum` order with their `pg_type.typname`.
pub async fn table_columns(
    pool: &Pool,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String)>, DbError> {
    let client = client(pool).await?;
    let stmt = client
        .prepare_cached(
            "SELECT a.attname::text, t.typname::text \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type t ON t.oid = a.atttypid \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
        )
        .await?;
    let rows = client.query(&stmt, &[&schema, &table]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// One change-log row.
#[derive(Debug)]
pub struct LoggedChange {
    pub seq: i64,
    pub schema: String,
    pub table: String,
    pub op: String,
    pub commit_timestamp: String,
    /// `created_at`: when the change was logged, for latency figures.
    pub changed_at: std::time::SystemTime,
    pub record: Option<serde_json::Value>,
    pub old_record: Option<serde_json::Value>,
}

/// A change-log row's columns, in the order [`logged`] reads them.
pub const LOG_COLUMNS: &str =
    "seq, schema_name, table_name, op, commit_timestamp, record, old_record, created_at";
/// How many columns [`LOG_COLUMNS`] names.
pub const LOG_COLUMN_COUNT: usize = 8;

/// The change in `r`, whose columns [`LOG_COLUMNS`] start at column `first`.
pub fn logged(r: &tokio_postgres::Row, first: usize) -> Result<LoggedChange, DbError> {
    let changed_at = r.try_get(first + 7)?;
    Ok(LoggedChange {
        seq: r.try_get(first)?,
        schema: r.try_get(first + 1)?,
        table: r.try_get(first + 2)?,
        op: r.try_get(first + 3)?,
        commit_timestamp: commit_timestamp(r.try_get(first + 4)?, changed_at),
        changed_at,
        record: r.try_get(first + 5)?,
        old_record: r.try_get(first + 6)?,
    })
}

/// The `commit_timestamp` clients receive for a change-log row: `created_at` (the clock time
/// of the change) in Supabase's format, UTC with milliseconds and a trailing `Z`; or, for a row
/// written by a trigger older than migration V12, the string that trigger formatted.
pub fn commit_timestamp(legacy: Option<String>, created_at: std::time::SystemTime) -> String {
    use chrono::{Datelike, Timelike};
    match legacy {
        Some(text) => text,
        // Runs once per change: plain integer formatting, not a strftime pattern parsed anew.
        None => {
            let t = chrono::DateTime::<chrono::Utc>::from(created_at);
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.nanosecond() / 1_000_000 % 1000
            )
        }
    }
}

/// Every change committed after snapshot `after` and visible in snapshot `upto`, in an order
/// consistent with commit order: transactions by their last `seq` (a transaction that saw
/// another's commit allocated all its sequence numbers after that one's), changes within a
/// transaction by `seq`. Each change comes with its transaction's last `seq`.
pub async fn read_window_keyed(
    pool: &Pool,
    after: &str,
    upto: &str,
) -> Result<Vec<(i64, LoggedChange)>, DbError> {
    let client = client(pool).await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {LOG_COLUMNS}, max(seq) OVER (PARTITION BY xid) AS txmax \
             FROM pgrelay.change_log \
             WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot) \
               AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot) \
               AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot) \
             ORDER BY txmax, seq"
        ))
        .await?;
    let rows = client.query(&stmt, &[&after, &upto]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(LOG_COLUMN_COUNT)?, logged(r, 0)?)))
        .collect()
}

/// Whether pruning may have removed a change committed after `snapshot`: true when some pruned
/// change's transaction is not older than the snapshot's xmin (conservative).
pub async fn pruned_past(client: &tokio_postgres::Client, snapshot: &str) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT coalesce(max_pruned_xid >= pg_snapshot_xmin($1::text::pg_snapshot), false) \
             FROM pgrelay.prune_state",
            &[&snapshot],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Backends waiting for the lock that every notifying commit takes (`PreCommit_Notify`).
pub async fn notify_lock_waiters(pool: &Pool) -> Result<u64, DbError> {
    let client = client(pool).await?;
    // PreCommit_Notify locks object 0 of pg_database (class 1262) in database 0.
    let row = tokio::time::timeout(
        Duration::from_secs(2),
        client.query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'object' AND database = 0 \
             AND classid = 1262 AND objid = 0 AND NOT granted",
            &[],
        ),
    )
    .await
    .map_err(|_| DbError::Pool("timed out".into()))??;
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

/// `pg_notification_queue_usage()`: the fraction of the cluster-wide NOTIFY queue in use.
pub async fn notification_queue_usage(pool: &Pool) -> Result<f64, DbError> {
    let client = client(pool).await?;
    let row = tokio::time::timeout(
        Duration::from_secs(2),
        client.query_one("SELECT pg_notification_queue_usage()", &[]),
    )
    .await
    .map_err(|_| DbError::Pool("timed out".into()))??;
    Ok(row.try_get(0)?)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::commit_timestamp;

    #[test]
    fn commit_timestamps_are_formatted_like_supabase() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_032_800_123_987);
        assert_eq!(commit_timestamp(None, at), "2026-11-30T10:00:00.123Z");
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_032_800);
        assert_eq!(commit_timestamp(None, whole), "2026-11-30T10:00:00.000Z");
        // A row written by a trigger older than V12 keeps the string that trigger formatted.
        assert_eq!(
            commit_timestamp(Some("2026-11-27T10:00:00.5Z".into()), at),
            "2026-11-27T10:00:00.5Z"
        );
    }
}
