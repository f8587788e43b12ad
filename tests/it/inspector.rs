//! The inspector page at `/`: served by the relay itself, self-contained, and speaking the
//! protocol the relay serves. The page in a real browser (it connects, joins, shows live changes
//! and the relay's figures, with no script error) is tests/browser/inspector.test.mjs.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A GET returning (status line, headers lowercased, body).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8(buf).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn root_serves_the_inspector() {
    let relay = start_relay().await;
    let (status, headers, body) = get(relay.addr, "/").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/html; charset=utf-8"),
        "{headers}"
    );
    // The controls and panels the page is built from.
    for id in [
        "id=\"ws-url\"",
        "id=\"apikey\"",
        "id=\"connect\"",
        "id=\"channel-name\"",
        "id=\"bindings\"",
        "id=\"add-binding\"",
        "id=\"join\"",
        "id=\"channels\"",
        "id=\"figures\"",
        "id=\"log\"",
    ] {
        assert!(body.contains(id), "{id} missing from the page");
    }
    // What it speaks and polls.
    for needle in [
        "new WebSocket(",
        "\"vsn\", \"2.0.0\"",
        "/realtime/v1/websocket",
        "\"phx_join\"",
        "\"heartbeat\"",
        "HEARTBEAT_MS = 25000",
        "postgres_changes",
        "/metrics",
        "METRICS_MS = 2000",
        "pgrelay_pg_notification_queue_usage",
        "pgrelay_commit_to_send_seconds_count",
        "pgrelay_ingest_mode",
        "pgrelay_ingest_tailing",
        "pgrelay_ingest_lag_seconds",
        "pgrelay_ingest_reads_total",
        "pgrelay_notify_lock_waiters",
    ] {
        assert!(body.contains(needle), "{needle} missing from the page");
    }
    // Self-contained: nothing loaded from elsewhere (the relay may run with no network).
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "<link "] {
        assert!(!body.contains(external), "external resource: {external}");
    }
    // Every figure the page reads exists in /metrics.
    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    let mut rest = body.as_str();
    while let Some(at) = rest.find("pgrelay_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        rest = &rest[at + name.len()..];
        assert!(
            metrics.lines().any(|l| l.starts_with(&name)),
            "the page reads {name}, which /metrics lacks"
        );
    }
    // Only `/` is the page: other unknown paths are still 404.
    let (status, _, _) = get(relay.addr, "/inspector/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    relay.stop().await;
}
