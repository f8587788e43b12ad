//! Creating, opening and closing polls: the app's administrative writes. With auth on only a
//! `service_role` token may make them; with auth off anyone may (development, as for every
//! write).
//!
//! A poll's states are those of `public.polls.status` (sql/V1__reference_schema.sql): `draft`
//! (the column's default; voters do not see it), `active` (takes votes until `closes_at`) and
//! `closed`. The API moves a poll forward only: it is created `draft` or `active`, opened from
//! `draft` to `active`, and closed from `draft` or `active` to `closed`, which is final.
//! Anything else is refused with `InvalidTransition` (409) naming the poll's status.
//!
//! Each handler returns the poll's id; the route table answers with the poll as
//! `GET /api/v1/polls/{id}` shows it.

use bytes::Buf;
use deadpool_postgres::Pool;
use futures_util::Stream;
use serde_json::Value;
use warp::http::HeaderMap;

use crate::db::{self, DbError};
use crate::http::api::reply::ApiError;
use crate::http::api::request::{parse_poll_id, read_body, Caller};

/// Longest question, in characters.
pub const MAX_QUESTION_CHARS: usize = 500;
/// Longest option label, in characters.
pub const MAX_OPTION_CHARS: usize = 200;
/// Options a poll may have: at least 2, at most this many.
pub const MAX_OPTIONS: usize = 20;

/// A request to move a poll to another status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// `draft` → `active`.
    Open,
    /// `draft` or `active` → `closed`.
    Close,
}

impl Transition {
    fn target(self) -> &'static str {
        match self {
            Transition::Open => "active",
            Transition::Close => "closed",
        }
    }

    /// Whether a poll in `from` may take this transition; if not, why.
    fn check(self, id: i64, from: &str) -> Result<(), ApiError> {
        let refuse = |why: String| Err(ApiError::InvalidTransition(why));
        match (self, from) {
            (Transition::Open, "draft") | (Transition::Close, "draft" | "active") => Ok(()),
            (Transition::Open, "active") => refuse(format!("poll {id} is already active")),
            (Transition::Close, "closed") => refuse(format!("poll {id} is already closed")),
            (Transition::Open, "closed") => refuse(format!(
                "poll {id} is closed, which is final: create a new poll instead"
            )),
            (_, other) => refuse(format!(
                "poll {id} is {other:?}: only draft polls can be opened, and draft or active \
                 ones closed"
            )),
        }
    }
}

/// With auth on, only `service_role` administers polls.
fn may_administer(who: &Caller) -> Result<(), ApiError> {
    if who.auth_on && !who.is_service() {
        return Err(ApiError::Forbidden(
            "only service_role may create, open or close polls".into(),
        ));
    }
    Ok(())
}

/// A validated `POST /api/v1/polls` body.
#[derive(Debug, PartialEq)]
struct NewPoll {
    question: String,
    options: Value,
    status: &'static str,
    /// RFC 3339, normalized; in the future.
    closes_at: Option<String>,
}

/// `POST /api/v1/polls` with `{"question", "options": [label, …], "status"?: "draft" |
/// "active", "closes_at"?: RFC 3339}`. `created_by` is the caller's user, if any.
pub(super) async fn create_poll<S, B>(
    pool: &Pool,
    who: Result<Caller, ApiError>,
    headers: &HeaderMap,
    body: S,
) -> Result<i64, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let who = who?;
    may_administer(&who)?;
    let body = read_body(headers, body).await?;
    let req = parse_new_poll(&body, chrono::Utc::now())?;
    let created_by = who.user.clone();
    let run = async {
        let client = db::client(pool).await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO public.polls (question, options, status, created_by, closes_at) \
                 VALUES ($1, $2, $3, $4::text::uuid, $5::text::timestamptz) RETURNING id",
            )
            .await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &req.question,
                    &req.options,
                    &req.status,
                    &created_by,
                    &req.closes_at,
                ],
            )
            .await?;
        Ok::<i64, DbError>(row.try_get(0)?)
    };
    run.await.map_err(|e| match &e {
        // created_by names no profile (auth off: a made-up X-User-Id).
        DbError::Query(q)
            if q.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) =>
        {
            ApiError::UnknownUser("the X-User-Id or token sub is not a profile".into())
        }
        _ => ApiError::from_db(e, "create_poll"),
    })
}

/// `POST /api/v1/polls/{id}/open` and `…/close`: one transaction that locks the poll's row,
/// checks its status and moves it.
pub(super) async fn change_status(
    pool: &Pool,
    who: Result<Caller, ApiError>,
    raw_id: &str,
    transition: Transition,
) -> Result<i64, ApiError> {
    let who = who?;
    may_administer(&who)?;
    let id = parse_poll_id(raw_id)?;
    let run = async {
        let mut client = db::client(pool).await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT status FROM public.polls WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
        else {
            return Ok(Err(ApiError::PollNotFound(format!("poll {id} not found"))));
        };
        let from: String = row.try_get(0)?;
        if let Err(refusal) = transition.check(id, &from) {
            return Ok(Err(refusal));
        }
        tx.execute(
            "UPDATE public.polls SET status = $2 WHERE id = $1",
            &[&id, &transition.target()],
        )
        .await?;
        tx.commit().await?;
        Ok::<_, DbError>(Ok(id))
    };
    run.await
        .map_err(|e| ApiError::from_db(e, "change_poll_status"))?
}

fn parse_new_poll(body: &[u8], now: chrono::DateTime<chrono::Utc>) -> Result<NewPoll, ApiError> {
    let bad = |m: String| ApiError::InvalidBody(m);
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| {
        bad(r#"body must be a JSON object: {"question": "…", "options": ["…", "…"]}"#.into())
    })?;
    if let Some(key) = obj
        .keys()
        .find(|k| !["question", "options", "status", "closes_at"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown field {key:?} (known: question, options, status, closes_at)"
        )));
    }
    let question = match obj.get("question") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.trim().to_owned(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(bad("question is required".into()))
        }
        Some(other) => return Err(bad(format!("question must be a string, got {other}"))),
    };
    if question.chars().count() > MAX_QUESTION_CHARS {
        return Err(bad(format!(
            "question is longer than {MAX_QUESTION_CHARS} characters"
        )));
    }
    let Some(Value::Array(raw_options)) = obj.get("options") else {
        return Err(bad(format!(
            "options must be an array of 2 to {MAX_OPTIONS} labels (strings)"
        )));
    };
    if !(2..=MAX_OPTIONS).contains(&raw_options.len()) {
        return Err(bad(format!(
            "options must have 2 to {MAX_OPTIONS} labels, got {}",
            raw_options.len()
        )));
    }
    let mut options = Vec::with_capacity(raw_options.len());
    for (i, o) in raw_options.iter().enumerate() {
        match o {
            Value::String(s) if !s.trim().is_empty() => {
                if s.trim().chars().count() > MAX_OPTION_CHARS {
                    return Err(bad(format!(
                        "options[{i}] is longer than {MAX_OPTION_CHARS} characters"
                    )));
                }
                options.push(Value::String(s.trim().to_owned()));
            }
            other => {
                return Err(bad(format!(
                    "options[{i}] must be a non-empty string, got {other}"
                )))
            }
        }
    }
    let status = match obj.get("status") {
        None | Some(Value::Null) => "draft",
        Some(Value::String(s)) if s == "draft" => "draft",
        Some(Value::String(s)) if s == "active" => "active",
        Some(other) => {
            return Err(bad(format!(
                "status must be \"draft\" or \"active\" (a new poll cannot be closed), got {other}"
            )))
        }
    };
    let closes_at = match obj.get("closes_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = chrono::DateTime::parse_from_rfc3339(s.trim()).map_err(|e| {
                bad(format!(
                    "closes_at must be an RFC 3339 time such as 2030-01-31T18:00:00Z: {e}"
                ))
            })?;
            if t <= now {
                return Err(bad(format!("closes_at {s:?} is not in the future")));
            }
            Some(t.to_rfc3339())
        }
        Some(other) => {
            return Err(bad(format!(
                "closes_at must be an RFC 3339 string, got {other}"
            )))
        }
    };
    Ok(NewPoll {
        question,
        options: Value::Array(options),
        status,
        closes_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .map(|t| t.to_utc())
            .unwrap_or_default()
    }

    #[test]
    fn new_poll_bodies() {
        let ok = parse_new_poll(
            br#"{"question": " Tabs? ", "options": ["Tabs", " Spaces "], "status": "active",
                 "closes_at": "2030-01-31T18:00:00+01:00"}"#,
            now(),
        );
        assert_eq!(
            ok,
            Ok(NewPoll {
                question: "Tabs?".into(),
                options: serde_json::json!(["Tabs", "Spaces"]),
                status: "active",
                closes_at: Some("2030-01-31T18:00:00+01:00".into()),
            })
        );
        let draft = parse_new_poll(br#"{"question": "q", "options": ["a", "b"]}"#, now());
        assert_eq!(draft.map(|p| p.status), Ok("draft"));
        let many = format!(r#"{{"question": "q", "options": {:?}}}"#, vec!["x"; 21]);
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"options": ["a", "b"]}"#,
            br#"{"question": " ", "options": ["a", "b"]}"#,
            br#"{"question": 1, "options": ["a", "b"]}"#,
            br#"{"question": "q"}"#,
            br#"{"question": "q", "options": ["a"]}"#,
            br#"{"question": "q", "options": ["a", ""]}"#,
            br#"{"question": "q", "options": ["a", 2]}"#,
            br#"{"question": "q", "options": "a,b"}"#,
            br#"{"question": "q", "options": ["a", "b"], "status": "closed"}"#,
            br#"{"question": "q", "options": ["a", "b"], "closes_at": "tomorrow"}"#,
            br#"{"question": "q", "options": ["a", "b"], "closes_at": "2020-01-01T00:00:00Z"}"#,
            br#"{"question": "q", "options": ["a", "b"], "colour": "red"}"#,
            many.as_bytes(),
        ] {
            let got = parse_new_poll(bad, now());
            assert!(
                matches!(got, Err(ApiError::InvalidBody(_))),
                "{}: {got:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn transitions_only_go_forward() {
        use Transition::{Close, Open};
        assert!(Open.check(1, "draft").is_ok());
        assert!(Close.check(1, "draft").is_ok());
        assert!(Close.check(1, "active").is_ok());
        for (t, from) in [(Open, "active"), (Open, "closed"), (Close, "closed")] {
            let e = t.check(1, from).unwrap_err();
            assert_eq!((e.status().as_u16(), e.code()), (409, "InvalidTransition"));
            assert!(e.to_string().contains("poll 1"), "{e}");
        }
    }
}
