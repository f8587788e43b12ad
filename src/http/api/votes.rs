//! Casting a vote: the body's shape is checked here, every rule by `public.cast_vote`.

use bytes::Buf;
use deadpool_postgres::Pool;
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use warp::http::HeaderMap;

use crate::db::{self, DbError};
use crate::http::api::reply::ApiError;
use crate::http::api::request::{parse_poll_id, read_body, Caller};

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
pub(super) async fn cast_vote<S, B>(
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

#[cfg(test)]
mod tests {
    use warp::http::StatusCode;

    use super::*;

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
}
