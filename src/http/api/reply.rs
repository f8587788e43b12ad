//! How the API answers: every answer, errors included, is JSON with `Cache-Control: no-store`
//! ([`reply`]); errors are `{"error": "…", "code": "…"}` ([`ApiError`]). Unexpected database
//! errors are logged with their cause and answered with a generic 500: SQL text never reaches
//! a client.

use serde::Serialize;
use serde_json::json;
use tracing::{error, warn};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::auth::AuthError;
use crate::db::{self, DbError};

/// Largest request body read. A vote body is `{"option_index": N}`; anything near this is not
/// a vote, and reading it would only cost memory. Defined beside the refusal whose text names
/// it ([`ApiError::PayloadTooLarge`]); `request::read_body` enforces it.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

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
    /// Opening or closing a poll whose status does not allow it (`poll_admin`).
    #[error("{0}")]
    InvalidTransition(String),
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
            ApiError::InvalidTransition(_) => "InvalidTransition",
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
            ApiError::AlreadyVoted(_)
            | ApiError::ProfileExists(_)
            | ApiError::InvalidTransition(_) => StatusCode::CONFLICT,
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
    pub(super) fn from_db(err: DbError, what: &'static str) -> ApiError {
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

    pub(super) fn into_response(self) -> Response {
        let body = json!({ "error": self.to_string(), "code": self.code() });
        reply(&body, self.status())
    }
}

/// JSON with a status. `no-store`: these are live figures, and the fallback poller must see
/// fresh ones every time.
pub(super) fn reply<T: Serialize>(body: &T, status: StatusCode) -> Response {
    let mut response = warp::reply::with_status(warp::reply::json(body), status).into_response();
    response.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (
                ApiError::InvalidTransition(String::new()),
                409,
                "InvalidTransition",
            ),
            (ApiError::UnknownUser(String::new()), 403, "UnknownUser"),
            (ApiError::PayloadTooLarge, 413, "PayloadTooLarge"),
            (ApiError::Internal, 500, "InternalError"),
        ] {
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.code(), code);
        }
        assert_eq!(ApiError::Internal.to_string(), "internal error");
    }
}
