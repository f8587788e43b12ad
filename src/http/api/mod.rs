//! The polling app's HTTP JSON API under `/api/v1`: polls with their results, the app totals,
//! the active holders, casting a vote, boosting a poll and creating a profile. It is also the
//! app's fallback when its socket is down (docs/app.md, "Fallback polling").
//!
//! The rules live in SQL (`sql/V4__polls_domain.sql`, owned by DBAs): this folder validates the
//! request's shape, calls `public.cast_vote` / `public.boost_poll` or reads the cache tables,
//! and maps each refusal's SQLSTATE (`PV001`…`PV006`) to a status and a stable PascalCase code.
//!
//! Every route here either answers or rejects as "not this route" (wrong path or method), so the
//! server's routes keep falling through to each other.
//!
//! - this file: the route table ([`routes`]), from path and method to handler.
//! - `reply`: how every answer goes out: JSON with `no-store`, and [`ApiError`], each refusal
//!   and failure with its status and code, database errors mapped to them.
//! - `request`: what is read from a request: who is asking ([`Caller`], from the token or the
//!   development header), the body (bounded), the poll id in the path.
//! - one file per resource, with its SQL and response types: `polls` (the list, one poll with
//!   its results, boosting), `poll_admin` (creating, opening and closing polls), `votes`,
//!   `holds` (the active holders), `stats` (the app totals), `profiles`.
//!
//! The resource files use `reply` and `request`, never each other or this file; only the
//! route table uses them.

mod holds;
mod poll_admin;
mod polls;
mod profiles;
mod reply;
mod request;
mod stats;
mod votes;

use std::convert::Infallible;
use std::sync::Arc;

use deadpool_postgres::Pool;
use serde::Serialize;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::auth::Verifier;

pub use holds::{ActiveHolds, PollHolders};
pub use poll_admin::{MAX_OPTIONS, MAX_OPTION_CHARS, MAX_QUESTION_CHARS};
pub use polls::{
    Boost, OptionResult, Poll, PollList, PollWithResults, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT,
};
pub use profiles::{Profile, MAX_USERNAME_CHARS};
pub use reply::{ApiError, MAX_BODY_BYTES};
pub use request::{Caller, USER_HEADER};
pub use stats::Stats;
pub use votes::Vote;

use holds::active_holds;
use poll_admin::{change_status, create_poll, Transition};
use polls::{boost_poll, get_poll, list_polls};
use profiles::create_profile;
use reply::reply;
use request::caller;
use stats::app_stats;
use votes::cast_vote;

/// The API's routes. Each answers every request it matches by path and method (with an error
/// body when the request is bad); other requests are rejected for the next route to try.
///
/// `pool` takes the writes (votes, boosts, profiles); `read_pool` the reads (the same pool
/// unless `PGRELAY_READ_URL` names a standby). `auth`: the token verifier; `None` is auth off
/// (see `request`).
pub fn routes(
    pool: Pool,
    read_pool: Pool,
    auth: Option<Arc<Verifier>>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let with_pool = warp::any().map(move || pool.clone());
    let with_read_pool = warp::any().map(move || read_pool.clone());
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let caller = caller(auth);
    let admin = admin_routes(with_pool.clone(), caller.clone());

    let list = warp::path!("api" / "v1" / "polls")
        .and(warp::get())
        .and(caller.clone())
        .and(raw_query)
        .and(with_read_pool.clone())
        .then(
            |who: Result<Caller, ApiError>, query: String, pool: Pool| async move {
                answer(async { list_polls(&pool, &query).await }, who).await
            },
        );
    let one = warp::path!("api" / "v1" / "polls" / String)
        .and(warp::get())
        .and(caller.clone())
        .and(with_read_pool.clone())
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
        .and(with_read_pool.clone())
        .then(|who, pool: Pool| async move { answer(async { app_stats(&pool).await }, who).await });
    let holds = warp::path!("api" / "v1" / "holds" / "active")
        .and(warp::get())
        .and(caller.clone())
        .and(with_read_pool)
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
        .or(admin)
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

/// `POST /api/v1/polls` (201), `POST /api/v1/polls/{id}/open` and `…/close` (200): each
/// answers with the poll as `GET /api/v1/polls/{id}` shows it.
fn admin_routes(
    with_pool: impl Filter<Extract = (Pool,), Error = Infallible> + Clone + Send + Sync + 'static,
    caller: impl Filter<Extract = (Result<Caller, ApiError>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let create = warp::path!("api" / "v1" / "polls")
        .and(warp::post())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_pool.clone())
        .then(
            |who: Result<Caller, ApiError>, headers: HeaderMap, body, pool: Pool| async move {
                match create_poll(&pool, who, &headers, body).await {
                    Ok(id) => the_poll(&pool, id, StatusCode::CREATED).await,
                    Err(e) => e.into_response(),
                }
            },
        );
    let transition = warp::path!("api" / "v1" / "polls" / String / String)
        .and(warp::post())
        .and_then(|id: String, action: String| async move {
            match action.as_str() {
                "open" => Ok((id, Transition::Open)),
                "close" => Ok((id, Transition::Close)),
                _ => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(caller)
        .and(with_pool)
        .then(|id: String, transition, who, pool: Pool| async move {
            match change_status(&pool, who, &id, transition).await {
                Ok(id) => the_poll(&pool, id, StatusCode::OK).await,
                Err(e) => e.into_response(),
            }
        });
    create.or(transition).unify()
}

/// The poll as `GET /api/v1/polls/{id}` shows it, with `status`.
async fn the_poll(pool: &Pool, id: i64, status: StatusCode) -> Response {
    match get_poll(pool, &id.to_string()).await {
        Ok(poll) => reply(&poll, status),
        Err(e) => e.into_response(),
    }
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
