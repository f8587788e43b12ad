//! The HTTP JSON API (`/api/v1/polls`, `/stats`, `/holds/active`, votes, boosts): every field,
//! every refusal with its status and code, and a vote reaching WebSocket subscribers.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// An HTTP/1.1 request with extra headers; returns (status, JSON body, raw head).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Value, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    if let Some(b) = body {
        s.write_all(b).await.expect("write");
    }
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, json, head.to_ascii_lowercase())
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body, _) = request(addr, "GET", path, &[], None).await;
    (status, body)
}

/// `POST /api/v1/polls/{poll}/votes` as `user` (None: no X-User-Id header).
pub async fn vote(addr: SocketAddr, poll: &str, user: Option<&str>, body: &str) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = user.map(|u| ("X-User-Id", u)).into_iter().collect();
    let path = format!("/api/v1/polls/{poll}/votes");
    let (status, body, _) = request(addr, "POST", &path, &headers, Some(body.as_bytes())).await;
    (status, body)
}

/// An error body is exactly `{"error": <non-empty text>, "code": code}`.
#[track_caller]
pub fn assert_error(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    let obj = got.1.as_object().expect("error object");
    assert_eq!(obj.len(), 2, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        got.1
    );
}

/// `n` profiles named `<prefix>0..`; their ids.
pub async fn users(db: &tokio_postgres::Client, prefix: &str, n: i32) -> Vec<String> {
    db.query(
        "INSERT INTO profiles (username) SELECT $1 || g FROM generate_series(0, $2 - 1) g \
         RETURNING id::text",
        &[&prefix, &n],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

pub async fn poll(
    db: &tokio_postgres::Client,
    question: &str,
    options: Value,
    status: &str,
) -> i64 {
    db.query_one(
        "INSERT INTO polls (question, options, status) VALUES ($1, $2, $3) RETURNING id",
        &[&question, &options, &status],
    )
    .await
    .unwrap()
    .get(0)
}

/// A hold by `user` on `poll` that started `started_ms_ago` and ended `ended_ms_ago` (None:
/// still active).
pub async fn hold(
    db: &tokio_postgres::Client,
    user: &str,
    poll: Option<i64>,
    started_ms_ago: i32,
    ended_ms_ago: Option<i32>,
) {
    db.execute(
        "INSERT INTO button_holds (user_id, poll_id, started_at, ended_at, is_active) \
         VALUES ($1::text::uuid, $2, now() - $3::int * interval '1 ms', \
                 now() - $4::int * interval '1 ms', $4::int IS NULL)",
        &[&user, &poll, &started_ms_ago, &ended_ms_ago],
    )
    .await
    .unwrap();
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn is_timestamp(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    s.len() == 27
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[26] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 26].contains(&i) || c.is_ascii_digit())
}

#[tokio::test]
async fn polls_are_listed_and_shown_with_results_field_by_field() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let us = users(&db, "lister", 3).await;
    let (alice, bob, carol) = (&us[0], &us[1], &us[2]);
    let tea = poll(
        &db,
        "Tea or coffee?",
        json!(["tea", "coffee", "water"]),
        "active",
    )
    .await;
    db.execute(
        "UPDATE polls SET created_by = $1::text::uuid, boost_count = 2, \
                          closes_at = '2999-01-02 03:04:05.678901+00' WHERE id = $2",
        &[alice, &tea],
    )
    .await
    .unwrap();
    let draft = poll(&db, "Draft?", json!(["a", "b"]), "draft").await;
    let closed = poll(&db, "Closed?", json!(["x"]), "closed").await;
    let expired = poll(&db, "Expired?", json!(["y", "n"]), "active").await;
    db.execute(
        "UPDATE polls SET closes_at = now() - interval '1 s' WHERE id = $1",
        &[&expired],
    )
    .await
    .unwrap();
    // Newest first: created_at then id, so make the order explicit.
    db.execute(
        "UPDATE polls SET created_at = '2026-01-01'::timestamptz + id * interval '1 s'",
        &[],
    )
    .await
    .unwrap();
    // Votes written directly: the caches follow any writer, not only cast_vote.
    for (user, option) in [(alice, 1), (bob, 1), (carol, 0)] {
        db.execute(
            "INSERT INTO user_votes (poll_id, user_id, option_index, hold_ms) \
             VALUES ($1, $2::text::uuid, $3, 3500)",
            &[&tea, user, &option],
        )
        .await
        .unwrap();
    }

    let (status, list) = get(relay.addr, "/api/v1/polls").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<i64> = list["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![expired, closed, draft, tea]);
    let first = &list["polls"][3];
    assert_eq!(
        first.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![
            "accepting_votes",
            "boost_count",
            "closes_at",
            "created_at",
            "created_by",
            "id",
            "options",
            "question",
            "status",
            "total_votes"
        ]
    );
    assert_eq!(first["id"], tea);
    assert_eq!(first["question"], "Tea or coffee?");
    assert_eq!(first["options"], json!(["tea", "coffee", "water"]));
    assert_eq!(first["status"], "active");
    assert_eq!(first["created_by"], json!(alice));
    assert_eq!(first["boost_count"], 2);
    assert_eq!(first["closes_at"], "2999-01-02T03:04:05.678901Z");
    let created: String = db
        .query_one(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM polls WHERE id = $1",
            &[&tea],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(first["created_at"], json!(created));
    assert!(is_timestamp(&first["created_at"]), "{first}");
    assert_eq!(first["accepting_votes"], true);
    assert_eq!(first["total_votes"], 3);
    let by_id = |id: i64| {
        list["polls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(draft)["created_by"], Value::Null);
    assert_eq!(by_id(draft)["closes_at"], Value::Null);
    assert_eq!(by_id(draft)["accepting_votes"], false);
    assert_eq!(by_id(draft)["total_votes"], 0);
    assert_eq!(by_id(closed)["accepting_votes"], false);
    assert_eq!(by_id(expired)["status"], "active");
    assert_eq!(by_id(expired)["accepting_votes"], false);

    // Filters and limits.
    let (status, active) = get(relay.addr, "/api/v1/polls?status=active").await;
    assert_eq!(status, 200);
    let ids: Vec<i64> = active["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![expired, tea]);
    let (_, drafts) = get(relay.addr, "/api/v1/polls?status=draft").await;
    assert_eq!(drafts["polls"].as_array().unwrap().len(), 1);
    assert_eq!(drafts["polls"][0]["id"], draft);
    let (_, limited) = get(relay.addr, "/api/v1/polls?limit=2&status=active").await;
    assert_eq!(limited["polls"].as_array().unwrap().len(), 2);
    let (_, one) = get(relay.addr, "/api/v1/polls?limit=1").await;
    assert_eq!(one["polls"][0]["id"], expired);
    for bad in [
        "/api/v1/polls?status=open",
        "/api/v1/polls?status=",
        "/api/v1/polls?status=ACTIVE",
        "/api/v1/polls?limit=0",
        "/api/v1/polls?limit=1001",
        "/api/v1/polls?limit=ten",
        "/api/v1/polls?sort=id",
    ] {
        assert_error(get(relay.addr, bad).await, 400, "InvalidQuery");
    }

    // One poll with its results.
    let (status, detail) = get(relay.addr, &format!("/api/v1/polls/{tea}")).await;
    assert_eq!(status, 200, "{detail}");
    let mut expected = first.clone();
    expected["results"] = json!([
        {"option_index": 0, "label": "tea", "votes": 1},
        {"option_index": 1, "label": "coffee", "votes": 2},
        {"option_index": 2, "label": "water", "votes": 0},
    ]);
    assert_eq!(detail, expected);
    let (_, empty) = get(relay.addr, &format!("/api/v1/polls/{draft}")).await;
    assert_eq!(
        empty["results"],
        json!([{"option_index": 0, "label": "a", "votes": 0},
               {"option_index": 1, "label": "b", "votes": 0}])
    );
    db.execute("UPDATE polls SET options = '[]' WHERE id = $1", &[&closed])
        .await
        .unwrap();
    let (_, no_options) = get(relay.addr, &format!("/api/v1/polls/{closed}")).await;
    assert_eq!(no_options["results"], json!([]));

    assert_error(
        get(relay.addr, "/api/v1/polls/abc").await,
        400,
        "InvalidPollId",
    );
    assert_error(
        get(relay.addr, "/api/v1/polls/1.5").await,
        400,
        "InvalidPollId",
    );
    assert_error(
        get(relay.addr, "/api/v1/polls/99999999999999999999").await,
        400,
        "InvalidPollId",
    );
    assert_error(
        get(relay.addr, "/api/v1/polls/987654").await,
        404,
        "PollNotFound",
    );
    assert_error(
        get(relay.addr, "/api/v1/polls/-3").await,
        404,
        "PollNotFound",
    );
}

#[tokio::test]
async fn stats_are_the_app_totals() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (status, stats) = get(relay.addr, "/api/v1/stats").await;
    assert_eq!(status, 200);
    assert_eq!(
        stats,
        json!({"polls": 0, "active_polls": 0, "votes": 0, "users": 0, "boosts": 0})
    );

    let us = users(&db, "stat", 4).await;
    let a = poll(&db, "A?", json!(["1", "2"]), "active").await;
    let b = poll(&db, "B?", json!(["1", "2"]), "active").await;
    poll(&db, "C?", json!(["1"]), "draft").await;
    for u in &us[..3] {
        hold(&db, u, Some(a), 4000, Some(0)).await;
        db.execute("SELECT cast_vote($1, $2::text::uuid, 0)", &[&a, u])
            .await
            .unwrap();
    }
    db.execute("UPDATE polls SET boost_count = 5 WHERE id = $1", &[&b])
        .await
        .unwrap();
    db.execute("UPDATE polls SET status = 'closed' WHERE id = $1", &[&a])
        .await
        .unwrap();

    let (status, stats) = get(relay.addr, "/api/v1/stats").await;
    assert_eq!(status, 200);
    assert_eq!(
        stats,
        json!({"polls": 3, "active_polls": 1, "votes": 3, "users": 4, "boosts": 5})
    );
}

#[tokio::test]
async fn active_holders_are_counted_in_total_and_per_poll() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (status, holds) = get(relay.addr, "/api/v1/holds/active").await;
    assert_eq!(status, 200);
    assert_eq!(holds, json!({"total": 0, "plain_button": 0, "polls": []}));

    let us = users(&db, "holder", 4).await;
    let p1 = poll(&db, "P1?", json!(["a", "b"]), "active").await;
    let p2 = poll(&db, "P2?", json!(["a", "b"]), "active").await;
    hold(&db, &us[0], Some(p1), 1000, None).await;
    hold(&db, &us[0], Some(p1), 500, None).await; // a second tab: still one holder
    hold(&db, &us[0], Some(p2), 1000, None).await;
    hold(&db, &us[1], Some(p1), 1000, None).await;
    hold(&db, &us[1], None, 1000, None).await;
    hold(&db, &us[2], Some(p1), 5000, Some(1000)).await; // ended: not counted
    hold(&db, &us[3], None, 5000, Some(1000)).await; // ended
    db.execute(
        "INSERT INTO button_holds (user_id, poll_id) VALUES (NULL, $1)",
        &[&p2],
    )
    .await
    .unwrap(); // an anonymous session is a holder of its own

    let (status, holds) = get(relay.addr, "/api/v1/holds/active").await;
    assert_eq!(status, 200);
    assert_eq!(
        holds,
        json!({"total": 3, "plain_button": 1,
               "polls": [{"poll_id": p1, "holders": 2}, {"poll_id": p2, "holders": 2}]})
    );
}

#[tokio::test]
async fn a_vote_after_a_long_hold_is_cast_and_reaches_subscribers() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let us = users(&db, "voter", 1).await;
    let user = &us[0];
    let p = poll(&db, "Cats or dogs?", json!(["cats", "dogs"]), "active").await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:polls-changes",
        json!([{"event": "INSERT", "schema": "public", "table": "user_votes",
                "filter": format!("poll_id=eq.{p}")}]),
    )
    .await;
    hold(&db, user, Some(p), 4000, None).await; // still held: counts up to now

    let (status, body) = vote(
        relay.addr,
        &p.to_string(),
        Some(user),
        r#"{"option_index": 1}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let obj = body.as_object().unwrap();
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        vec![
            "created_at",
            "hold_ms",
            "id",
            "option_index",
            "poll_id",
            "user_id"
        ]
    );
    assert!(body["id"].as_i64().is_some_and(|id| id > 0), "{body}");
    assert_eq!(body["poll_id"], p);
    assert_eq!(body["user_id"], json!(user));
    assert_eq!(body["option_index"], 1);
    let held = body["hold_ms"].as_i64().unwrap();
    assert!((4000..14000).contains(&held), "{body}");
    assert!(is_timestamp(&body["created_at"]), "{body}");
    let stored: (i64, i32) = db
        .query_one(
            "SELECT id, hold_ms FROM user_votes WHERE poll_id = $1 AND user_id = $2::text::uuid",
            &[&p, user],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (json!(stored.0), json!(stored.1)),
        (body["id"].clone(), body["hold_ms"].clone())
    );

    let change = ws.recv_event("postgres_changes").await;
    let data = &change.payload["data"];
    assert_eq!(data["type"], "INSERT");
    assert_eq!(data["table"], "user_votes");
    assert_eq!(data["record"]["id"], body["id"]);
    assert_eq!(data["record"]["poll_id"], p);
    assert_eq!(data["record"]["user_id"], json!(user));
    assert_eq!(data["record"]["option_index"], 1);
    assert_eq!(data["record"]["hold_ms"], body["hold_ms"]);

    let (_, detail) = get(relay.addr, &format!("/api/v1/polls/{p}")).await;
    assert_eq!(detail["total_votes"], 1);
    assert_eq!(detail["results"][1]["votes"], 1);
    let (_, stats) = get(relay.addr, "/api/v1/stats").await;
    assert_eq!(stats["votes"], 1);
}

#[tokio::test]
async fn every_vote_refusal_has_its_status_and_code() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let us = users(&db, "refused", 3).await;
    let (user, short, other) = (&us[0], &us[1], &us[2]);
    let p = poll(&db, "Yes or no?", json!(["yes", "no"]), "active").await;
    let ps = p.to_string();
    let draft = poll(&db, "Draft?", json!(["yes", "no"]), "draft").await;
    let closed = poll(&db, "Closed?", json!(["yes", "no"]), "closed").await;
    let expired = poll(&db, "Expired?", json!(["yes", "no"]), "active").await;
    db.execute(
        "UPDATE polls SET closes_at = now() - interval '1 s' WHERE id = $1",
        &[&expired],
    )
    .await
    .unwrap();
    for poll_id in [p, draft, closed, expired] {
        hold(&db, user, Some(poll_id), 4000, Some(0)).await;
    }
    hold(&db, short, Some(p), 1500, Some(500)).await; // a 1 s hold

    let ok = r#"{"option_index": 0}"#;
    // The request's own faults.
    assert_error(vote(relay.addr, &ps, None, ok).await, 401, "UserRequired");
    assert_error(
        vote(relay.addr, &ps, Some("alice"), ok).await,
        400,
        "InvalidUserId",
    );
    assert_error(
        vote(relay.addr, "seven", Some(user), ok).await,
        400,
        "InvalidPollId",
    );
    for bad in [
        "{",
        "",
        "not json",
        "[0]",
        r#"{"option": 0}"#,
        r#"{"option_index": "0"}"#,
        r#"{"option_index": 0.5}"#,
        r#"{"option_index": null}"#,
        r#"{"option_index": 4294967296}"#,
    ] {
        assert_error(
            vote(relay.addr, &ps, Some(user), bad).await,
            400,
            "InvalidBody",
        );
    }
    let huge = format!(r#"{{"option_index": 0, "pad": "{}"}}"#, "x".repeat(20_000));
    assert_error(
        vote(relay.addr, &ps, Some(user), &huge).await,
        413,
        "PayloadTooLarge",
    );

    // The SQL rule's refusals.
    assert_error(
        vote(relay.addr, "424242", Some(user), ok).await,
        404,
        "PollNotFound",
    );
    for poll_id in [draft, closed, expired] {
        assert_error(
            vote(relay.addr, &poll_id.to_string(), Some(user), ok).await,
            422,
            "PollNotActive",
        );
    }
    for option in [2, -1, 1000] {
        let body = format!(r#"{{"option_index": {option}}}"#);
        assert_error(
            vote(relay.addr, &ps, Some(user), &body).await,
            422,
            "NoSuchOption",
        );
    }
    let stranger = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_error(
        vote(relay.addr, &ps, Some(stranger), ok).await,
        403,
        "UnknownUser",
    );
    let (status, body) = vote(relay.addr, &ps, Some(short), ok).await;
    assert_error((status, body.clone()), 422, "HoldTooShort");
    assert!(
        body["error"].as_str().unwrap().contains("3000 ms"),
        "{body}"
    );
    assert_error(
        vote(relay.addr, &ps, Some(other), ok).await,
        422,
        "HoldTooShort",
    ); // no hold

    // Accepted once, then 409 — even with a fresh long hold.
    let (status, body) = vote(relay.addr, &ps, Some(user), ok).await;
    assert_eq!(status, 201, "{body}");
    hold(&db, user, Some(p), 9000, Some(0)).await;
    assert_error(
        vote(relay.addr, &ps, Some(user), ok).await,
        409,
        "AlreadyVoted",
    );

    // The threshold is the DBA's: at 1 s the short hold is enough.
    db.execute(
        "UPDATE app_settings SET value = '1000' WHERE name = 'vote_hold_min_ms'",
        &[],
    )
    .await
    .unwrap();
    let (status, body) = vote(relay.addr, &ps, Some(short), r#"{"option_index": 1}"#).await;
    assert_eq!(status, 201, "{body}");

    // Nothing refused was stored.
    let n: i64 = db
        .query_one("SELECT count(*) FROM user_votes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn boosts_count_on_open_polls_only() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let p = poll(&db, "Boost me?", json!(["a"]), "active").await;
    let closed = poll(&db, "Closed?", json!(["a"]), "closed").await;
    let path = format!("/api/v1/polls/{p}/boost");
    for n in 1..=3 {
        let (status, body, _) = request(relay.addr, "POST", &path, &[], None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"poll_id": p, "boost_count": n}));
    }
    let boost = |id: String| {
        let addr = relay.addr;
        async move {
            let (s, b, _) = request(
                addr,
                "POST",
                &format!("/api/v1/polls/{id}/boost"),
                &[],
                None,
            )
            .await;
            (s, b)
        }
    };
    assert_error(boost(closed.to_string()).await, 422, "PollNotActive");
    assert_error(boost("31337".into()).await, 404, "PollNotFound");
    assert_error(boost("x1".into()).await, 400, "InvalidPollId");
    let (_, stats) = get(relay.addr, "/api/v1/stats").await;
    assert_eq!(stats["boosts"], 3);
    let (_, detail) = get(relay.addr, &format!("/api/v1/polls/{p}")).await;
    assert_eq!(detail["boost_count"], 3);
}

#[tokio::test]
async fn concurrent_api_votes_by_one_user_succeed_exactly_once() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let us = users(&db, "racer", 1).await;
    let p = poll(&db, "Race?", json!(["a", "b"]), "active").await;
    hold(&db, &us[0], Some(p), 4000, Some(0)).await;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (addr, user) = (relay.addr, us[0].clone());
            tokio::spawn(async move {
                let body = format!(r#"{{"option_index": {}}}"#, i % 2);
                vote(addr, &p.to_string(), Some(&user), &body).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        if status != 201 {
            assert_error((status, body), 409, "AlreadyVoted");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    let (_, detail) = get(relay.addr, &format!("/api/v1/polls/{p}")).await;
    assert_eq!(detail["total_votes"], 1);
}

#[tokio::test]
async fn unexpected_database_errors_are_a_generic_500() {
    let relay = start_relay().await;
    let db = relay.db().await;
    // A DBA breaks the view the endpoint reads: the client learns nothing about SQL.
    db.batch_execute("ALTER VIEW public.app_stats RENAME TO app_stats_moved")
        .await
        .unwrap();
    let (status, body, head) = request(relay.addr, "GET", "/api/v1/stats", &[], None).await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"error": "internal error", "code": "InternalError"})
    );
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
}

#[tokio::test]
async fn profiles_are_created_with_auth_off() {
    let relay = start_relay().await;
    let post = |body: &'static str| {
        let addr = relay.addr;
        async move {
            let (s, j, _) =
                request(addr, "POST", "/api/v1/profiles", &[], Some(body.as_bytes())).await;
            (s, j)
        }
    };
    let (status, made) = post(r#"{"username":"guest-1"}"#).await;
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().expect("id");
    assert!(
        id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4,
        "{made}"
    );
    assert_eq!(made["username"], "guest-1");
    assert_eq!(made["display_name"], Value::Null);
    assert!(is_timestamp(&made["created_at"]), "{made}");
    let db = relay.db().await;
    let stored: String = db
        .query_one(
            "SELECT username FROM profiles WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "guest-1");
    // The username is taken.
    let got = post(r#"{"username":"guest-1"}"#).await;
    assert_eq!(got.1["error"], "this username is taken");
    assert_error(got, 409, "ProfileExists");
    // A chosen id, then the same id again.
    let (status, made) =
        post(r#"{"username":"guest-2","id":"0B0E1A2C-0000-4000-8000-000000000002"}"#).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["id"], "0b0e1a2c-0000-4000-8000-000000000002");
    let got = post(r#"{"username":"guest-3","id":"0b0e1a2c-0000-4000-8000-000000000002"}"#).await;
    assert_eq!(got.1["error"], "a profile with this id exists");
    assert_error(got, 409, "ProfileExists");
    assert_error(post(r#"{"name":"x"}"#).await, 400, "InvalidBody");
    assert_error(post("not json").await, 400, "InvalidBody");
    relay.stop().await;
}
