//! Polls: the list, one poll with its results, and boosting a poll.

use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;

use crate::db::{self, DbError};
use crate::http::api::reply::ApiError;
use crate::http::api::request::parse_poll_id;
use crate::http::query::query_pairs;

/// Polls listed when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: i64 = 100;

/// Most polls one list request returns: a snapshot, not an export.
pub const MAX_LIST_LIMIT: i64 = 1000;

/// A poll as the API shows it. Timestamps are UTC ISO 8601 with microseconds.
#[derive(Debug, Serialize)]
pub struct Poll {
    pub id: i64,
    pub question: String,
    /// The labels, as stored (`polls.options`).
    pub options: Value,
    pub status: String,
    pub created_by: Option<String>,
    pub boost_count: i32,
    pub created_at: String,
    pub closes_at: Option<String>,
    /// `status = 'active'` and not past `closes_at`: what `cast_vote` requires.
    pub accepting_votes: bool,
    /// All votes on the poll (from the cache).
    pub total_votes: i64,
}

/// The columns [`poll_from_row`] reads, in order, for `FROM public.polls p`.
const POLL_COLUMNS: &str = "p.id, p.question, p.options, p.status, p.created_by::text, \
     p.boost_count, \
     to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
     to_char(p.closes_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
     p.status = 'active' AND (p.closes_at IS NULL OR p.closes_at > now()), \
     coalesce((SELECT sum(c.votes) FROM public.poll_option_counts c WHERE c.poll_id = p.id), 0)::int8";

fn poll_from_row(r: &tokio_postgres::Row) -> Result<Poll, tokio_postgres::Error> {
    Ok(Poll {
        id: r.try_get(0)?,
        question: r.try_get(1)?,
        options: r.try_get(2)?,
        status: r.try_get(3)?,
        created_by: r.try_get(4)?,
        boost_count: r.try_get(5)?,
        created_at: r.try_get(6)?,
        closes_at: r.try_get(7)?,
        accepting_votes: r.try_get(8)?,
        total_votes: r.try_get(9)?,
    })
}

#[derive(Debug, Serialize)]
pub struct PollList {
    pub polls: Vec<Poll>,
}

/// `GET /api/v1/polls[?status=draft|active|closed][&limit=N]`: newest first.
pub(super) async fn list_polls(pool: &Pool, query: &str) -> Result<PollList, ApiError> {
    let mut status = None;
    let mut limit = DEFAULT_LIST_LIMIT;
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "status" => match value.as_str() {
                "draft" | "active" | "closed" => status = Some(value),
                _ => {
                    return Err(ApiError::InvalidQuery(format!(
                        "status must be draft, active or closed, got {value:?}"
                    )))
                }
            },
            "limit" => {
                limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::InvalidQuery(format!(
                            "limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {value:?}"
                        ))
                    })?;
            }
            _ => {
                return Err(ApiError::InvalidQuery(format!(
                    "unknown query parameter {key:?} (known: status, limit)"
                )))
            }
        }
    }
    let run = async {
        let client = db::client(pool).await?;
        // Two statements rather than `$1 IS NULL OR status = $1`, so "active" can use the
        // partial index on active polls.
        let rows = match &status {
            Some(s) => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {POLL_COLUMNS} FROM public.polls p WHERE p.status = $1 \
                         ORDER BY p.created_at DESC, p.id DESC LIMIT $2"
                    ))
                    .await?;
                client.query(&stmt, &[s, &limit]).await?
            }
            None => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {POLL_COLUMNS} FROM public.polls p \
                         ORDER BY p.created_at DESC, p.id DESC LIMIT $1"
                    ))
                    .await?;
                client.query(&stmt, &[&limit]).await?
            }
        };
        let polls = rows
            .iter()
            .map(poll_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, DbError>(PollList { polls })
    };
    run.await.map_err(|e| ApiError::from_db(e, "list_polls"))
}

/// One option's result.
#[derive(Debug, Serialize)]
pub struct OptionResult {
    pub option_index: i32,
    /// The label, as stored in `options` (normally a string).
    pub label: Value,
    pub votes: i64,
}

/// A poll with its results.
#[derive(Debug, Serialize)]
pub struct PollWithResults {
    #[serde(flatten)]
    pub poll: Poll,
    /// One entry per element of `options`, in order; counts from `public.poll_option_counts`.
    pub results: Vec<OptionResult>,
}

/// `GET /api/v1/polls/{id}`. One statement, so the poll, its results and `total_votes` come
/// from one snapshot.
pub(super) async fn get_poll(pool: &Pool, raw_id: &str) -> Result<PollWithResults, ApiError> {
    let id = parse_poll_id(raw_id)?;
    let run = async {
        let client = db::client(pool).await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {POLL_COLUMNS}, r.labels, r.votes \
                 FROM public.polls p \
                 CROSS JOIN LATERAL ( \
                     SELECT coalesce(array_agg(o.label ORDER BY o.ord), '{{}}') AS labels, \
                            coalesce(array_agg(coalesce(c.votes, 0) ORDER BY o.ord), '{{}}') AS votes \
                     FROM jsonb_array_elements(p.options) WITH ORDINALITY AS o(label, ord) \
                     LEFT JOIN public.poll_option_counts c \
                            ON c.poll_id = p.id AND c.option_index = o.ord - 1) r \
                 WHERE p.id = $1"
            ))
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
            return Ok(None);
        };
        let poll = poll_from_row(&row)?;
        let labels: Vec<Value> = row.try_get(10)?;
        let votes: Vec<i64> = row.try_get(11)?;
        let results = labels
            .into_iter()
            .zip(votes)
            .zip(0..)
            .map(|((label, votes), option_index)| OptionResult {
                option_index,
                label,
                votes,
            })
            .collect();
        Ok::<_, DbError>(Some(PollWithResults { poll, results }))
    };
    run.await
        .map_err(|e| ApiError::from_db(e, "get_poll"))?
        .ok_or_else(|| ApiError::PollNotFound(format!("poll {id} not found")))
}

/// The new boost count.
#[derive(Debug, Serialize)]
pub struct Boost {
    pub poll_id: i64,
    pub boost_count: i32,
}

/// `POST /api/v1/polls/{id}/boost`: `public.boost_poll` decides. Needs no user (yet).
pub(super) async fn boost_poll(pool: &Pool, raw_id: &str) -> Result<Boost, ApiError> {
    let poll_id = parse_poll_id(raw_id)?;
    let run = async {
        let client = db::client(pool).await?;
        let stmt = client
            .prepare_cached("SELECT public.boost_poll($1)")
            .await?;
        let r = client.query_one(&stmt, &[&poll_id]).await?;
        Ok::<_, DbError>(Boost {
            poll_id,
            boost_count: r.try_get(0)?,
        })
    };
    run.await.map_err(|e| ApiError::from_db(e, "boost_poll"))
}
