//! A hot standby to read from (`PGRELAY_READ_URL`): its read-only pool, the checks that it is
//! a standby of `DATABASE_URL`, waiting for it to replay what the primary wrote, and the WAL
//! positions that replication lag is measured by.
//!
//! Every session opened here is read only (`default_transaction_read_only`): the relay never
//! writes through the read URL, even if the server it names is promoted.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::{client, db_cause, describe, pg_config, DbError};

/// How long start-up waits for the standby to replay the schema the primary just migrated.
pub const REPLAY_WAIT: Duration = Duration::from_secs(60);

/// The session settings of every connection to the standby: read only, named for DBAs.
pub fn read_config(url: &str, application_name: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut cfg = pg_config(url)?;
    cfg.application_name(application_name);
    cfg.options("-c default_transaction_read_only=on");
    Ok(cfg)
}

/// The pool for reads (catalog, live queries, read policies, event streams, the JSON API's
/// reads) from the standby.
pub fn build_read_pool(url: &str, size: usize) -> Result<Pool, DbError> {
    super::pool_for(read_config(url, "pgrelay")?, size)
}

/// Why the read URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error(
        "PGRELAY_READ_URL ({target}) is not a hot standby (pg_is_in_recovery() is false): \
         point it at a streaming replica of DATABASE_URL, or unset it to read from DATABASE_URL"
    )]
    NotStandby { target: String },
    #[error(
        "PGRELAY_READ_URL ({target}) is not a replica of DATABASE_URL ({primary}): their \
         system identifiers differ ({standby_id} and {primary_id})"
    )]
    OtherCluster {
        target: String,
        primary: String,
        standby_id: i64,
        primary_id: i64,
    },
    #[error(
        "PGRELAY_READ_URL ({target}) has not replayed the primary's schema after {waited:?} \
         (replayed {replayed}, primary at {wanted}): is it replicating from DATABASE_URL?"
    )]
    Behind {
        target: String,
        waited: Duration,
        replayed: String,
        wanted: String,
    },
    #[error("checking PGRELAY_READ_URL ({target}): {cause}")]
    Db { target: String, cause: String },
}

fn target(url: &str) -> String {
    pg_config(url).map(|c| describe(&c)).unwrap_or_default()
}

fn db_err(url: &str) -> impl Fn(DbError) -> StandbyError + '_ {
    move |e| StandbyError::Db {
        target: target(url),
        cause: match &e {
            DbError::Query(q) => db_cause(q),
            other => other.to_string(),
        },
    }
}

/// Prove that `read` is a hot standby of the cluster `write` points at: in recovery, and
/// with the same system identifier when the role may read `pg_control_system()`.
pub async fn check(
    write: &Pool,
    write_url: &str,
    read: &Pool,
    read_url: &str,
) -> Result<(), StandbyError> {
    let standby = client(read).await.map_err(db_err(read_url))?;
    let row = standby
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| db_err(read_url)(e.into()))?;
    let in_recovery: bool = row
        .try_get(0)
        .map_err(|e| db_err(read_url)(DbError::Query(e)))?;
    if !in_recovery {
        return Err(StandbyError::NotStandby {
            target: target(read_url),
        });
    }
    let primary = client(write).await.map_err(db_err(write_url))?;
    let (Some(standby_id), Some(primary_id)) =
        (system_id(&standby).await, system_id(&primary).await)
    else {
        tracing::warn!(
            "cannot read pg_control_system() (needs superuser or pg_monitor): not checking \
             that PGRELAY_READ_URL replicates DATABASE_URL"
        );
        return Ok(());
    };
    if standby_id != primary_id {
        return Err(StandbyError::OtherCluster {
            target: target(read_url),
            primary: target(write_url),
            standby_id,
            primary_id,
        });
    }
    Ok(())
}

async fn system_id(client: &tokio_postgres::Client) -> Option<i64> {
    let row = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .ok()?;
    row.try_get(0).ok()
}

/// A WAL position (`pg_lsn` text, `16/B374D848`) as a byte offset.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some(hi.checked_shl(32)? | lo)
}

/// The primary's current WAL position (`pg_current_wal_lsn()`).
pub async fn primary_lsn(write: &Pool) -> Result<u64, DbError> {
    let client = client(write).await?;
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?;
    let text: String = row.try_get(0)?;
    parse_lsn(&text).ok_or_else(|| DbError::Pool(format!("unexpected WAL position {text:?}")))
}

/// What the standby has replayed (`pg_last_wal_replay_lsn()`; `None` before it replayed
/// anything), and whether it is still a standby.
pub async fn replayed(read: &Pool) -> Result<(Option<u64>, bool), DbError> {
    let client = client(read).await?;
    let row = client
        .query_one(
            "SELECT pg_last_wal_replay_lsn()::text, pg_is_in_recovery()",
            &[],
        )
        .await?;
    let lsn: Option<String> = row.try_get(0)?;
    Ok((lsn.as_deref().and_then(parse_lsn), row.try_get(1)?))
}

/// Wait until the standby has replayed everything the primary has written so far (the
/// schema just migrated, the triggers just applied), for up to [`REPLAY_WAIT`].
pub async fn wait_replayed(write: &Pool, read: &Pool, read_url: &str) -> Result<(), StandbyError> {
    let wanted = primary_lsn(write).await.map_err(db_err(read_url))?;
    let started = tokio::time::Instant::now();
    loop {
        let (lsn, _) = replayed(read).await.map_err(db_err(read_url))?;
        if lsn.is_some_and(|l| l >= wanted) {
            return Ok(());
        }
        if started.elapsed() >= REPLAY_WAIT {
            return Err(StandbyError::Behind {
                target: target(read_url),
                waited: REPLAY_WAIT,
                replayed: lsn.map_or_else(|| "nothing".into(), lsn_text),
                wanted: lsn_text(wanted),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A byte offset as `pg_lsn` text.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_positions() {
        assert_eq!(parse_lsn("0/30160A0"), Some(0x30160A0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("garbage"), None);
        assert_eq!(parse_lsn("1/"), None);
    }
}
