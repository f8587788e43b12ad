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

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn the_api_needs_a_token_and_takes_the_user_from_it() {
    use crate::api::{assert_error, hold, poll, request, users};
    let relay = secured().await;
    let db = relay.db().await;
    let ids = users(&db, "api-auth-", 2).await;
    let (alice, mallory) = (&ids[0], &ids[1]);
    let p = poll(&db, "Auth?", json!(["yes", "no"]), "active").await;
    hold(&db, alice, Some(p), 4000, Some(100)).await;
    let votes = format!("/api/v1/polls/{p}/votes");
    let body = br#"{"option_index": 1}"#;

    // No token: refused with Supabase's text, for reads as for writes.
    let (status, json, _) = request(relay.addr, "GET", "/api/v1/stats", &[], None).await;
    assert_error((status, json.clone()), 401, "InvalidJWTToken");
    assert_eq!(json["error"], "API key is missing");
    let (status, json, _) = request(
        relay.addr,
        "POST",
        &votes,
        &[("X-User-Id", alice)],
        Some(body),
    )
    .await;
    assert_error((status, json), 401, "InvalidJWTToken");

    // A forged token.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": alice, "role": "authenticated", "exp": now() + 60}),
        &EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    let (status, json, _) = request(
        relay.addr,
        "GET",
        "/api/v1/stats",
        &[("Authorization", &bearer(&forged))],
        None,
    )
    .await;
    assert_error((status, json.clone()), 401, "JwtSignatureError");
    assert_eq!(json["error"], "Failed to validate JWT signature");

    // An expired one.
    let expired = token(json!({"sub": alice, "role": "authenticated", "exp": now() - 10}));
    let (status, json, _) = request(
        relay.addr,
        "GET",
        "/api/v1/stats",
        &[("Authorization", &bearer(&expired))],
        None,
    )
    .await;
    assert_error((status, json.clone()), 401, "InvalidJWTToken");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .starts_with("Token has expired "),
        "{json}"
    );

    // Any valid token reads; the `apikey` header (supabase-js sends it) works too.
    let anon = token(json!({"role": "anon", "exp": now() + 60}));
    let (status, json, _) = request(
        relay.addr,
        "GET",
        "/api/v1/stats",
        &[("apikey", &anon)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["users"], 2);

    // An anonymous token cannot vote: there is no user to vote for.
    let (status, json, _) = request(
        relay.addr,
        "POST",
        &votes,
        &[("Authorization", &bearer(&anon))],
        Some(body),
    )
    .await;
    assert_error((status, json), 401, "UserRequired");

    // Mallory names Alice in the header: the vote is Mallory's, who held nothing → 422.
    let (status, json, _) = request(
        relay.addr,
        "POST",
        &votes,
        &[
            ("Authorization", &bearer(&user_token(mallory))),
            ("X-User-Id", alice),
        ],
        Some(body),
    )
    .await;
    assert_error((status, json), 422, "HoldTooShort");
    // Alice's own token casts Alice's vote.
    let (status, json, _) = request(
        relay.addr,
        "POST",
        &votes,
        &[("Authorization", &bearer(&user_token(alice)))],
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{json}");
    assert_eq!(json["user_id"], alice.as_str());
    assert_eq!(json["poll_id"], p);
    assert_eq!(json["option_index"], 1);
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM user_votes WHERE user_id = $1::text::uuid",
            &[alice],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    relay.stop().await;
}

#[tokio::test]
async fn a_profile_is_created_for_the_token_user_only() {
    use crate::api::{assert_error, request};
    let relay = secured().await;
    let me = "5f0c2a7e-8a51-4c43-9a53-0c9d4c1f2b11";
    let other = "6a1d3b8f-9b62-4d54-8b64-1dae5d203c22";
    let mine = user_token(me);
    let auth = [("Authorization", bearer(&mine))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (status, json, _) = request(
        relay.addr,
        "POST",
        "/api/v1/profiles",
        &auth,
        Some(br#"{"username":"me","display_name":"Me"}"#),
    )
    .await;
    assert_eq!(status, 201, "{json}");
    assert_eq!(json["id"], me);
    assert_eq!(json["username"], "me");
    assert_eq!(json["display_name"], "Me");
    assert!(json["created_at"].is_string());
    // Again: the id exists.
    let (status, json, _) = request(
        relay.addr,
        "POST",
        "/api/v1/profiles",
        &auth,
        Some(br#"{"username":"me2"}"#),
    )
    .await;
    assert_error((status, json), 409, "ProfileExists");
    // Naming someone else's id.
    let body = format!(r#"{{"username":"x","id":"{other}"}}"#);
    let (status, json, _) = request(
        relay.addr,
        "POST",
        "/api/v1/profiles",
        &auth,
        Some(body.as_bytes()),
    )
    .await;
    assert_error((status, json), 403, "Forbidden");
    // An anonymous token names no user.
    let anon = token(json!({"role": "anon", "exp": now() + 60}));
    let (status, json, _) = request(
        relay.addr,
        "POST",
        "/api/v1/profiles",
        &[("Authorization", &bearer(&anon))],
        Some(br#"{"username":"anon"}"#),
    )
    .await;
    assert_error((status, json), 401, "UserRequired");
    // The service role may create any profile; a taken username is a conflict.
    let service = token(json!({"role": "service_role", "exp": now() + 60}));
    let (status, json, _) = request(
        relay.addr,
        "POST",
        "/api/v1/profiles",
        &[("Authorization", &bearer(&service))],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(status, 201, "{json}");
    assert_eq!(json["id"], other);
    let (status, json, _) = request(
        relay.addr,
        "POST",
        "/api/v1/profiles",
        &[("Authorization", &bearer(&service))],
        Some(br#"{"username":"me"}"#),
    )
    .await;
    assert_error((status, json.clone()), 409, "ProfileExists");
    assert_eq!(json["error"], "this username is taken");
    relay.stop().await;
}

/// The test keys in tests/fixtures/jwt (see its README).
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn signed(alg: Algorithm, key_file: &str, kid: Option<&str>, claims: Value) -> String {
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, &key).unwrap()
}

/// (status, error text or "") of `GET /api/v1/stats` with `token`, and whether a WebSocket
/// with it as `apikey` is accepted.
async fn accepts(relay: &Relay, token: &str) -> (u16, String, bool) {
    let (status, json, _) = crate::api::request(
        relay.addr,
        "GET",
        "/api/v1/stats",
        &[("Authorization", &bearer(token))],
        None,
    )
    .await;
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey={token}&vsn=2.0.0",
        relay.addr
    );
    let ws_ok = tokio_tungstenite::connect_async(&url).await.is_ok();
    let error = json["error"].as_str().unwrap_or_default().to_owned();
    (status, error, ws_ok)
}

/// [`accepts`] for a token signed with a fixture key.
async fn accepts_signed(
    relay: &Relay,
    alg: Algorithm,
    key_file: &str,
    kid: Option<&str>,
    claims: Value,
) -> (u16, String, bool) {
    accepts(relay, &signed(alg, key_file, kid, claims)).await
}

#[tokio::test]
async fn rs256_and_es256_public_keys_verify_tokens() {
    let claims = json!({"sub": "u", "role": "authenticated", "exp": now() + 600});
    let ok = (200, String::new(), true);
    let bad_sig = (401, "Failed to validate JWT signature".to_owned(), false);

    let relay = start_relay_with(|c| c.jwt_public_key = Some(fixture("rs256.pub"))).await;
    assert_eq!(
        accepts_signed(&relay, Algorithm::RS256, "rs256.key", None, claims.clone()).await,
        ok
    );
    // Another RSA key, an EC key, and the HS256 "none of your keys" case.
    assert_eq!(
        accepts_signed(
            &relay,
            Algorithm::RS256,
            "jwks-rs256.key",
            None,
            claims.clone()
        )
        .await,
        bad_sig
    );
    assert_eq!(
        accepts_signed(&relay, Algorithm::ES256, "es256.key", None, claims.clone()).await,
        bad_sig
    );
    assert_eq!(accepts(&relay, &token(claims.clone())).await, bad_sig);
    relay.stop().await;

    let relay = start_relay_with(|c| c.jwt_public_key = Some(fixture("es256.pub"))).await;
    assert_eq!(
        accepts_signed(&relay, Algorithm::ES256, "es256.key", None, claims.clone()).await,
        ok
    );
    assert_eq!(
        accepts_signed(
            &relay,
            Algorithm::ES256,
            "jwks-es256.key",
            None,
            claims.clone()
        )
        .await,
        bad_sig
    );
    let expired = json!({"sub": "u", "role": "authenticated", "exp": now() - 5});
    let (status, error, ws_ok) = accepts(
        &relay,
        &signed(Algorithm::ES256, "es256.key", None, expired),
    )
    .await;
    assert_eq!((status, ws_ok), (401, false));
    assert!(error.starts_with("Token has expired "), "{error}");
    relay.stop().await;
}

#[tokio::test]
async fn a_jwks_file_verifies_tokens_by_kid() {
    let claims = json!({"sub": "u", "role": "authenticated", "exp": now() + 600});
    let ok = (200, String::new(), true);
    let bad_sig = (401, "Failed to validate JWT signature".to_owned(), false);
    let relay = start_relay_with(|c| c.jwks_file = Some(fixture("jwks.json"))).await;
    assert_eq!(
        accepts(
            &relay,
            &signed(
                Algorithm::RS256,
                "jwks-rs256.key",
                Some("rsa-1"),
                claims.clone()
            )
        )
        .await,
        ok
    );
    assert_eq!(
        accepts(
            &relay,
            &signed(
                Algorithm::ES256,
                "jwks-es256.key",
                Some("ec-1"),
                claims.clone()
            )
        )
        .await,
        ok
    );
    // Without a kid every key of the algorithm is tried.
    assert_eq!(
        accepts_signed(
            &relay,
            Algorithm::RS256,
            "jwks-rs256.key",
            None,
            claims.clone()
        )
        .await,
        ok
    );
    // A key not in the set, under a kid that is.
    assert_eq!(
        accepts(
            &relay,
            &signed(Algorithm::RS256, "rs256.key", Some("rsa-1"), claims.clone())
        )
        .await,
        bad_sig
    );
    // The right key under the other key's kid.
    assert_eq!(
        accepts(
            &relay,
            &signed(
                Algorithm::ES256,
                "jwks-es256.key",
                Some("rsa-1"),
                claims.clone()
            )
        )
        .await,
        bad_sig
    );
    relay.stop().await;
}

#[tokio::test]
async fn hidden_columns_never_reach_the_roles_they_are_hidden_from() {
    let relay = secured().await;
    let db = relay.db().await;
    let (alice, poll) = seed(&db).await;
    db.execute(
        "UPDATE pgrelay.read_policies SET hidden_columns = '{hold_ms,created_at}' \
         WHERE table_name = 'user_votes' AND role = 'authenticated'",
        &[],
    )
    .await
    .unwrap();
    // The relay reloads policies when their table changes; a filter naming a hidden column
    // is refused once it has.
    let probe =
        json!([{"event":"*","schema":"public","table":"user_votes","filter":"hold_ms=gt.2999"}]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut ws = connect(&relay, &user_token(&alice)).await;
        let (_, reply) = ws.join("realtime:probe", probe.clone()).await;
        assert_eq!(reply["status"], "ok");
        match ws.try_recv(Duration::from_millis(300)).await {
            Some(sys) if sys.event == "system" && sys.payload["status"] == "error" => {
                assert_eq!(
                    sys.payload["message"],
                    "Unauthorized: column hold_ms of public.user_votes is hidden from role \
                     authenticated, so a filter may not name it"
                );
                break;
            }
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "policy never reloaded"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let every = json!([{"event":"*","schema":"public","table":"user_votes"}]);
    let mut a = connect(&relay, &user_token(&alice)).await;
    a.subscribe("realtime:votes", every.clone()).await;
    let service = token(json!({"role":"service_role","exp":now() + 3600}));
    let mut s = connect(&relay, &service).await;
    s.subscribe("realtime:votes", every.clone()).await;

    let id: i64 = db
        .query_one(
            "INSERT INTO user_votes (poll_id, user_id, option_index, hold_ms) \
             VALUES ($1, $2::text::uuid, 1, 3456) RETURNING id",
            &[&poll, &alice],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "UPDATE user_votes SET option_index = 0 WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();

    let names = |data: &Value| -> Vec<String> {
        data["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // Alice: her row, without the hidden columns, in the record, the old record and the
    // column list.
    let insert = a.recv_event("postgres_changes").await.payload["data"].clone();
    assert_eq!(insert["type"], "INSERT");
    assert_eq!(
        insert["record"],
        json!({"id": id, "poll_id": poll, "user_id": alice, "option_index": 1})
    );
    assert_eq!(names(&insert), ["id", "poll_id", "user_id", "option_index"]);
    let update = a.recv_event("postgres_changes").await.payload["data"].clone();
    assert_eq!(update["type"], "UPDATE");
    assert_eq!(update["record"]["option_index"], 0);
    assert_eq!(update["old_record"]["option_index"], 1);
    for row in [&update["record"], &update["old_record"]] {
        let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
        assert!(
            !keys.iter().any(|k| *k == "hold_ms" || *k == "created_at"),
            "{row}"
        );
    }
    assert!(update["commit_timestamp"].is_string());
    // The service role, whose rule hides nothing, gets every column.
    let full = s.recv_event("postgres_changes").await.payload["data"].clone();
    assert_eq!(full["record"]["hold_ms"], 3456);
    assert!(full["record"]["created_at"].is_string());
    assert_eq!(
        names(&full),
        [
            "id",
            "poll_id",
            "user_id",
            "option_index",
            "hold_ms",
            "created_at"
        ]
    );
    assert_eq!(
        s.recv_event("postgres_changes").await.payload["data"]["old_record"]["hold_ms"],
        3456
    );
    relay.stop().await;
}

/// A join payload for a private channel with broadcast acks.
fn private_join() -> Value {
    json!({"config":{"broadcast":{"ack":true,"self":false},"presence":{"key":"","enabled":false},
        "postgres_changes":[],"private":true}})
}

#[tokio::test]
async fn private_channels_follow_the_channel_policies() {
    let relay = secured().await;
    let db = relay.db().await;
    let alice = "0a11ce00-0000-4000-8000-000000000001";
    let bob = "0b0b0000-0000-4000-8000-000000000002";
    let service = token(json!({"role":"service_role","exp":now() + 3600}));
    let denied = |name: &str| {
        format!("Unauthorized: You do not have permissions to read from this Channel topic: {name}")
    };

    let mut a = connect(&relay, &user_token(alice)).await;
    // Shipped rules: a user's own `user:<sub>` channel, and everything for service_role.
    let own = format!("realtime:user:{alice}");
    let (_, reply) = a.join_with(&own, private_join()).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let theirs = format!("user:{bob}");
    let (_, reply) = a
        .join_with(&format!("realtime:{theirs}"), private_join())
        .await;
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["response"]["reason"], denied(&theirs));
    // The same name as a public channel is open (and a different topic).
    let mut public = private_join();
    public["config"]["private"] = json!(false);
    let (_, reply) = a.join_with(&format!("realtime:{theirs}"), public).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let anon = token(json!({"role":"anon","exp":now() + 3600}));
    let mut x = connect(&relay, &anon).await;
    let (_, reply) = x.join_with("realtime:room-1", private_join()).await;
    assert_eq!(reply["response"]["reason"], denied("room-1"));

    // A DBA opens room-* to signed-in users, read only.
    db.execute(
        "INSERT INTO pgrelay.channel_policies (topic_pattern, role, can_read) VALUES ('room-*', 'authenticated', true)",
        &[],
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (jr, _) = loop {
        let (jr, reply) = a.join_with("realtime:room-1", private_join()).await;
        if reply["status"] == "ok" {
            break (jr, reply);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never reloaded: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut s = connect(&relay, &service).await;
    let (sjr, reply) = s.join_with("realtime:room-1", private_join()).await;
    assert_eq!(reply["status"], "ok", "{reply}");

    // Alice may read but not send or track.
    a.push(
        Some(&jr),
        "b1",
        "realtime:room-1",
        "broadcast",
        json!({"type":"broadcast","event":"hi","payload":{"n":1}}),
    )
    .await;
    let r = a.recv_event("phx_reply").await;
    assert_eq!(r.msg_ref, json!("b1"));
    assert_eq!(r.payload["status"], "error");
    assert_eq!(
        r.payload["response"]["reason"],
        "Unauthorized: You do not have permissions to write to this Channel topic: room-1"
    );
    a.push(
        Some(&jr),
        "t1",
        "realtime:room-1",
        "presence",
        json!({"type":"presence","event":"track","payload":{"x":1}}),
    )
    .await;
    let r = a.recv_event("phx_reply").await;
    assert_eq!(r.msg_ref, json!("t1"));
    assert_eq!(
        r.payload["response"]["reason"],
        "Unauthorized: You do not have permissions to track presence on this Channel topic: room-1"
    );
    // REST broadcast: Alice refused, the service role delivered to Alice.
    let path = "/realtime/v1/api/broadcast/room-1/events/ev?vsn=2.0.0&private=true";
    let (status, body, _) = crate::api::request(
        relay.addr,
        "POST",
        path,
        &[("Authorization", &bearer(&user_token(alice)))],
        Some(b"{\"n\":2}"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        "Unauthorized: You do not have permissions to write to this Channel topic: room-1"
    );
    s.push(
        Some(&sjr),
        "b2",
        "realtime:room-1",
        "broadcast",
        json!({"type":"broadcast","event":"hi","payload":{"n":3}}),
    )
    .await;
    assert_eq!(s.recv_event("phx_reply").await.payload["status"], "ok");
    let got = a.recv_event("broadcast").await;
    assert_eq!(
        got.payload,
        json!({"type":"broadcast","event":"hi","payload":{"n":3}})
    );
    // Nothing of Alice's refused broadcast reached the service role.
    s.expect_silence(Duration::from_millis(300)).await;
    a.expect_silence(Duration::from_millis(300)).await;
    relay.stop().await;
}

#[tokio::test]
async fn joins_and_messages_per_second_are_limited_per_socket() {
    let relay = start_relay_with(|c| {
        c.limits.max_joins_per_second = 3;
        c.limits.max_messages_per_second = 6;
    })
    .await;
    let room = json!({"config":{"broadcast":{"ack":true,"self":false},"presence":{"key":"","enabled":false},"postgres_changes":[],"private":false}});
    // A watcher on another socket sees exactly what was accepted.
    let mut w = relay.ws("2.0.0").await;
    w.join_with("realtime:room", room.clone()).await;

    let mut ws = relay.ws("2.0.0").await;
    let (jr, _) = ws.join_with("realtime:room", room.clone()).await;
    let mut acks = Vec::new();
    // 14 broadcasts after the join: more than two seconds' budgets, however the windows fall.
    for i in 0..14 {
        ws.push(
            Some(&jr),
            &format!("m{i}"),
            "realtime:room",
            "broadcast",
            json!({"type":"broadcast","event":"n","payload":{"i":i}}),
        )
        .await;
    }
    // Heartbeats are never limited.
    ws.push(None, "hb", "phoenix", "heartbeat", json!({})).await;
    for _ in 0..15 {
        let r = ws.recv_event("phx_reply").await;
        acks.push((
            r.msg_ref.as_str().unwrap().to_owned(),
            r.payload["status"].as_str().unwrap().to_owned(),
            r.payload["response"]["reason"].clone(),
        ));
    }
    let hb = acks.iter().find(|a| a.0 == "hb").expect("heartbeat reply");
    assert_eq!(hb.1, "ok");
    let refused: Vec<_> = acks.iter().filter(|a| a.1 == "error").collect();
    let accepted: Vec<usize> = acks
        .iter()
        .filter(|a| a.1 == "ok" && a.0 != "hb")
        .map(|a| a.0[1..].parse().unwrap())
        .collect();
    // One second's budget of 6 held the join and at most 5 broadcasts (a window may have
    // turned meanwhile on a slow machine, never more than twice the budget).
    assert!(
        refused.len() >= 3 && accepted.len() + refused.len() == 14,
        "{acks:?}"
    );
    assert!(accepted.len() <= 11, "{acks:?}");
    for r in &refused {
        assert_eq!(r.2, "MessageRateLimitReached: Too many messages per second");
    }
    let mut seen = Vec::new();
    for _ in 0..accepted.len() {
        seen.push(
            w.recv_event("broadcast").await.payload["payload"]["i"]
                .as_u64()
                .unwrap() as usize,
        );
    }
    assert_eq!(seen, accepted);
    w.expect_silence(Duration::from_millis(300)).await;
    // The next second, the socket works again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ws.push(
        Some(&jr),
        "later",
        "realtime:room",
        "broadcast",
        json!({"type":"broadcast","event":"n","payload":{"i":99}}),
    )
    .await;
    assert_eq!(ws.recv_event("phx_reply").await.payload["status"], "ok");
    assert_eq!(w.recv_event("broadcast").await.payload["payload"]["i"], 99);

    // Joins: three a second; one over is refused with Supabase's text and ends the socket.
    let mut j = relay.ws("2.0.0").await;
    for i in 0..7 {
        let r = j.next_ref();
        j.push(
            Some(&r),
            &r,
            &format!("realtime:j{i}"),
            "phx_join",
            room.clone(),
        )
        .await;
    }
    let mut replies = Vec::new();
    let close = loop {
        match j.next_raw(WAIT).await {
            Some(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                let f = parse_frame("2.0.0", &t);
                if f.event == "phx_reply" {
                    replies.push(f.payload);
                }
            }
            Some(tokio_tungstenite::tungstenite::Message::Close(c)) => break c,
            Some(_) => continue,
            None => panic!("the socket was not closed; replies: {replies:?}"),
        }
    };
    let (last, oks) = replies.split_last().expect("replies");
    assert_eq!(last["status"], "error", "{replies:?}");
    assert_eq!(
        last["response"]["reason"],
        "ClientJoinRateLimitReached: Too many joins per second"
    );
    assert!(oks.len() >= 3 && oks.len() <= 6, "{replies:?}");
    assert!(oks.iter().all(|r| r["status"] == "ok"), "{replies:?}");
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "Too many joins per second");
    relay.stop().await;
}

/// `exp` must be a real time: `1e300` is not "never expires" and `-2^63` is not an expiry to
/// count seconds from. Both are refused at connect and over HTTP.
#[tokio::test]
async fn absurd_expiry_times_are_refused() {
    let relay = secured().await;
    for exp in [json!(1e300), json!(-9.223_372_036_854_776e18)] {
        let t = token(json!({"role":"anon","exp":exp}));
        assert_eq!(
            refused(&relay, &format!("apikey={t}&vsn=2.0.0")).await,
            (
                401,
                r#"{"error":"Field `exp` must be a time in seconds between 1970 and 9999"}"#.into()
            ),
            "exp {exp}"
        );
    }
    relay.stop().await;
}

/// A join after the connect-time apikey expired (and with no fresher `access_token`) is
/// refused outright: no "Subscribed", no presence state, no live value first.
#[tokio::test]
async fn a_join_after_the_connect_time_key_expired_is_refused() {
    let relay = secured().await;
    let short = token(json!({"role":"anon","exp":now() + 2}));
    let mut ws = connect(&relay, &short).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    for topic in ["realtime:statistics", "realtime:room"] {
        let (_, reply) = ws
            .join_with(
                topic,
                json!({"config":{"presence":{"key":"","enabled":true},
                        "postgres_changes":[{"event":"*","schema":"public","table":"polls"}]}}),
            )
            .await;
        assert_eq!(reply["status"], "error", "{reply}");
        let reason = reply["response"]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("InvalidJWTToken: Token has expired "),
            "{reason}"
        );
    }
    ws.expect_silence(Duration::from_millis(500)).await;
    relay.stop().await;
}
