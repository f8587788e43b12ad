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
    assert_eq!(body, r#"{"error":"Not found"}"#);

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
