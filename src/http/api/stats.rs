//! The app totals (`public.app_stats`).

use deadpool_postgres::Pool;
use serde::Serialize;

use crate::db::{self, DbError};
use crate::http::api::reply::ApiError;

/// The app totals (`public.app_stats`).
#[derive(Debug, Serialize)]
pub struct Stats {
    pub polls: i64,
    pub active_polls: i64,
    pub votes: i64,
    pub users: i64,
    pub boosts: i64,
}

/// `GET /api/v1/stats`.
pub(super) async fn app_stats(pool: &Pool) -> Result<Stats, ApiError> {
    let run = async {
        let client = db::client(pool).await?;
        let stmt = client
            .prepare_cached(
                "SELECT polls, active_polls, votes, users, boosts FROM public.app_stats",
            )
            .await?;
        let r = client.query_one(&stmt, &[]).await?;
        Ok::<_, DbError>(Stats {
            polls: r.try_get(0)?,
            active_polls: r.try_get(1)?,
            votes: r.try_get(2)?,
            users: r.try_get(3)?,
            boosts: r.try_get(4)?,
        })
    };
    run.await.map_err(|e| ApiError::from_db(e, "app_stats"))
}
