//! Tokens and read policies: who may connect and join, and which rows each subscriber gets.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;

const SECRET: &str = "test-secret-with-enough-length";

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn user_token(sub: &str) -> String {
    token(json!({"sub": sub, "role": "authenticated", "exp": now() + 3600}))
}

async fn secured() -> Relay {
    start_relay_with(|c| c.jwt_secret = Some(SECRET.into())).await
}

async fn connect(relay: &Relay, apikey: &str) -> Ws {
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey={apikey}&vsn=2.0.0",
        relay.addr
    );
    Ws::connect(&url, "2.0.0").await
}

async fn refused(relay: &Relay, query: &str) -> (u16, String) {
    let url = format!("ws://{}/realtime/v1/websocket?{query}", relay.addr);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_and_join_refusals_use_supabase_texts() {
    let relay = secured().await;
    assert_eq!(
        refused(&relay, "vsn=2.0.0").await,
        (401, r#"{"error":"API key is missing"}"#.into())
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"role":"anon","exp":now() + 60}),
        &EncodingKey::from_secret(b"wrong"),
    )
    .unwrap();
    assert_eq!(
        refused(&relay, &format!("apikey={forged}&vsn=2.0.0")).await,
        (
            401,
            r#"{"error":"Failed to validate JWT signature"}"#.into()
        )
    );
    assert_eq!(
        refused(&relay, "apikey=nope&vsn=2.0.0").await.1,
        r#"{"error":"The token provided is not a valid JWT"}"#
    );
    let no_exp = token(json!({"role":"anon"}));
    assert_eq!(
        refused(&relay, &format!("apikey={no_exp}&vsn=2.0.0"))
            .await
            .1,
        r#"{"error":"Fields `role` and `exp` are required in JWT"}"#
    );

    let anon = token(json!({"role":"anon","exp":now() + 3600}));
    let mut ws = connect(&relay, &anon).await;
    let expired = token(json!({"role":"authenticated","sub":"x","exp":now() - 30}));
    let (_, reply) = ws
        .join_with(
            "realtime:room",
            json!({"config":{"postgres_changes":[]},"access_token": expired}),
        )
        .await;
    assert_eq!(reply["status"], "error");
    let reason = reply["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("InvalidJWTToken: Token has expired ")
            && reason.ends_with(" seconds ago"),
        "{reason}"
    );
    // A project key (sb_…) means "use the connect identity".
    let (_, reply) = ws
        .join_with(
            "realtime:room2",
            json!({"config":{"postgres_changes":[]},"access_token":"sb_publishable_x"}),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    relay.stop().await;
}

#[tokio::test]
async fn a_token_expiring_while_joined_closes_the_channel() {
    let relay = secured().await;
    let short = token(json!({"role":"anon","exp":now() + 2}));
    let mut ws = connect(&relay, &user_token("00000000-0000-4000-8000-000000000001")).await;
    let (jr, reply) = ws
        .join_with(
            "realtime:short",
            json!({"config":{"postgres_changes":[]},"access_token": short}),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let sys = ws.recv().await;
    assert_eq!(sys.event, "system");
    assert_eq!(sys.payload["extension"], "system");
    assert_eq!(sys.payload["status"], "error");
    let message = sys.payload["message"].as_str().unwrap();
    assert!(message.starts_with("Token has expired "), "{message}");
    let close = ws.recv().await;
    assert_eq!(close.event, "phx_close");
    assert_eq!(close.join_ref, json!(jr));
    relay.stop().await;
}

#[tokio::test]
async fn votes_reach_only_their_owner_and_the_service_role() {
    let relay = secured().await;
    let db = relay.db().await;
    let (alice, poll) = seed(&db).await;
    let bob: String = db
        .query_one(
            "INSERT INTO profiles (username) VALUES ('bob') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let every = json!([{"event":"*","schema":"public","table":"user_votes"}]);
    let mut a = connect(&relay, &user_token(&alice)).await;
    a.subscribe("realtime:votes", every.clone()).await;
    // Alice asks for Bob's rows explicitly: her policy still applies.
    let mut a_spy = connect(&relay, &user_token(&alice)).await;
    a_spy
        .subscribe(
            "realtime:spy",
            json!([{"event":"*","schema":"public","table":"user_votes","filter":format!("user_id=eq.{bob}")}]),
        )
        .await;
    let mut b = connect(&relay, &user_token(&bob)).await;
    b.subscribe("realtime:votes", every.clone()).await;
    let service = token(json!({"role":"service_role","exp":now() + 3600}));
    let mut s = connect(&relay, &service).await;
    s.subscribe("realtime:votes", every.clone()).await;
    // Anonymous users may not read votes at all.
    let anon = token(json!({"role":"anon","exp":now() + 3600}));
    let mut x = connect(&relay, &anon).await;
    let (_, reply) = x.join("realtime:votes", every.clone()).await;
    assert_eq!(reply["status"], "ok");
    let sys = x.recv().await;
    assert_eq!(sys.payload["status"], "error");
    assert_eq!(
        sys.payload["message"],
        "Unauthorized: role anon may not read public.user_votes"
    );
    // Nor through a wildcard subscription.
    let (_, _) = x
        .join("realtime:all", json!([{"event":"*","schema":"public"}]))
        .await;
    let sys = x.recv().await;
    assert_eq!(sys.payload["status"], "error");

    for user in [&alice, &bob] {
        db.execute(
            "INSERT INTO user_votes (poll_id, user_id, option_index, hold_ms) VALUES ($1, $2::text::uuid, 0, 3000)",
            &[&poll, user],
        )
        .await
        .unwrap();
    }
    let f = a.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["user_id"], alice.as_str());
    let f = b.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["user_id"], bob.as_str());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let f = s.recv_event("postgres_changes").await;
        seen.push(
            f.payload["data"]["record"]["user_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen, [alice.clone(), bob.clone()]);
    // A deleted vote is filtered on the old row: only its owner hears of it.
    db.execute(
        "DELETE FROM user_votes WHERE user_id = $1::text::uuid",
        &[&bob],
    )
    .await
    .unwrap();
    assert_eq!(
        b.recv_event("postgres_changes").await.payload["data"]["type"],
        "DELETE"
    );
    assert_eq!(
        s.recv_event("postgres_changes").await.payload["data"]["type"],
        "DELETE"
    );
    for ws in [&mut a, &mut a_spy, &mut x] {
        ws.expect_silence(Duration::from_millis(500)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn with_auth_a_hold_belongs_to_the_token_user() {
    let relay = secured().await;
    let db = relay.db().await;
    let (alice, _) = seed(&db).await;
    let mallory: String = db
        .query_one(
            "INSERT INTO profiles (username) VALUES ('mallory') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut ws = connect(&relay, &user_token(&mallory)).await;
    let topic = "realtime:button-presence";
    let (jr, _) = ws
        .join_with(
            topic,
            json!({"config":{"presence":{"key":"","enabled":true}}}),
        )
        .await;
    ws.recv().await;
    // Mallory claims to be Alice in the payload: the hold is Mallory's.
    ws.push(
        Some(&jr),
        "1",
        topic,
        "presence",
        json!({"type":"presence","event":"track","payload":{"user_id":alice}}),
    )
    .await;
    loop {
        let f = ws.recv().await;
        if f.msg_ref == json!("1") {
            assert_eq!(f.payload["status"], "ok");
            break;
        }
    }
    let owner: String = db
        .query_one(
            "SELECT user_id::text FROM button_holds WHERE is_active",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, mallory);
    relay.stop().await;
}
