//! The active holders of the vote buttons, from `button_holds`.

use deadpool_postgres::Pool;
use serde::Serialize;

use crate::db::{self, DbError};
use crate::http::api::reply::ApiError;

/// Holders of one poll's vote button.
#[derive(Debug, Serialize)]
pub struct PollHolders {
    pub poll_id: i64,
    pub holders: i64,
}

/// Who is holding a button right now: `button_holds` rows with `is_active`. A holder is a
/// user (one user in two tabs counts once; a row without a user counts as its own holder).
#[derive(Debug, Serialize)]
pub struct ActiveHolds {
    /// Distinct holders over every button.
    pub total: i64,
    /// Holders of the plain button (`poll_id` NULL).
    pub plain_button: i64,
    /// Holders per poll, by poll id; polls nobody holds are absent.
    pub polls: Vec<PollHolders>,
}

/// `GET /api/v1/holds/active`. One statement: the total and the groups agree.
pub(super) async fn active_holds(pool: &Pool) -> Result<ActiveHolds, ApiError> {
    let run = async {
        let client = db::client(pool).await?;
        // GROUPING tells the grand total apart from the plain-button group (both have a NULL
        // poll_id). The partial index on active holds keeps this to the live sessions.
        let stmt = client
            .prepare_cached(
                "SELECT GROUPING(poll_id) = 1, poll_id, \
                        count(DISTINCT coalesce(user_id::text, id::text))::int8 \
                 FROM public.button_holds WHERE is_active \
                 GROUP BY GROUPING SETS ((poll_id), ()) \
                 ORDER BY 1, poll_id NULLS FIRST",
            )
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        let mut out = ActiveHolds {
            total: 0,
            plain_button: 0,
            polls: Vec::new(),
        };
        for r in &rows {
            let is_total: bool = r.try_get(0)?;
            let poll_id: Option<i64> = r.try_get(1)?;
            let holders: i64 = r.try_get(2)?;
            match (is_total, poll_id) {
                (true, _) => out.total = holders,
                (false, None) => out.plain_button = holders,
                (false, Some(poll_id)) => out.polls.push(PollHolders { poll_id, holders }),
            }
        }
        Ok::<_, DbError>(out)
    };
    run.await.map_err(|e| ApiError::from_db(e, "active_holds"))
}
