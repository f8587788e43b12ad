//! The polling app's HTTP JSON API under `/api/v1`: polls with their results, the app totals,
//! the active holders, casting a vote and boosting a poll. It is also the app's fallback when
//! its socket is down (APP.md "Fallback polling").
//!
//! The rules live in SQL (`sql/V4__polls_domain.sql`, owned by DBAs): this module validates the
//! request's shape, calls `public.cast_vote` / `public.boost_poll` or reads the cache tables,
//! and maps each refusal's SQLSTATE (`PV001`…`PV006`) to a status and a stable PascalCase code.
//! Every answer, errors included, is JSON; errors are `{"error": "…", "code": "…"}`. Unexpected
//! database errors are logged with their cause and answered with a generic 500: SQL text never
//! reaches a client.
//!
//! Every route here either answers or rejects as "not this route" (wrong path or method), so the
//! server's routes keep falling through to each other.

use std::convert::Infallible;

use bytes::Buf;
use deadpool_postgres::Pool;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{error, warn};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::db::{self, DbError};

/// Largest request body read. A vote body is `{"option_index": N}`; anything near this is not
/// a vote, and reading it would only cost memory.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Polls listed when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: i64 = 100;

/// Most polls one list request returns: a snapshot, not an export.
pub const MAX_LIST_LIMIT: i64 = 1000;

/// TEMPORARY identity header, read by [`user`] until JWT auth lands.
pub const USER_HEADER: &str = "x-user-id";

/// The refusals and failures of the API, each with its HTTP status and PascalCase code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidPollId(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("X-User-Id must be a uuid")]
    InvalidUserId,
    #[error("request body over {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    #[error("a user is required: send X-User-Id")]
    UserRequired,
    /// PV006: the user is not a profile.
    #[error("{0}")]
    UnknownUser(String),
    /// PV001.
    #[error("{0}")]
    PollNotFound(String),
    /// PV004, or the unique violation behind it.
    #[error("{0}")]
    AlreadyVoted(String),
    /// PV002: not `active`, or past `closes_at`.
    #[error("{0}")]
    PollNotActive(String),
    /// PV003.
    #[error("{0}")]
    NoSuchOption(String),
    /// PV005: no hold, or one shorter than `public.vote_hold_min_ms()`.
    #[error("{0}")]
    HoldTooShort(String),
    /// No database connection (pool exhausted or server down): worth retrying.
    #[error("the database is unavailable, try again")]
    Unavailable,
    /// Anything else; the cause is logged, not sent.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The stable code clients switch on (ERROR_CODES.md).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidPollId(_) => "InvalidPollId",
            ApiError::InvalidQuery(_) => "InvalidQuery",
            ApiError::InvalidBody(_) => "InvalidBody",
            ApiError::InvalidUserId => "InvalidUserId",
            ApiError::PayloadTooLarge => "PayloadTooLarge",
            ApiError::UserRequired => "UserRequired",
            ApiError::UnknownUser(_) => "UnknownUser",
            ApiError::PollNotFound(_) => "PollNotFound",
            ApiError::AlreadyVoted(_) => "AlreadyVoted",
            ApiError::PollNotActive(_) => "PollNotActive",
            ApiError::NoSuchOption(_) => "NoSuchOption",
            ApiError::HoldTooShort(_) => "HoldTooShort",
            ApiError::Unavailable => "DatabaseUnavailable",
            ApiError::Internal => "InternalError",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidPollId(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidBody(_)
            | ApiError::InvalidUserId => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UserRequired => StatusCode::UNAUTHORIZED,
            ApiError::UnknownUser(_) => StatusCode::FORBIDDEN,
            ApiError::PollNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::AlreadyVoted(_) => StatusCode::CONFLICT,
            ApiError::PollNotActive(_) | ApiError::NoSuchOption(_) | ApiError::HoldTooShort(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Map a database error. The domain refusals carry the function's own message (written in
    /// the migration, never SQL text); anything unexpected is logged under `what` and becomes
    /// [`ApiError::Internal`].
    fn from_db(err: DbError, what: &'static str) -> ApiError {
        let q = match err {
            DbError::Query(q) => q,
            DbError::Pool(cause) => {
                warn!(cause = %cause, error_code = "DatabaseUnavailable", what, "api: no database connection");
                return ApiError::Unavailable;
            }
            other => {
                error!(cause = %other, error_code = "InternalError", what, "api request failed");
                return ApiError::Internal;
            }
        };
        if let Some(dbe) = q.as_db_error() {
            let message = dbe.message().to_owned();
            match dbe.code().code() {
                "PV001" => return ApiError::PollNotFound(message),
                "PV002" => return ApiError::PollNotActive(message),
                "PV003" => return ApiError::NoSuchOption(message),
                // 23505: the unique (poll_id, user_id) of user_votes, should a DBA's version of
                // cast_vote let it through instead of raising PV004.
                "PV004" | "23505" if what == "cast_vote" => {
                    return ApiError::AlreadyVoted(if dbe.code().code() == "PV004" {
                        message
                    } else {
                        "this user already voted on this poll".into()
                    })
                }
                "PV005" => return ApiError::HoldTooShort(message),
                "PV006" => return ApiError::UnknownUser(message),
                _ => {}
            }
        }
        if q.is_closed() {
            warn!(cause = %db::db_cause(&q), error_code = "DatabaseUnavailable", what, "api: database connection lost");
            return ApiError::Unavailable;
        }
        error!(cause = %db::db_cause(&q), error_code = "InternalError", what, "api request failed");
        ApiError::Internal
    }

    fn into_response(self) -> Response {
        let body = json!({ "error": self.to_string(), "code": self.code() });
        reply(&body, self.status())
    }
}

/// The user a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `profiles.id`, a uuid in its text form.
    pub id: String,
}

/// The identity seam. TEMPORARY: the user comes from the `X-User-Id` header (a `profiles.id`),
/// which anyone can forge; it stands in until JWT auth (issue 6, item 4) replaces this filter
/// with one taking `sub` from a verified `Authorization: Bearer` token. No other code here reads
/// the identity, so that swap touches only this function.
///
/// Never rejects: an absent header is [`ApiError::UserRequired`] (401), a malformed one
/// [`ApiError::InvalidUserId`] (400), for the handler to answer.
pub fn user() -> impl Filter<Extract = (Result<User, ApiError>,), Error = Infallible> + Clone {
    warp::header::headers_cloned().map(|headers: HeaderMap| user_from_headers(&headers))
}

fn user_from_headers(headers: &HeaderMap) -> Result<User, ApiError> {
    let Some(value) = headers.get(USER_HEADER) else {
        return Err(ApiError::UserRequired);
    };
    let id = value
        .to_str()
        .map_err(|_| ApiError::InvalidUserId)?
        .trim()
        .to_ascii_lowercase();
    if !is_uuid(&id) {
        return Err(ApiError::InvalidUserId);
    }
    Ok(User { id })
}

/// `8-4-4-4-12` hex digits, the text form PostgreSQL accepts and prints.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The API's routes. Each answers every request it matches by path and method (with an error
/// body when the request is bad); other requests are rejected for the next route to try.
pub fn routes(
    pool: Pool,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let with_pool = warp::any().map(move || pool.clone());
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();

    let list = warp::path!("api" / "v1" / "polls")
        .and(warp::get())
        .and(raw_query)
        .and(with_pool.clone())
        .then(|query: String, pool: Pool| async move { answer(list_polls(&pool, &query).await) });
    let one = warp::path!("api" / "v1" / "polls" / String)
        .and(warp::get())
        .and(with_pool.clone())
        .then(|id: String, pool: Pool| async move { answer(get_poll(&pool, &id).await) });
    let vote = warp::path!("api" / "v1" / "polls" / String / "votes")
        .and(warp::post())
        .and(user())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_pool.clone())
        .then(
            |id: String, user: Result<User, ApiError>, headers: HeaderMap, body, pool: Pool| async move {
                match cast_vote(&pool, &id, user, &headers, body).await {
                    Ok(vote) => reply(&vote, StatusCode::CREATED),
                    Err(e) => e.into_response(),
                }
            },
        );
    let boost = warp::path!("api" / "v1" / "polls" / String / "boost")
        .and(warp::post())
        .and(with_pool.clone())
        .then(|id: String, pool: Pool| async move { answer(boost_poll(&pool, &id).await) });
    let stats = warp::path!("api" / "v1" / "stats")
        .and(warp::get())
        .and(with_pool.clone())
        .then(|pool: Pool| async move { answer(app_stats(&pool).await) });
    let holds = warp::path!("api" / "v1" / "holds" / "active")
        .and(warp::get())
        .and(with_pool)
        .then(|pool: Pool| async move { answer(active_holds(&pool).await) });

    list.or(one)
        .unify()
        .or(vote)
        .unify()
        .or(boost)
        .unify()
        .or(stats)
        .unify()
        .or(holds)
        .unify()
}

fn answer<T: Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(body) => reply(&body, StatusCode::OK),
        Err(e) => e.into_response(),
    }
}

/// JSON with a status. `no-store`: these are live figures, and the fallback poller must see
/// fresh ones every time.
fn reply<T: Serialize>(body: &T, status: StatusCode) -> Response {
    let mut response = warp::reply::with_status(warp::reply::json(body), status).into_response();
    response.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    response
}

fn parse_poll_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::InvalidPollId(format!("poll id must be an integer, got {raw:?}")))
}

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
async fn list_polls(pool: &Pool, query: &str) -> Result<PollList, ApiError> {
    let mut status = None;
    let mut limit = DEFAULT_LIST_LIMIT;
    for (key, value) in parse_query(query) {
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
async fn get_poll(pool: &Pool, raw_id: &str) -> Result<PollWithResults, ApiError> {
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
async fn app_stats(pool: &Pool) -> Result<Stats, ApiError> {
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
async fn active_holds(pool: &Pool) -> Result<ActiveHolds, ApiError> {
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

/// A vote as stored.
#[derive(Debug, Serialize)]
pub struct Vote {
    pub id: i64,
    pub poll_id: i64,
    pub user_id: String,
    pub option_index: i32,
    pub hold_ms: i32,
    pub created_at: String,
}

/// `POST /api/v1/polls/{id}/votes` with `{"option_index": N}`: `public.cast_vote` decides.
/// The request's own faults (id, user, body) are answered before the database is asked.
async fn cast_vote<S, B>(
    pool: &Pool,
    raw_id: &str,
    user: Result<User, ApiError>,
    headers: &HeaderMap,
    body: S,
) -> Result<Vote, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let poll_id = parse_poll_id(raw_id)?;
    let user = user?;
    let body = read_body(headers, body).await?;
    let option_index = parse_vote_body(&body)?;
    let run = async {
        let client = db::client(pool).await?;
        let stmt = client
            .prepare_cached(
                "SELECT v.id, v.poll_id, v.user_id::text, v.option_index, v.hold_ms, \
                        to_char(v.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                 FROM public.cast_vote($1, $2::text::uuid, $3) v",
            )
            .await?;
        let r = client
            .query_one(&stmt, &[&poll_id, &user.id, &option_index])
            .await?;
        Ok::<_, DbError>(Vote {
            id: r.try_get(0)?,
            poll_id: r.try_get(1)?,
            user_id: r.try_get(2)?,
            option_index: r.try_get(3)?,
            hold_ms: r.try_get(4)?,
            created_at: r.try_get(5)?,
        })
    };
    run.await.map_err(|e| ApiError::from_db(e, "cast_vote"))
}

/// `{"option_index": N}` with N a 32-bit integer (range and existence are the SQL rule's).
fn parse_vote_body(body: &[u8]) -> Result<i32, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidBody(format!("body is not valid JSON: {e}")))?;
    let field = value
        .as_object()
        .and_then(|o| o.get("option_index"))
        .ok_or_else(|| {
            ApiError::InvalidBody("body must be a JSON object with \"option_index\"".into())
        })?;
    field
        .as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::InvalidBody(format!(
                "option_index must be a 32-bit integer, got {field}"
            ))
        })
}

/// Read at most [`MAX_BODY_BYTES`]: refused at once when `Content-Length` says more, and cut
/// off when a body without one grows past it.
async fn read_body<S, B>(headers: &HeaderMap, body: S) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut out = Vec::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::InvalidBody(format!("cannot read the body: {e}")))?;
        if out.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        while chunk.has_remaining() {
            let bytes = chunk.chunk();
            let n = bytes.len();
            out.extend_from_slice(bytes);
            chunk.advance(n);
        }
    }
    Ok(out)
}

/// The new boost count.
#[derive(Debug, Serialize)]
pub struct Boost {
    pub poll_id: i64,
    pub boost_count: i32,
}

/// `POST /api/v1/polls/{id}/boost`: `public.boost_poll` decides. Needs no user (yet).
async fn boost_poll(pool: &Pool, raw_id: &str) -> Result<Boost, ApiError> {
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

/// `a=1&b=x%20y` → pairs, percent-decoded (shared with the socket's query parsing).
fn parse_query(q: &str) -> Vec<(String, String)> {
    crate::server::query_pairs(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_header() {
        let mut h = HeaderMap::new();
        assert_eq!(user_from_headers(&h), Err(ApiError::UserRequired));
        h.insert(USER_HEADER, "not-a-uuid".parse().unwrap());
        assert_eq!(user_from_headers(&h), Err(ApiError::InvalidUserId));
        h.insert(
            USER_HEADER,
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11".parse().unwrap(),
        );
        assert_eq!(
            user_from_headers(&h),
            Ok(User {
                id: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()
            })
        );
        assert!(!is_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g"));
        assert!(!is_uuid("a0eebc999c0b-4ef8-bb6d-6bb9bd380a11-"));
    }

    #[test]
    fn vote_bodies() {
        assert_eq!(parse_vote_body(br#"{"option_index": 2}"#), Ok(2));
        assert_eq!(parse_vote_body(br#"{"option_index": -1}"#), Ok(-1));
        for bad in [
            &br#"{"option_index": "2"}"#[..],
            br#"{"option_index": 1.5}"#,
            br#"{"option_index": 99999999999}"#,
            br#"{"option": 1}"#,
            br#"[1]"#,
            br#"{"option_index": 1"#,
            b"",
        ] {
            let e = parse_vote_body(bad).unwrap_err();
            assert_eq!(e.code(), "InvalidBody", "{bad:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn statuses_and_codes() {
        for (e, status, code) in [
            (ApiError::UserRequired, 401, "UserRequired"),
            (ApiError::PollNotFound(String::new()), 404, "PollNotFound"),
            (ApiError::AlreadyVoted(String::new()), 409, "AlreadyVoted"),
            (ApiError::HoldTooShort(String::new()), 422, "HoldTooShort"),
            (ApiError::PollNotActive(String::new()), 422, "PollNotActive"),
            (ApiError::NoSuchOption(String::new()), 422, "NoSuchOption"),
            (ApiError::UnknownUser(String::new()), 403, "UnknownUser"),
            (ApiError::PayloadTooLarge, 413, "PayloadTooLarge"),
            (ApiError::Internal, 500, "InternalError"),
        ] {
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.code(), code);
        }
        assert_eq!(ApiError::Internal.to_string(), "internal error");
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query("status=active&limit=5&x=a%20b+c"),
            vec![
                ("status".into(), "active".into()),
                ("limit".into(), "5".into()),
                ("x".into(), "a b c".into())
            ]
        );
        assert_eq!(parse_poll_id("12"), Ok(12));
        assert_eq!(parse_poll_id("x").unwrap_err().code(), "InvalidPollId");
    }
}
