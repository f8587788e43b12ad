//! Operating endpoints: health, readiness, metrics.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn health_ready_and_metrics() {
    let relay = start_relay().await;
    assert_eq!(http_get(relay.addr, "/health").await, (200, "ok".into()));
    assert_eq!(http_get(relay.addr, "/ready").await.0, 200);
    let (status, body) = http_get(relay.addr, "/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body, r#"{"code":"NotFound","error":"Not found"}"#);

    let db = relay.db().await;
    let mut a = relay.ws("2.0.0").await;
    let mut b = relay.ws("1.0.0").await;
    let bindings = json!([{"event":"*","schema":"public","table":"profiles"}]);
    a.subscribe("realtime:m", bindings.clone()).await;
    b.subscribe("realtime:m", bindings).await;
    db.execute("INSERT INTO profiles (username) VALUES ('m')", &[])
        .await
        .unwrap();
    a.recv_event("postgres_changes").await;
    b.recv_event("postgres_changes").await;

    let (status, body) = http_get(relay.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "pgrelay_connections"), 2.0);
    assert_eq!(metric(&body, "pgrelay_channels"), 2.0);
    assert_eq!(
        metric(&body, "pgrelay_bindings"),
        1.0,
        "shared binding counted once"
    );
    assert_eq!(metric(&body, "pgrelay_listening"), 1.0);
    assert_eq!(metric(&body, "pgrelay_connections_total"), 2.0);
    assert_eq!(metric(&body, "pgrelay_joins_total"), 2.0);
    assert_eq!(metric(&body, "pgrelay_changes_total"), 1.0);
    assert_eq!(metric(&body, "pgrelay_deliveries_total"), 2.0);
    assert_eq!(metric(&body, "pgrelay_cutoffs_total"), 0.0);
    assert_eq!(metric(&body, "pgrelay_commit_to_send_seconds_count"), 1.0);
    assert!(metric(&body, "pgrelay_pg_notification_queue_usage") < 0.01);
    assert!(metric(&body, "pgrelay_socket_queue_high_water") >= 1.0);
    relay.stop().await;
}

/// With `PGRELAY_METRICS_TOKEN` set, `/metrics` answers only to that bearer token.
#[tokio::test]
async fn metrics_can_require_a_token() {
    let relay = start_relay_with(|c| c.metrics_token = Some("m3trics".into())).await;
    async fn get(addr: std::net::SocketAddr, auth: Option<&str>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let header = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("m3trics"),
        Some("Bearer m3trics2"),
    ] {
        let resp = get(relay.addr, auth).await;
        assert!(resp.starts_with("HTTP/1.1 401"), "{auth:?}: {resp}");
        assert!(!resp.contains("pgrelay_connections"), "{auth:?}");
    }
    let resp = get(relay.addr, Some("Bearer m3trics")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\npgrelay_connections "), "{resp}");
    relay.stop().await;
}

/// A known path with a method it does not take is a 405 in the API's error shape, not a 404;
/// a body over the limit is a 413.
#[tokio::test]
async fn wrong_methods_and_oversized_bodies_get_their_own_answers() {
    let relay = start_relay().await;
    for path in ["/api/v1/profiles", "/realtime/v1/api/broadcast"] {
        let (status, text) = http_get(relay.addr, path).await;
        assert_eq!(status, 405, "GET {path}: {text}");
        assert_eq!(
            text,
            r#"{"code":"MethodNotAllowed","error":"Method not allowed"}"#
        );
    }
    // Refused on its Content-Length, before a byte of the body is read.
    let resp = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(
            b"POST /realtime/v1/api/broadcast HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 9437184\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    };
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains(r#""code":"PayloadTooLarge""#), "{resp}");
    relay.stop().await;
}
