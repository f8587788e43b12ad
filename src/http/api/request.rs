//! What the API reads from a request: who is asking, the body, the poll id in the path.
//!
//! Who is asking: with auth on (a JWT key configured), every request needs a valid token in
//! `Authorization: Bearer` (or an `apikey` header, as supabase-js also sends), and a vote is
//! cast for the token's `sub`, never for anything in the request. With auth off, a write names
//! its user with the `X-User-Id` header (a `profiles.id`), which anyone can forge: a
//! development setup only, as the relay's startup warning says.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use warp::http::HeaderMap;
use warp::Filter;

use crate::auth::{self, AuthError, Verifier};
use crate::http::api::reply::{ApiError, MAX_BODY_BYTES};

/// The identity header of a relay running with auth off (development): a `profiles.id`.
pub const USER_HEADER: &str = "x-user-id";

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `profiles.id` (a uuid in its text form): the token's `sub`, or with auth off the
    /// `X-User-Id` header. `None`: anonymous.
    pub user: Option<String>,
    /// The token's role; `None` with auth off.
    pub role: Option<String>,
    /// Whether auth is on, to say what a refused caller should send.
    pub(super) auth_on: bool,
}

impl Caller {
    /// The user to act for, or why there is none.
    pub(super) fn user(&self) -> Result<&str, ApiError> {
        self.user.as_deref().ok_or_else(|| {
            ApiError::UserRequired(if self.auth_on {
                "this needs a user: the token's sub claim must be a profiles.id (uuid)".into()
            } else {
                "a user is required: send X-User-Id with a profiles.id".into()
            })
        })
    }

    pub(super) fn is_service(&self) -> bool {
        self.role.as_deref() == Some("service_role")
    }
}

/// Identify every request. Never rejects: the error is answered by the handler, so a request
/// to a route that exists is refused with a JSON body rather than falling through to 404.
pub(super) fn caller(
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
pub(super) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Read at most [`MAX_BODY_BYTES`]: refused at once when `Content-Length` says more, and cut
/// off when a body without one grows past it.
pub(super) async fn read_body<S, B>(headers: &HeaderMap, body: S) -> Result<Vec<u8>, ApiError>
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

pub(super) fn parse_poll_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::InvalidPollId(format!("poll id must be an integer, got {raw:?}")))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

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
    fn poll_ids() {
        assert_eq!(parse_poll_id("12"), Ok(12));
        assert_eq!(parse_poll_id("x").unwrap_err().code(), "InvalidPollId");
    }
}
