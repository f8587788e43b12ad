//! Creating a profile: who may create which id, and the body's shape.

use bytes::Buf;
use deadpool_postgres::Pool;
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use warp::http::HeaderMap;

use crate::db::{self, DbError};
use crate::http::api::reply::ApiError;
use crate::http::api::request::{is_uuid, read_body, Caller};

/// Longest `username` a profile may take.
pub const MAX_USERNAME_CHARS: usize = 64;

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
pub(super) async fn create_profile<S, B>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
