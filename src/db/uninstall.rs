//! `pgrelay uninstall`: remove what pgrelay put in a database, in one transaction.
//!
//! pgrelay's own objects: every trigger that runs a function of schema `pgrelay` (the
//! `pgrelay_notify` triggers of `triggers/`, and any a DBA added), the tables and functions of
//! schema `pgrelay` (change log, ingest switch, prune state, read, channel and live-query
//! policies, `notify_change()`, `channel()`, with their grants and row-level policies), the
//! schema itself, and refinery's `refinery_schema_history`.
//!
//! The reference app's objects (sql/V1 and sql/V4: tables with their rows, the `app_stats`
//! view, the rule and statistics functions) stay, unless `drop_app` asks for them too.
//!
//! Nothing is dropped with CASCADE: an object of someone else's that depends on one of these
//! (a view on `pgrelay.change_log`, say) makes the whole uninstall fail with PostgreSQL's
//! message naming it, and nothing is removed.

use deadpool_postgres::Pool;

use crate::db::{client, db_cause, DbError};

/// The reference app's tables, dropped (with their rows) only on request. Their triggers and
/// indexes go with them.
pub const APP_TABLES: &[&str] = &[
    "public.button_holds",
    "public.user_votes",
    "public.poll_option_counts",
    "public.app_stat_shards",
    "public.app_settings",
    "public.polls",
    "public.profiles",
];

/// The reference app's functions (sql/V4) that no table depends on, dropped before its tables
/// (`cast_vote` returns a `user_votes` row, so that table cannot go first).
pub const APP_FUNCTIONS: &[&str] = &[
    "public.cast_vote",
    "public.boost_poll",
    "public.rebuild_stats",
    "public.app_stats_add",
    "public.app_stats_shard_count",
    "public.vote_hold_min_ms",
];

/// The reference app's trigger functions, dropped after its tables (whose triggers use them).
pub const APP_TRIGGER_FUNCTIONS: &[&str] = &[
    "public.polls_stats",
    "public.profiles_stats",
    "public.user_votes_stats",
    "public.stats_after_truncate",
];

/// What was removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// `trigger on schema.table`, one per trigger dropped.
    pub triggers: Vec<String>,
    /// Tables and functions of schema `pgrelay`, and whether the schema itself was there.
    pub pgrelay_objects: usize,
    pub schema: bool,
    /// Whether `refinery_schema_history` was there.
    pub history: bool,
    /// The app's tables dropped (with `drop_app`).
    pub app_tables: Vec<String>,
}

/// Why uninstalling failed: the statement and PostgreSQL's message (with its detail, which
/// names dependent objects). Nothing was removed.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("uninstall failed, nothing was removed: {step}: {cause}")]
    Step { step: String, cause: String },
}

fn step(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> UninstallError {
    let what = what.into();
    move |e| {
        let mut cause = db_cause(&e);
        if let Some(detail) = e.as_db_error().and_then(|d| d.detail()) {
            cause = format!("{cause} ({detail})");
        }
        UninstallError::Step { step: what, cause }
    }
}

/// Remove pgrelay (and with `drop_app` the reference app) from the pool's database.
///
/// # Errors
/// [`UninstallError::Step`] naming the statement that failed; the transaction is rolled back.
pub async fn uninstall(pool: &Pool, drop_app: bool) -> Result<Removed, UninstallError> {
    let mut obj = client(pool).await?;
    let tx = obj
        .transaction()
        .await
        .map_err(step("starting a transaction"))?;
    let mut removed = Removed::default();

    // Triggers on any table that run a function of schema pgrelay.
    let rows = tx
        .query(
            "SELECT format('DROP TRIGGER %I ON %I.%I', t.tgname, n.nspname, c.relname), \
                    format('%s on %s.%s', t.tgname, n.nspname, c.relname) \
             FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_proc p ON p.oid = t.tgfoid \
             WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'pgrelay') \
               AND NOT t.tgisinternal \
             ORDER BY n.nspname, c.relname, t.tgname",
            &[],
        )
        .await
        .map_err(step("listing pgrelay's triggers"))?;
    for row in &rows {
        let ddl: String = row.try_get(0).map_err(DbError::Query)?;
        let name: String = row.try_get(1).map_err(DbError::Query)?;
        tx.batch_execute(&ddl)
            .await
            .map_err(step(format!("dropping trigger {name}")))?;
        removed.triggers.push(name);
    }

    // Schema pgrelay: its tables in one statement (they may reference each other), then its
    // functions, then the schema, each without CASCADE.
    let schema_exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'pgrelay'", &[])
        .await
        .map_err(step("looking for schema pgrelay"))?
        .is_some();
    if schema_exists {
        let tables: Vec<String> = tx
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                 WHERE schemaname = 'pgrelay' ORDER BY tablename",
                &[],
            )
            .await
            .map_err(step("listing schema pgrelay's tables"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(DbError::Query)?;
        if !tables.is_empty() {
            tx.batch_execute(&format!("DROP TABLE {}", tables.join(", ")))
                .await
                .map_err(step(format!("dropping {}", tables.join(", "))))?;
        }
        let functions: Vec<String> = tx
            .query(
                "SELECT p.oid::regprocedure::text FROM pg_proc p \
                 JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = 'pgrelay' ORDER BY 1",
                &[],
            )
            .await
            .map_err(step("listing schema pgrelay's functions"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(DbError::Query)?;
        for f in &functions {
            tx.batch_execute(&format!("DROP FUNCTION {f}"))
                .await
                .map_err(step(format!("dropping function {f}")))?;
        }
        tx.batch_execute("DROP SCHEMA pgrelay")
            .await
            .map_err(step("dropping schema pgrelay"))?;
        removed.pgrelay_objects = tables.len() + functions.len();
        removed.schema = true;
    }

    // refinery's history, where refinery created it: the first schema of the search path.
    removed.history = tx
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .map_err(step("looking for refinery_schema_history"))?
        .try_get(0)
        .map_err(DbError::Query)?;
    if removed.history {
        tx.batch_execute("DROP TABLE refinery_schema_history")
            .await
            .map_err(step("dropping refinery_schema_history"))?;
    }

    if drop_app {
        removed.app_tables = drop_app_objects(&tx).await?;
    }
    tx.commit().await.map_err(step("committing"))?;
    Ok(removed)
}

/// The reference app's view, functions and tables, those that exist.
async fn drop_app_objects(
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<Vec<String>, UninstallError> {
    tx.batch_execute("DROP VIEW IF EXISTS public.app_stats")
        .await
        .map_err(step("dropping view public.app_stats"))?;
    drop_functions(tx, APP_FUNCTIONS).await?;
    let mut present = Vec::new();
    for table in APP_TABLES {
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
            .await
            .map_err(step(format!("looking for {table}")))?
            .try_get(0)
            .map_err(DbError::Query)?;
        if exists {
            present.push((*table).to_owned());
        }
    }
    if !present.is_empty() {
        tx.batch_execute(&format!("DROP TABLE {}", present.join(", ")))
            .await
            .map_err(step(format!("dropping {}", present.join(", "))))?;
    }
    drop_functions(tx, APP_TRIGGER_FUNCTIONS).await?;
    Ok(present)
}

async fn drop_functions(
    tx: &deadpool_postgres::Transaction<'_>,
    names: &[&str],
) -> Result<(), UninstallError> {
    for f in names {
        tx.batch_execute(&format!("DROP FUNCTION IF EXISTS {f}"))
            .await
            .map_err(step(format!("dropping function {f}")))?;
    }
    Ok(())
}
