//! Server-sent events: the change stream over HTTP, resumable with Last-Event-ID, across
//! reconnects and relay crashes, without losing or repeating a change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::faults::check_polls_stream;
use crate::lifecycle::{signal, spawn_relay};
use crate::support::*;

fn data(e: &SseEvent) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

#[tokio::test]
async fn streams_changes_and_resumes_from_last_event_id() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let path = "/api/v1/changes?schema=public&table=profiles&event=INSERT";
    let mut sse = Sse::connect(relay.addr, path, None).await;
    assert_eq!(sse.status, 200);
    sse.wait_for_position().await;
    for i in 0..3 {
        db.execute(
            "INSERT INTO profiles (username) VALUES ($1)",
            &[&format!("s{i}")],
        )
        .await
        .unwrap();
    }
    db.execute("UPDATE profiles SET display_name = 'x'", &[])
        .await
        .unwrap(); // UPDATEs are not asked for
    let mut got = Vec::new();
    for _ in 0..2 {
        let e = sse.next(WAIT).await.expect("event");
        assert_eq!(e.event, None, "a plain message event");
        let d = data(&e);
        assert_eq!(d["type"], "INSERT");
        assert_eq!(d["table"], "profiles");
        assert_eq!(d["schema"], "public");
        assert!(d["columns"].is_array());
        got.push(d["record"]["username"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ["s0", "s1"]);
    let resume_from = sse.last_id.clone().expect("id");
    drop(sse);
    db.execute("INSERT INTO profiles (username) VALUES ('s3')", &[])
        .await
        .unwrap();

    let mut sse = Sse::connect(relay.addr, path, Some(&resume_from)).await;
    assert_eq!(sse.status, 200);
    for want in ["s2", "s3"] {
        let e = sse.next(WAIT).await.expect("event");
        assert_eq!(data(&e)["record"]["username"], want);
    }
    assert!(
        sse.next(Duration::from_millis(2500)).await.is_none(),
        "nothing repeated"
    );
    relay.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_reasons() {
    let relay = start_relay().await;
    let cases = [
        (
            "/api/v1/changes?table=polls&filter=status=foo.bar",
            "Error parsing `filter` params: [\"foo\", \"bar\"]",
        ),
        (
            "/api/v1/changes?table=nope",
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: nil, table: nope, filters: []]",
        ),
    ];
    for (path, message) in cases {
        let sse = Sse::connect(relay.addr, path, None).await;
        assert_eq!(sse.status, 400, "{path}");
        let body: Value = serde_json::from_str(&sse.body().await).unwrap();
        assert_eq!(body["error"], message, "{path}");
    }
    let sse = Sse::connect(relay.addr, "/api/v1/changes?table=polls", Some("'; DROP")).await;
    assert_eq!(sse.status, 400);
    assert_eq!(sse.body().await, r#"{"error":"invalid Last-Event-ID"}"#);
    relay.stop().await;
}

#[tokio::test]
async fn sigkill_and_restart_lose_and_repeat_nothing() {
    let db = TestDb::new().await;
    let (mut child, addr) = spawn_relay(&db, "127.0.0.1:0").await;
    let listen = addr.to_string();

    // Two clients that reconnect with Last-Event-ID whenever the stream ends, like EventSource.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let path = "/api/v1/changes?schema=public&table=polls";
            let mut last: Option<String> = None;
            let mut events: Vec<Value> = Vec::new();
            let mut quiet_since = tokio::time::Instant::now();
            loop {
                let connect = tokio::time::timeout(
                    Duration::from_secs(2),
                    Sse::try_connect(addr, path, last.as_deref()),
                );
                let mut sse = match connect.await {
                    Ok(Ok(sse)) if sse.status == 200 => sse,
                    _ => {
                        // Relay down or still starting: retry like EventSource.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                loop {
                    match sse.poll(Duration::from_millis(500)).await {
                        SseNext::Event(e) => {
                            assert_ne!(e.event.as_deref(), Some("system"), "{e:?}");
                            events.push(data(&e));
                            quiet_since = tokio::time::Instant::now();
                        }
                        SseNext::Timeout => {
                            if stop.load(Ordering::Relaxed)
                                && quiet_since.elapsed() > Duration::from_secs(4)
                            {
                                return events;
                            }
                        }
                        SseNext::Closed => break,
                    }
                }
                last = sse.last_id.clone().or(last);
            }
        }));
    }

    let writer_stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let c = db.client().await;
        let stop = writer_stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if n % 3 == 0 {
                    c.execute(
                        "INSERT INTO polls (question) VALUES ($1)",
                        &[&format!("q{n}")],
                    )
                    .await
                    .unwrap();
                } else {
                    c.execute(
                        "UPDATE polls SET boost_count = boost_count + 1 WHERE id = \
                         (SELECT id FROM polls ORDER BY random() LIMIT 1)",
                        &[],
                    )
                    .await
                    .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal(&child, "-KILL");
        let _ = child.wait().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (next, _) = spawn_relay(&db, &listen).await;
        child = next;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    writer_stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    stop.store(true, Ordering::Relaxed);

    let truth: BTreeMap<i64, i32> = db
        .client()
        .await
        .query("SELECT id, boost_count FROM polls", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let events = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("client finishes")
            .unwrap();
        check_polls_stream(&format!("sse client {i}"), &events, &truth);
    }
    signal(&child, "-TERM");
    let _ = child.wait().await;
}

/// A stream opened without `Last-Event-ID` starts where it connects: a change committed just
/// before is not sent, the next one is.
#[tokio::test]
async fn a_fresh_stream_starts_at_the_connect_point() {
    let relay = start_relay().await;
    let db = relay.db().await;
    db.execute("INSERT INTO profiles (username) VALUES ('before')", &[])
        .await
        .unwrap();
    let path = "/api/v1/changes?schema=public&table=profiles&event=INSERT";
    let mut sse = Sse::connect(relay.addr, path, None).await;
    assert_eq!(sse.status, 200);
    sse.wait_for_position().await;
    db.execute("INSERT INTO profiles (username) VALUES ('after')", &[])
        .await
        .unwrap();
    let e = loop {
        let e = sse.next(WAIT).await.expect("event");
        if !e.data.is_empty() {
            break e;
        }
    };
    assert_eq!(data(&e)["record"]["username"], "after");
    relay.stop().await;
}

/// A stream lives as long as its token: at `exp` it ends with a `system` event, as a socket's
/// channels do, and a change committed afterwards is not sent.
#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "test-secret-with-enough-length";
    let relay = start_relay_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let db = relay.db().await;
    let exp = chrono::Utc::now().timestamp() + 2;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"role":"anon","exp":exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let path = format!("/api/v1/changes?schema=public&table=profiles&event=INSERT&apikey={token}");
    let mut sse = Sse::connect(relay.addr, &path, None).await;
    assert_eq!(sse.status, 200);
    let ended = loop {
        match sse.poll(Duration::from_secs(6)).await {
            SseNext::Event(e) if e.event.as_deref() == Some("system") => break e,
            SseNext::Event(_) => continue,
            SseNext::Timeout => panic!("still streaming after the token expired"),
            SseNext::Closed => panic!("closed without a system event"),
        }
    };
    let d = data(&ended);
    assert_eq!(d["status"], "error");
    assert_eq!(d["message"], "Token has expired 0 seconds ago");
    db.execute("INSERT INTO profiles (username) VALUES ('late')", &[])
        .await
        .unwrap();
    assert!(
        matches!(sse.poll(Duration::from_secs(2)).await, SseNext::Closed),
        "the stream ended"
    );
    relay.stop().await;
}
