//! Trust boundaries on the database side: what a role other than the relay's can make the
//! relay's SQL do.

use crate::support::*;

/// The owner of a published table gives a column type a cast to `json` that makes its caller
/// superuser, then writes a row. `to_jsonb(NEW)` in the trigger calls that cast; it must run
/// with the writer's rights, never the trigger function owner's.
#[tokio::test]
async fn a_table_owner_cannot_become_superuser_through_a_json_cast() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let name = format!("owner_{}", relay.db.name.rsplit('_').next().unwrap_or("x"));
    db.batch_execute(&format!(
        "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; \
         GRANT USAGE, CREATE ON SCHEMA public TO {name}"
    ))
    .await
    .unwrap();
    let mut cfg: tokio_postgres::Config = relay.db.url.parse().unwrap();
    cfg.user(&name);
    let (owner, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    owner
        .batch_execute(&format!(
            "CREATE TABLE public.{name}_t (id int PRIMARY KEY); \
             CREATE TRIGGER pgrelay_notify AFTER INSERT OR UPDATE OR DELETE ON public.{name}_t \
                 FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change(); \
             CREATE TYPE public.{name}_mood AS ENUM ('x'); \
             CREATE FUNCTION public.{name}_json(public.{name}_mood) RETURNS json \
                 LANGUAGE plpgsql AS $f$ BEGIN \
                     EXECUTE format('ALTER ROLE %I SUPERUSER', '{name}'); \
                     RETURN '\"x\"'::json; \
                 END $f$; \
             CREATE CAST (public.{name}_mood AS json) WITH FUNCTION public.{name}_json(public.{name}_mood); \
             ALTER TABLE public.{name}_t ADD COLUMN m public.{name}_mood"
        ))
        .await
        .unwrap();
    // The write itself fails (the cast runs as the owner, who may not ALTER ROLE), or
    // succeeds without the cast's effect: either way the owner is not superuser.
    let _ = owner
        .batch_execute(&format!("INSERT INTO public.{name}_t VALUES (1, 'x')"))
        .await;
    let superuser: bool = db
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "the table owner became superuser");
    // A plain row of the owner's table still reaches the log, logged as the owner.
    owner
        .batch_execute(&format!("INSERT INTO public.{name}_t (id) VALUES (2)"))
        .await
        .unwrap();
    let logged: i64 = db
        .query_one(
            "SELECT count(*) FROM pgrelay.change_log WHERE table_name = $1",
            &[&format!("{name}_t")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1);
    drop(owner);
    db.batch_execute(&format!("DROP OWNED BY {name} CASCADE; DROP ROLE {name}"))
        .await
        .unwrap();
    relay.stop().await;
}

mod internal_schema {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};
    use std::time::Duration;

    use crate::support::*;

    const SECRET: &str = "test-secret-with-enough-length";

    fn token(role: &str) -> String {
        let exp = chrono::Utc::now().timestamp() + 3600;
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"role": role, "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    async fn connect(relay: &Relay, apikey: &str) -> Ws {
        let url = format!(
            "ws://{}/realtime/v1/websocket?apikey={apikey}&vsn=2.0.0",
            relay.addr
        );
        Ws::connect(&url, "2.0.0").await
    }

    async fn refused(ws: &mut Ws, topic: &str, bindings: Value) {
        let (_, reply) = ws.join(topic, bindings).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let sys = ws.recv().await;
        assert_eq!(sys.event, "system");
        assert_eq!(sys.payload["status"], "error");
        let message = sys.payload["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "Unauthorized: schema pgrelay is internal to the relay; only service_role may subscribe to it"
            ),
            "{message}"
        );
    }

    async fn add_policy(db: &tokio_postgres::Client, role: &str) {
        db.execute(
            "INSERT INTO pgrelay.read_policies (table_name, role, row_filter) \
             VALUES ('polls', $1, 'status=eq.active')",
            &[&role],
        )
        .await
        .unwrap();
    }

    /// With auth off nobody is service_role: the relay's tables are refused by name and by
    /// schema wildcard, and a wildcard over every schema does not carry them.
    #[tokio::test]
    async fn without_auth_no_one_reads_the_relay_schema() {
        let relay = start_relay().await;
        let db = relay.db().await;
        let mut ws = relay.ws("2.0.0").await;
        refused(
            &mut ws,
            "realtime:p1",
            json!([{"event":"*","schema":"pgrelay","table":"read_policies"}]),
        )
        .await;
        refused(
            &mut ws,
            "realtime:p2",
            json!([{"event":"*","schema":"pgrelay","table":"*"}]),
        )
        .await;
        let mut every = relay.ws("2.0.0").await;
        every
            .subscribe(
                "realtime:all",
                json!([{"event":"*","schema":"*","table":"*"}]),
            )
            .await;
        add_policy(&db, "anon").await;
        db.execute("INSERT INTO profiles (username) VALUES ('visible')", &[])
            .await
            .unwrap();
        let f = every.recv_event("postgres_changes").await;
        assert_eq!(f.payload["data"]["schema"], "public");
        assert_eq!(f.payload["data"]["table"], "profiles");
        assert_eq!(f.payload["data"]["record"]["username"], "visible");
        every.expect_silence(Duration::from_millis(800)).await;
        ws.expect_silence(Duration::from_millis(200)).await;
        relay.stop().await;
    }

    /// With auth on, anon and authenticated tokens are refused; service_role names the schema
    /// and gets the policy rows.
    #[tokio::test]
    async fn with_auth_only_service_role_reads_the_relay_schema() {
        let relay = start_relay_with(|c| c.jwt_secret = Some(SECRET.into())).await;
        let db = relay.db().await;
        let policies = json!([{"event":"INSERT","schema":"pgrelay","table":"read_policies"}]);
        for role in ["anon", "authenticated"] {
            let mut ws = connect(&relay, &token(role)).await;
            refused(&mut ws, "realtime:policies", policies.clone()).await;
        }
        let mut service = connect(&relay, &token("service_role")).await;
        service.subscribe("realtime:policies", policies).await;
        add_policy(&db, "authenticated").await;
        let f = service.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["schema"], "pgrelay");
        assert_eq!(data["table"], "read_policies");
        assert_eq!(data["record"]["role"], "authenticated");
        assert_eq!(data["record"]["row_filter"], "status=eq.active");
        relay.stop().await;
    }
}

mod origins {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use crate::support::*;

    /// A raw HTTP/1.1 request; returns the whole response text.
    async fn raw(addr: std::net::SocketAddr, head: &str, body: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Upgrade with an `Origin`; the HTTP status of the answer (101 when it upgraded).
    async fn upgrade(relay: &Relay, origin: &str) -> u16 {
        let url = format!(
            "ws://{}/realtime/v1/websocket?vsn=2.0.0&apikey=x",
            relay.addr
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{origin}: {e}"),
        }
    }

    /// With auth off, a page on another site can neither open a socket nor write through the
    /// API (a "simple" text/plain POST needs no preflight); the relay's own pages and pages on
    /// loopback can, and get CORS answers.
    #[tokio::test]
    async fn with_auth_off_only_own_and_loopback_pages_get_in() {
        let relay = start_relay().await;
        let db = relay.db().await;
        assert_eq!(upgrade(&relay, "https://evil.example").await, 403);
        assert_eq!(upgrade(&relay, "http://localhost:5173").await, 101);
        assert_eq!(
            upgrade(&relay, &format!("http://{}", relay.addr)).await,
            101
        );

        let resp = raw(
            relay.addr,
            "POST /api/v1/profiles HTTP/1.1\r\nOrigin: https://evil.example\r\nContent-Type: text/plain",
            r#"{"username":"csrf"}"#,
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
        assert!(
            resp.contains(r#""error":"Origin not allowed: https://evil.example""#),
            "{resp}"
        );
        assert!(!resp
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"));
        let n: i64 = db
            .query_one("SELECT count(*) FROM profiles WHERE username = 'csrf'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "the cross-site POST wrote nothing");

        let resp = raw(
            relay.addr,
            "OPTIONS /api/v1/polls HTTP/1.1\r\nOrigin: http://localhost:5173\r\nAccess-Control-Request-Method: POST",
            "",
        )
        .await
        .to_ascii_lowercase();
        assert!(resp.starts_with("http/1.1 204"), "{resp}");
        assert!(
            resp.contains("access-control-allow-origin: http://localhost:5173"),
            "{resp}"
        );
        assert!(
            resp.contains("access-control-allow-methods: get, post, options"),
            "{resp}"
        );
        let resp = raw(
            relay.addr,
            "OPTIONS /api/v1/polls HTTP/1.1\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST",
            "",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");

        let resp = raw(
            relay.addr,
            "GET /api/v1/stats HTTP/1.1\r\nOrigin: http://127.0.0.1:3000",
            "",
        )
        .await
        .to_ascii_lowercase();
        assert!(resp.starts_with("http/1.1 200"), "{resp}");
        assert!(
            resp.contains("access-control-allow-origin: http://127.0.0.1:3000"),
            "{resp}"
        );
        // No Origin: not a browser, nothing to defend.
        let resp = raw(relay.addr, "GET /api/v1/stats HTTP/1.1", "").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        relay.stop().await;
    }

    /// `PGRELAY_ALLOWED_ORIGINS` replaces the default: listed origins get in, others do not,
    /// even with auth on (whose default admits any origin).
    #[tokio::test]
    async fn the_allowed_origins_setting_replaces_the_default() {
        let relay = start_relay_with(|c| {
            c.jwt_secret = Some("test-secret-with-enough-length".into());
            c.allowed_origins = Some("https://app.example".into());
        })
        .await;
        assert_eq!(upgrade(&relay, "https://evil.example").await, 403);
        assert_eq!(upgrade(&relay, "http://localhost:5173").await, 403);
        // Admitted by origin; refused only later, for its missing key.
        assert_eq!(upgrade(&relay, "https://app.example").await, 401);
        relay.stop().await;

        let open =
            start_relay_with(|c| c.jwt_secret = Some("test-secret-with-enough-length".into()))
                .await;
        assert_eq!(
            upgrade(&open, "https://evil.example").await,
            401,
            "auth on: any origin, key checked"
        );
        open.stop().await;
    }
}
