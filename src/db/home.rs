//! pgrelay's own database. With the built-in default URL (no `DATABASE_URL`), the server it
//! points at (the local one on 127.0.0.1:5432, or the private one of a zero-configuration
//! start) is used through a database of pgrelay's own, [`OWN_DATABASE`], so the schema,
//! triggers, app tables and `refinery_schema_history` never land in the `postgres`
//! maintenance database. It is created when missing; the maintenance database is connected to
//! only to run that `CREATE DATABASE`. An explicit `DATABASE_URL` is used as given.

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::db::{db_cause, describe, pg_config, DbError};

/// The database pgrelay uses on the server of the built-in default URL.
pub const OWN_DATABASE: &str = "pgrelay";

/// Why pgrelay's own database could not be had; one line saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "cannot create pgrelay's own database {OWN_DATABASE} at {target}: {cause} \
         (create it with `CREATE DATABASE {OWN_DATABASE}`, or set DATABASE_URL)"
    )]
    Create { target: String, cause: String },
}

/// `url` with its database replaced by [`OWN_DATABASE`] (user, host, port and parameters
/// kept).
///
/// # Errors
/// [`DbError::BadUrl`] for a URL that is not `postgres://…` or `postgresql://…`.
pub fn own_url(url: &str) -> Result<String, DbError> {
    let bad = || DbError::BadUrl(format!("{url:?} is not a postgres:// URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if scheme != "postgres" && scheme != "postgresql" {
        return Err(bad());
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    let mut out = format!("{scheme}://{authority}/{OWN_DATABASE}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Make sure [`OWN_DATABASE`] exists on the server `maintenance_url` points at, creating it
/// through that (maintenance) database when missing. Returns its URL and whether it was
/// created now.
///
/// # Errors
/// The server unreachable or refusing the maintenance database ([`DbError::Unreachable`]), or
/// the `CREATE DATABASE` refused ([`HomeError::Create`], e.g. a role without `CREATEDB`).
pub async fn ensure_own_database(maintenance_url: &str) -> Result<(String, bool), HomeError> {
    let own = own_url(maintenance_url)?;
    let cfg = pg_config(maintenance_url)?;
    let target = describe(&cfg);
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| DbError::Unreachable {
        target: target.clone(),
        cause: db_cause(&e),
    })?;
    let connection = tokio::spawn(connection);
    let result = async {
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&OWN_DATABASE],
            )
            .await
            .map_err(DbError::Query)?
            .is_some();
        if exists {
            return Ok(false);
        }
        // OWN_DATABASE is a constant plain identifier: nothing to quote.
        match client
            .batch_execute(&format!("CREATE DATABASE {OWN_DATABASE}"))
            .await
        {
            Ok(()) => Ok(true),
            // Another relay created it between the check and now.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(false),
            Err(e) => Err(HomeError::Create {
                target: target.clone(),
                cause: db_cause(&e),
            }),
        }
    }
    .await;
    drop(client);
    let _ = connection.await;
    result.map(|created| (own, created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_urls_keep_everything_but_the_database() {
        assert_eq!(
            own_url(crate::config::DEFAULT_DATABASE_URL).ok().as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/pgrelay")
        );
        assert_eq!(
            own_url("postgresql://u:p@h:6543/postgres?sslmode=disable")
                .ok()
                .as_deref(),
            Some("postgresql://u:p@h:6543/pgrelay?sslmode=disable")
        );
        assert_eq!(
            own_url("postgres://postgres@127.0.0.1:7000")
                .ok()
                .as_deref(),
            Some("postgres://postgres@127.0.0.1:7000/pgrelay")
        );
        assert!(own_url("mysql://x/y").is_err());
        assert!(own_url("nonsense").is_err());
    }
}
