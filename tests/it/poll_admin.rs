//! Creating, opening and closing polls over the HTTP API (`POST /api/v1/polls`, `…/{id}/open`,
//! `…/{id}/close`), with auth off and on, every refusal in the API's error shape; and the demo
//! polls a relay on its own database seeds.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::api::{assert_error, request, users};
use crate::support::*;

const SECRET: &str = "test-secret-with-enough-length";

fn token(role: &str, sub: Option<&str>) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    let claims = match sub {
        Some(sub) => json!({"role": role, "sub": sub, "exp": exp}),
        None => json!({"role": role, "exp": exp}),
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `POST path` with `body` and optional extra headers; (status, JSON, lower-cased head).
async fn post(
    relay: &Relay,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value, String) {
    request(relay.addr, "POST", path, headers, body.map(str::as_bytes)).await
}

/// An error answer: the shape and `Cache-Control: no-store`.
#[track_caller]
fn refused(got: (u16, Value, String), status: u16, code: &str) {
    assert!(got.2.contains("cache-control: no-store"), "{}", got.2);
    assert_error((got.0, got.1), status, code);
}

const TABS: &str = r#"{"question": "Tabs or spaces?", "options": ["Tabs", "Spaces"]}"#;

#[tokio::test]
async fn create_open_and_close_with_auth_off() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:active",
        json!([{"event": "UPDATE", "schema": "public", "table": "polls",
                "filter": "status=eq.active"}]),
    )
    .await;

    // Created as a draft by default, with its results, by its creator.
    let user = users(&db, "admin", 1).await.remove(0);
    let (status, poll, head) = post(
        &relay,
        "/api/v1/polls",
        &[("X-User-Id", user.as_str())],
        Some(TABS),
    )
    .await;
    assert_eq!(status, 201, "{poll}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert_eq!(poll["question"], "Tabs or spaces?");
    assert_eq!(poll["options"], json!(["Tabs", "Spaces"]));
    assert_eq!(poll["status"], "draft");
    assert_eq!(poll["accepting_votes"], false);
    assert_eq!(poll["created_by"], user.as_str());
    assert_eq!(poll["results"][1]["label"], "Spaces");
    assert_eq!(poll["results"][1]["votes"], 0);
    let id = poll["id"].as_i64().expect("id");

    // Open: it is active, takes votes, and the UPDATE reaches subscribers.
    let (status, opened, _) = post(&relay, &format!("/api/v1/polls/{id}/open"), &[], None).await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["status"], "active");
    assert_eq!(opened["accepting_votes"], true);
    let change = ws.recv_event("postgres_changes").await;
    assert_eq!(change.payload["data"]["record"]["id"], id);
    assert_eq!(change.payload["data"]["old_record"]["status"], "draft");
    let (_, listed) = crate::api::get(relay.addr, "/api/v1/polls?status=active").await;
    assert_eq!(listed["polls"][0]["id"], id);

    // Opening it again is a bad transition; so is anything after closing.
    let again = post(&relay, &format!("/api/v1/polls/{id}/open"), &[], None).await;
    assert!(again.1["error"]
        .as_str()
        .unwrap_or("")
        .contains("already active"));
    refused(again, 409, "InvalidTransition");
    let (status, closed, _) = post(&relay, &format!("/api/v1/polls/{id}/close"), &[], None).await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["accepting_votes"], false);
    for action in ["open", "close"] {
        let path = format!("/api/v1/polls/{id}/{action}");
        refused(
            post(&relay, &path, &[], None).await,
            409,
            "InvalidTransition",
        );
    }
    let stored: String = db
        .query_one("SELECT status FROM polls WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "closed");

    // Created active at once (one request for the demo), closing a draft.
    let body = r#"{"question": "Coffee?", "options": ["Yes", "No"], "status": "active",
                   "closes_at": "2999-01-01T00:00:00Z"}"#;
    let (status, active, _) = post(&relay, "/api/v1/polls", &[], Some(body)).await;
    assert_eq!(status, 201, "{active}");
    assert_eq!(active["status"], "active");
    assert_eq!(active["created_by"], Value::Null);
    assert_eq!(active["closes_at"], "2999-01-01T00:00:00.000000Z");
    let (_, draft, _) = post(&relay, "/api/v1/polls", &[], Some(TABS)).await;
    let draft_id = draft["id"].as_i64().expect("id");
    let (status, closed, _) = post(
        &relay,
        &format!("/api/v1/polls/{draft_id}/close"),
        &[],
        None,
    )
    .await;
    assert_eq!((status, closed["status"].clone()), (200, json!("closed")));

    // Bad input, unknown polls and users, unknown actions and methods.
    for body in [
        "{",
        "[]",
        r#"{"options": ["a", "b"]}"#,
        r#"{"question": "q", "options": ["only one"]}"#,
        r#"{"question": "q", "options": ["a", 7]}"#,
        r#"{"question": "q", "options": ["a", "b"], "status": "closed"}"#,
        r#"{"question": "q", "options": ["a", "b"], "closes_at": "2001-01-01T00:00:00Z"}"#,
        r#"{"question": "q", "options": ["a", "b"], "state": "active"}"#,
    ] {
        refused(
            post(&relay, "/api/v1/polls", &[], Some(body)).await,
            400,
            "InvalidBody",
        );
    }
    let ghost = "00000000-0000-4000-8000-000000000000";
    refused(
        post(&relay, "/api/v1/polls", &[("X-User-Id", ghost)], Some(TABS)).await,
        403,
        "UnknownUser",
    );
    refused(
        post(&relay, "/api/v1/polls/999999/open", &[], None).await,
        404,
        "PollNotFound",
    );
    refused(
        post(&relay, "/api/v1/polls/abc/close", &[], None).await,
        400,
        "InvalidPollId",
    );
    refused(
        post(&relay, &format!("/api/v1/polls/{id}/reopen"), &[], None).await,
        404,
        "NotFound",
    );
    let put = request(
        relay.addr,
        "PUT",
        "/api/v1/polls",
        &[],
        Some(TABS.as_bytes()),
    )
    .await;
    refused(put, 405, "MethodNotAllowed");
    let n: i64 = db
        .query_one("SELECT count(*) FROM polls", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "refused requests wrote nothing");
    relay.stop().await;
}

#[tokio::test]
async fn with_auth_on_only_service_role_administers_polls() {
    let relay = start_relay_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let db = relay.db().await;
    let user = users(&db, "voter", 1).await.remove(0);
    let anon = format!("Bearer {}", token("anon", None));
    let member = format!("Bearer {}", token("authenticated", Some(&user)));
    let service = format!("Bearer {}", token("service_role", None));

    refused(
        post(&relay, "/api/v1/polls", &[], Some(TABS)).await,
        401,
        "InvalidJWTToken",
    );
    for who in [&anon, &member] {
        let got = post(
            &relay,
            "/api/v1/polls",
            &[("Authorization", who)],
            Some(TABS),
        )
        .await;
        assert!(
            got.1["error"]
                .as_str()
                .unwrap_or("")
                .contains("service_role"),
            "{}",
            got.1
        );
        refused(got, 403, "Forbidden");
    }

    let auth = [("Authorization", service.as_str())];
    let (status, poll, _) = post(&relay, "/api/v1/polls", &auth, Some(TABS)).await;
    assert_eq!(status, 201, "{poll}");
    let id = poll["id"].as_i64().expect("id");
    for who in [&anon, &member] {
        for action in ["open", "close"] {
            let path = format!("/api/v1/polls/{id}/{action}");
            refused(
                post(&relay, &path, &[("Authorization", who)], None).await,
                403,
                "Forbidden",
            );
        }
    }
    let (status, opened, _) = post(&relay, &format!("/api/v1/polls/{id}/open"), &auth, None).await;
    assert_eq!((status, opened["status"].clone()), (200, json!("active")));
    let (status, closed, _) = post(&relay, &format!("/api/v1/polls/{id}/close"), &auth, None).await;
    assert_eq!((status, closed["status"].clone()), (200, json!("closed")));
    let n: i64 = db
        .query_one("SELECT count(*) FROM polls", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    relay.stop().await;
}

/// The demo seed: a few active polls into an empty `polls` table, once, and nothing into a
/// table that has any row at all (a draft included).
#[tokio::test]
async fn demo_polls_are_seeded_only_into_an_empty_table() {
    let db = TestDb::new().await;
    let pool = pgrelay::db::connect_pool(&db.url, 2).await.unwrap();
    pgrelay::db::migrate(&pool).await.unwrap();
    let seeded = pgrelay::db::demo::seed_when_empty(&pool).await.unwrap();
    assert_eq!(seeded, pgrelay::db::demo::DEMO_POLLS.len() as u64);
    assert!(seeded >= 2);
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT question, status, jsonb_array_length(options) FROM polls \
             ORDER BY created_at DESC, id DESC",
            &[],
        )
        .await
        .unwrap();
    let (first, _) = pgrelay::db::demo::DEMO_POLLS[0];
    assert_eq!(
        rows[0].get::<_, String>(0),
        first,
        "listed in the seed's order"
    );
    for r in &rows {
        assert_eq!(r.get::<_, String>(1), "active");
        assert!(r.get::<_, i32>(2) >= 2);
    }
    assert_eq!(pgrelay::db::demo::seed_when_empty(&pool).await.unwrap(), 0);

    let other = TestDb::new().await;
    let pool = pgrelay::db::connect_pool(&other.url, 2).await.unwrap();
    pgrelay::db::migrate(&pool).await.unwrap();
    crate::api::poll(&other.client().await, "mine", json!(["a", "b"]), "draft").await;
    assert_eq!(pgrelay::db::demo::seed_when_empty(&pool).await.unwrap(), 0);
}
