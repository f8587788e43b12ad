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
//! Who is asking: with auth on (a JWT key configured), every request needs a valid token in
//! `Authorization: Bearer` (or an `apikey` header, as supabase-js also sends), and a vote is
//! cast for the token's `sub`, never for anything in the request. With auth off, a write names
//! its user with the `X-User-Id` header (a `profiles.id`), which anyone can forge: a
//! development setup only, as the relay's startup warning says.
//!
//! Every route here either answers or rejects as "not this route" (wrong path or method), so the
//! server's routes keep falling through to each other.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Buf;
use deadpool_postgres::Pool;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{error, warn};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::auth::{self, AuthError, Verifier};
use crate::db::{self, DbError};

/// Largest request body read. A vote body is `{"option_index": N}`; anything near this is not
/// a vote, and reading it would only cost memory.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Polls listed when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: i64 = 100;

/// Most polls one list request returns: a snapshot, not an export.
pub const MAX_LIST_LIMIT: i64 = 1000;

/// The identity header of a relay running with auth off (development): a `profiles.id`.
pub const USER_HEADER: &str = "x-user-id";

/// Longest `username` a profile may take.
pub const MAX_USERNAME_CHARS: usize = 64;

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
    /// No user to act for; the text says what to send.
    #[error("{0}")]
    UserRequired(String),
    /// Auth is on and the token is missing or refused (Supabase's texts).
    #[error("{0}")]
    Unauthorized(AuthError),
    /// `POST /api/v1/profiles`: the username or the id is taken.
    #[error("{0}")]
    ProfileExists(String),
    /// The token's role may not do this.
    #[error("{0}")]
    Forbidden(String),
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
            ApiError::UserRequired(_) => "UserRequired",
            ApiError::Unauthorized(e) => e.code(),
            ApiError::ProfileExists(_) => "ProfileExists",
            ApiError::Forbidden(_) => "Forbidden",
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
            ApiError::UserRequired(_) | ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::UnknownUser(_) | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PollNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::AlreadyVoted(_) | ApiError::ProfileExists(_) => StatusCode::CONFLICT,
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
                "23505" if what == "create_profile" => {
                    return ApiError::ProfileExists(match dbe.constraint() {
                        Some(c) if c.contains("username") => "this username is taken".to_owned(),
                        _ => "a profile with this id exists".to_owned(),
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

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `profiles.id` (a uuid in its text form): the token's `sub`, or with auth off the
    /// `X-User-Id` header. `None`: anonymous.
    pub user: Option<String>,
    /// The token's role; `None` with auth off.
    pub role: Option<String>,
    /// Whether auth is on, to say what a refused caller should send.
    auth_on: bool,
}

impl Caller {
    /// The user to act for, or why there is none.
    fn user(&self) -> Result<&str, ApiError> {
        self.user.as_deref().ok_or_else(|| {
            ApiError::UserRequired(if self.auth_on {
                "this needs a user: the token's sub claim must be a profiles.id (uuid)".into()
            } else {
                "a user is required: send X-User-Id with a profiles.id".into()
            })
        })
    }

    fn is_service(&self) -> bool {
        self.role.as_deref() == Some("service_role")
    }
}

/// Identify every request. Never rejects: the error is answered by the handler, so a request
/// to a route that exists is refused with a JSON body rather than falling through to 404.
fn caller(
    auth: Option<Arc<Verifier>>,
) -> impl Filter<Extract = (Result<Caller, ApiError>,), Error = Infallible> + Clone {
    warp::header::headers_cloned()
        .map(move |headers: HeaderMap| caller_from_headers(auth.as_deref(), &headers))
}

fn caller_from_headers(auth: Option<&Verifier>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(verifier) = auth else {
        let user = match headers.get(USER_HEADER) {
            None => None,
            Some(value) => {
                let id = value
                    .to_str()
                    .map_err(|_| ApiError::InvalidUserId)?
                    .trim()
                    .to_ascii_lowercase();
                if !is_uuid(&id) {
                    return Err(ApiError::InvalidUserId);
                }
                Some(id)
            }
        };
        return Ok(Caller {
            user,
            role: None,
            auth_on: false,
        });
    };
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header(warp::http::header::AUTHORIZATION.as_str()).and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .map(str::trim)
    });
    let token = bearer
        .or_else(|| header("apikey"))
        .ok_or(ApiError::Unauthorized(AuthError::Missing))?;
    let claims = verifier
        .verify(token, auth::now())
        .map_err(ApiError::Unauthorized)?;
    // A sub that is not a uuid names no profile: the caller is anonymous for writes.
    let user = claims
        .sub
        .map(|s| s.to_ascii_lowercase())
        .filter(|s| is_uuid(s));
    Ok(Caller {
        user,
        role: Some(claims.role),
        auth_on: true,
    })
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
///
/// `auth`: the token verifier; `None` is auth off (see the module docs).
pub fn routes(
    pool: Pool,
    auth: Option<Arc<Verifier>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let with_pool = warp::any().map(move || pool.clone());
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let caller = caller(auth);

    let list = warp::path!("api" / "v1" / "polls")
        .and(warp::get())
        .and(caller.clone())
        .and(raw_query)
        .and(with_pool.clone())
        .then(
            |who: Result<Caller, ApiError>, query: String, pool: Pool| async move {
                answer(async { list_polls(&pool, &query).await }, who).await
            },
        );
    let one = warp::path!("api" / "v1" / "polls" / String)
        .and(warp::get())
        .and(caller.clone())
        .and(with_pool.clone())
        .then(|id: String, who, pool: Pool| async move {
            answer(async { get_poll(&pool, &id).await }, who).await
        });
    let vote =
        warp::path!("api" / "v1" / "polls" / String / "votes")
            .and(warp::post())
            .and(caller.clone())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .and(with_pool.clone())
            .then(
                |id: String,
                 who: Result<Caller, ApiError>,
                 headers: HeaderMap,
                 body,
                 pool: Pool| async move {
                    match cast_vote(&pool, &id, who, &headers, body).await {
                        Ok(vote) => reply(&vote, StatusCode::CREATED),
                        Err(e) => e.into_response(),
                    }
                },
            );
    let boost = warp::path!("api" / "v1" / "polls" / String / "boost")
        .and(warp::post())
        .and(caller.clone())
        .and(with_pool.clone())
        .then(|id: String, who, pool: Pool| async move {
            answer(async { boost_poll(&pool, &id).await }, who).await
        });
    let stats = warp::path!("api" / "v1" / "stats")
        .and(warp::get())
        .and(caller.clone())
        .and(with_pool.clone())
        .then(|who, pool: Pool| async move { answer(async { app_stats(&pool).await }, who).await });
    let holds = warp::path!("api" / "v1" / "holds" / "active")
        .and(warp::get())
        .and(caller.clone())
        .and(with_pool.clone())
        .then(
            |who, pool: Pool| async move { answer(async { active_holds(&pool).await }, who).await },
        );
    let profiles = warp::path!("api" / "v1" / "profiles")
        .and(warp::post())
        .and(caller)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_pool)
        .then(
            |who: Result<Caller, ApiError>, headers: HeaderMap, body, pool: Pool| async move {
                match create_profile(&pool, who, &headers, body).await {
                    Ok(profile) => reply(&profile, StatusCode::CREATED),
                    Err(e) => e.into_response(),
                }
            },
        );

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
        .or(profiles)
        .unify()
}

/// Run `work` for an identified caller and answer 200 with its JSON, or the error.
async fn answer<T: Serialize>(
    work: impl std::future::Future<Output = Result<T, ApiError>>,
    who: Result<Caller, ApiError>,
) -> Response {
    let result = match who {
        Ok(_) => work.await,
        Err(e) => Err(e),
    };
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
    who: Result<Caller, ApiError>,
    headers: &HeaderMap,
    body: S,
) -> Result<Vote, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let who = who?;
    let poll_id = parse_poll_id(raw_id)?;
    let user = who.user()?;
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
            .query_one(&stmt, &[&poll_id, &user, &option_index])
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

/// A profile as stored.
#[derive(Debug, Serialize)]
pub struct Profile {
    pub id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub created_at: String,
}

/// `POST /api/v1/profiles` with `{"username": "…", "display_name"?: "…", "id"?: "<uuid>"}`.
///
/// With auth on, a user creates its own profile: the id is the token's `sub` (a body `id`
/// must match it); only `service_role` may name another id or leave it to the database.
/// With auth off (development), the body's `id`, or a new one.
async fn create_profile<S, B>(
    pool: &Pool,
    who: Result<Caller, ApiError>,
    headers: &HeaderMap,
    body: S,
) -> Result<Profile, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let who = who?;
    let body = read_body(headers, body).await?;
    let req = parse_profile_body(&body)?;
    let id = if who.auth_on && !who.is_service() {
        let sub = who.user()?;
        if req.id.as_deref().is_some_and(|id| id != sub) {
            return Err(ApiError::Forbidden(
                "a profile's id is the token's sub: only service_role may create others".into(),
            ));
        }
        Some(sub.to_owned())
    } else {
        req.id
    };
    let run = async {
        let client = db::client(pool).await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO public.profiles (id, username, display_name) \
                 VALUES (coalesce($1::text::uuid, gen_random_uuid()), $2, $3) \
                 RETURNING id::text, username, display_name, \
                   to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            )
            .await?;
        let r = client
            .query_one(&stmt, &[&id, &req.username, &req.display_name])
            .await?;
        Ok::<_, DbError>(Profile {
            id: r.try_get(0)?,
            username: r.try_get(1)?,
            display_name: r.try_get(2)?,
            created_at: r.try_get(3)?,
        })
    };
    run.await
        .map_err(|e| ApiError::from_db(e, "create_profile"))
}

#[derive(Debug, PartialEq, Eq)]
struct ProfileRequest {
    id: Option<String>,
    username: String,
    display_name: Option<String>,
}

fn parse_profile_body(body: &[u8]) -> Result<ProfileRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidBody(format!("body is not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| {
        ApiError::InvalidBody("body must be a JSON object with \"username\"".into())
    })?;
    let text = |key: &str| -> Result<Option<String>, ApiError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(other) => Err(ApiError::InvalidBody(format!(
                "{key} must be a string, got {other}"
            ))),
        }
    };
    let username = text("username")?
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::InvalidBody("username is required".into()))?;
    if username.chars().count() > MAX_USERNAME_CHARS {
        return Err(ApiError::InvalidBody(format!(
            "username is longer than {MAX_USERNAME_CHARS} characters"
        )));
    }
    let display_name = text("display_name")?.filter(|d| !d.is_empty());
    if display_name
        .as_ref()
        .is_some_and(|d| d.chars().count() > 4 * MAX_USERNAME_CHARS)
    {
        return Err(ApiError::InvalidBody(format!(
            "display_name is longer than {} characters",
            4 * MAX_USERNAME_CHARS
        )));
    }
    let id = text("id")?.map(|i| i.to_ascii_lowercase());
    if id.as_deref().is_some_and(|i| !is_uuid(i)) {
        return Err(ApiError::InvalidBody("id must be a uuid".into()));
    }
    Ok(ProfileRequest {
        id,
        username,
        display_name,
    })
}

/// `a=1&b=x%20y` → pairs, percent-decoded (shared with the socket's query parsing).
fn parse_query(q: &str) -> Vec<(String, String)> {
    crate::http::query::query_pairs(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_without_auth() {
        let mut h = HeaderMap::new();
        let anon = caller_from_headers(None, &h).unwrap();
        assert_eq!(anon.user, None);
        assert_eq!(anon.user().unwrap_err().code(), "UserRequired");
        h.insert(USER_HEADER, "not-a-uuid".parse().unwrap());
        assert_eq!(caller_from_headers(None, &h), Err(ApiError::InvalidUserId));
        h.insert(
            USER_HEADER,
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11".parse().unwrap(),
        );
        assert_eq!(
            caller_from_headers(None, &h).unwrap().user.as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert!(!is_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g"));
        assert!(!is_uuid("a0eebc999c0b-4ef8-bb6d-6bb9bd380a11-"));
    }

    #[test]
    fn callers_with_auth_come_from_the_token_only() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let v = Verifier::hs256("k");
        let sign = |claims: Value| {
            encode(&Header::default(), &claims, &EncodingKey::from_secret(b"k")).unwrap()
        };
        let exp = auth::now() + 600;
        let user = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let mut h = HeaderMap::new();
        // The header identity means nothing with auth on.
        h.insert(USER_HEADER, user.parse().unwrap());
        let e = caller_from_headers(Some(&v), &h).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (401, "InvalidJWTToken"));
        assert_eq!(e.to_string(), "API key is missing");

        let t = sign(json!({"sub": user, "role": "authenticated", "exp": exp}));
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        let c = caller_from_headers(Some(&v), &h).unwrap();
        assert_eq!(c.user.as_deref(), Some(user));
        assert_eq!(c.role.as_deref(), Some("authenticated"));

        let anon = sign(json!({"role": "anon", "exp": exp}));
        h.insert("authorization", format!("Bearer {anon}").parse().unwrap());
        let c = caller_from_headers(Some(&v), &h).unwrap();
        assert_eq!(c.user, None);
        assert!(c.user().unwrap_err().to_string().contains("sub claim"));

        let forged = encode(
            &Header::default(),
            &json!({"sub": user, "role": "service_role", "exp": exp}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        h.remove("authorization");
        h.insert("apikey", forged.parse().unwrap());
        let e = caller_from_headers(Some(&v), &h).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (401, "JwtSignatureError"));
    }

    #[test]
    fn profile_bodies() {
        assert_eq!(
            parse_profile_body(br#"{"username": " ann ", "display_name": ""}"#),
            Ok(ProfileRequest {
                id: None,
                username: "ann".into(),
                display_name: None
            })
        );
        for bad in [
            &br#"{"username": ""}"#[..],
            br#"{"username": 3}"#,
            br#"{"display_name": "x"}"#,
            br#"{"username": "a", "id": "nope"}"#,
            br#"[]"#,
            b"{",
        ] {
            assert_eq!(
                parse_profile_body(bad).unwrap_err().code(),
                "InvalidBody",
                "{bad:?}"
            );
        }
        let long = format!(
            r#"{{"username": "{}"}}"#,
            "x".repeat(MAX_USERNAME_CHARS + 1)
        );
        assert!(parse_profile_body(long.as_bytes()).is_err());
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
            (ApiError::UserRequired(String::new()), 401, "UserRequired"),
            (ApiError::ProfileExists(String::new()), 409, "ProfileExists"),
            (ApiError::Forbidden(String::new()), 403, "Forbidden"),
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
