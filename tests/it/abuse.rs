//! What one hostile client can make the relay do to everybody else: floods over the REST
//! broadcast, half-sent WebSocket frames, idle HTTP connections, boost loops. Each test runs
//! the real relay and checks that the flood is refused or shed while healthy clients go on.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn broadcast_join() -> Value {
    json!({"config":{"broadcast":{"ack":false,"self":false},
        "presence":{"key":"","enabled":false},"postgres_changes":[],"private":false}})
}

fn batch(topic: &str, n: usize) -> Vec<u8> {
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({"topic": topic, "event": "flood", "payload": {"i": i, "pad": "x".repeat(40)}}))
        .collect();
    json!({ "messages": messages }).to_string().into_bytes()
}

/// Read until a broadcast with event `marker` arrives; panics on a close or a cut-off notice.
async fn until_marker(ws: &mut Ws, marker: &str) -> usize {
    let mut seen = 0;
    loop {
        let f = ws.recv().await;
        assert_ne!(
            f.event, "system",
            "subscriber was told it is cut off: {f:?}"
        );
        if f.payload["event"] == marker {
            return seen;
        }
        seen += 1;
    }
}

/// The issue's repro: one anonymous request with 5,000 messages used to cut off every
/// subscriber of the topic with 1008. Now the batch is refused whole (429, Supabase's text),
/// nothing reaches the subscribers, and a caller over its per-second budget is refused too.
#[tokio::test]
async fn a_rest_broadcast_flood_is_refused_and_subscribers_stay() {
    let relay = start_relay().await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut ws = relay.ws("2.0.0").await;
        ws.join_with("realtime:room", broadcast_join()).await;
        subs.push(ws);
    }
    let (status, body) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast",
        "application/json",
        &batch("room", 5_000),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("Too many messages to broadcast, please reduce the batch size"),
        "{body}"
    );
    // The caller's budget: 100 a second. Two batches of 50 pass, the third does not fit.
    for _ in 0..2 {
        let (status, body) = http_post(
            relay.addr,
            "/realtime/v1/api/broadcast",
            "application/json",
            &batch("room", 50),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast",
        "application/json",
        &batch("room", 50),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    // Single sends count against the same budget: of 50 sent at once, most are refused.
    let singles = (0..50).map(|_| {
        http_post(
            relay.addr,
            "/realtime/v1/api/broadcast/room/events/one",
            "application/json",
            b"{}",
        )
    });
    let mut accepted = 0;
    for (status, body) in futures_util::future::join_all(singles).await {
        match status {
            202 => accepted += 1,
            429 => assert!(body.contains("You have exceeded your rate limit"), "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        accepted < 40,
        "{accepted} of 50 single sends accepted right after 100"
    );
    // Every subscriber got exactly the 100 accepted messages, then the marker.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast",
        "application/json",
        br#"{"messages":[{"topic":"room","event":"marker","payload":{}}]}"#,
    )
    .await;
    assert_eq!(status, 202);
    for ws in &mut subs {
        let seen = until_marker(ws, "marker").await;
        assert_eq!(seen, 100 + accepted, "messages before the marker");
    }
    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    assert_eq!(metric(&metrics, "pgrelay_cutoffs_total"), 0.0);
    assert!(metric(&metrics, "pgrelay_broadcasts_refused_total") >= 5_050.0);
    relay.stop().await;
}

/// With the limits raised, a batch far larger than a subscriber's queue is shed per
/// subscriber (counted) instead of cutting anyone off; a socket joined to the topic only for
/// row changes keeps getting them.
#[tokio::test]
async fn a_flood_within_the_limits_is_shed_not_cut_off() {
    let relay = start_relay_with(|c| {
        c.limits.guards.max_broadcast_batch = 10_000;
        c.limits.guards.max_broadcasts_per_second = 100_000;
        c.limits.socket_queue = 64;
    })
    .await;
    let db = relay.db().await;
    let mut rows = relay.ws("2.0.0").await;
    rows.subscribe(
        "realtime:room",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut ws = relay.ws("2.0.0").await;
        ws.join_with("realtime:room", broadcast_join()).await;
        subs.push(ws);
    }
    let (status, body) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast",
        "application/json",
        &batch("room", 5_000),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    assert_eq!(metric(&metrics, "pgrelay_cutoffs_total"), 0.0, "{metrics}");
    assert!(metric(&metrics, "pgrelay_broadcasts_shed_total") > 0.0);
    // Each subscriber drains what it was given, then gets what follows.
    for ws in &mut subs {
        let _ = ws.try_recv(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast",
        "application/json",
        br#"{"messages":[{"topic":"room","event":"marker","payload":{}}]}"#,
    )
    .await;
    assert_eq!(status, 202);
    for ws in &mut subs {
        let seen = until_marker(ws, "marker").await;
        assert!(seen < 64, "{seen} frames queued for a 64-frame queue");
    }
    db.execute(
        "INSERT INTO profiles (username) VALUES ('after-flood')",
        &[],
    )
    .await
    .unwrap();
    // It is a member of the topic, so it got its share of the flood first.
    let f = loop {
        let f = rows.recv().await;
        if f.event != "broadcast" {
            break f;
        }
    };
    assert_eq!(f.event, "postgres_changes", "{f:?}");
    assert_eq!(f.payload["data"]["record"]["username"], "after-flood");
    relay.stop().await;
}

/// Write bytes on the socket's TCP stream as they are, below the WebSocket layer.
async fn write_raw(ws: &mut Ws, bytes: &[u8]) -> bool {
    use tokio::io::AsyncWriteExt;
    match ws.stream.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => {
            tcp.write_all(bytes).await.is_ok() && tcp.flush().await.is_ok()
        }
        _ => false,
    }
}

/// A client announces a 2 MB frame (under the message limit) and trickles it a few bytes at
/// a time. It used to keep the buffer until the 60 s heartbeat timeout; now it is closed with
/// 1008 once the frame timeout passes, while a healthy socket keeps receiving.
#[tokio::test]
async fn a_trickled_frame_is_closed_at_the_frame_timeout() {
    let relay = start_relay_with(|c| c.limits.guards.frame_timeout = Duration::from_secs(1)).await;
    let db = relay.db().await;
    let mut healthy = relay.ws("2.0.0").await;
    healthy
        .subscribe(
            "realtime:rows",
            json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
        )
        .await;
    let mut slow = relay.ws("2.0.0").await;
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&2_000_000u64.to_be_bytes());
    head.extend_from_slice(&[0, 0, 0, 0]);
    head.extend_from_slice(b"[null,\"1\",\"phoenix\",\"heartbeat\",\"");
    assert!(write_raw(&mut slow, &head).await);
    let started = std::time::Instant::now();
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Past the timeout the relay closes: stop once a write fails or after 1.5 s.
            if !write_raw(&mut slow, b"yyyy").await
                || started.elapsed() > Duration::from_millis(1500)
            {
                break;
            }
        }
    };
    // Meanwhile the healthy socket gets a change.
    let (_, f) = tokio::join!(trickle, async {
        db.execute("INSERT INTO profiles (username) VALUES ('healthy')", &[])
            .await
            .unwrap();
        healthy.recv_event("postgres_changes").await
    });
    assert_eq!(f.payload["data"]["record"]["username"], "healthy");
    let close = loop {
        match slow.next_raw(Duration::from_secs(5)).await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => continue,
            None => panic!("no close frame"),
        }
    };
    let elapsed = started.elapsed();
    let frame = close.expect("a close frame with a reason");
    assert_eq!(u16::from(frame.code), 1008);
    assert_eq!(frame.reason.as_str(), "message not completed within 1s");
    assert!(elapsed < Duration::from_secs(4), "closed after {elapsed:?}");
    // The healthy socket is still served.
    db.execute("INSERT INTO profiles (username) VALUES ('after')", &[])
        .await
        .unwrap();
    let f = healthy.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["username"], "after");
    relay.stop().await;
}

/// Read from a raw connection until the relay closes it; the time it took.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            s.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Idle connections used to be held for ever and were not counted: 1,100 of them made
/// `/health` and WebSocket connects time out. Now every connection counts against
/// `PGRELAY_MAX_CONNECTIONS`, one over it is answered at once (429, `/health` still `ok`),
/// and a connection that sends no request head is closed after the header timeout, as is a
/// keep-alive connection left idle after its response.
#[tokio::test]
async fn idle_connections_are_counted_refused_and_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = start_relay_with(|c| {
        c.limits.max_connections = 10;
        c.limits.guards.http_header_timeout = Duration::from_secs(1);
    })
    .await;
    // The readiness probe's connection may still be closing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(relay.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (status, body) = http_get(relay.addr, "/api/v1/stats").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("Too many connected users"), "{body}");
    assert_eq!(
        http_get(relay.addr, "/health").await,
        (200, "ok".to_owned())
    );
    let refused = tokio_tungstenite::connect_async(relay.url("2.0.0")).await;
    assert!(refused.is_err(), "a WebSocket over the limit was accepted");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "refusals took {:?}",
        started.elapsed()
    );
    // The idle ones never sent a request: closed after the header timeout.
    for s in &mut idle {
        let took = closed_within(s, Duration::from_secs(5)).await;
        assert!(took.is_some(), "an idle connection was not closed");
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
    // Their places are free again: sockets count too.
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(relay.ws("2.0.0").await);
    }
    let (status, _) = http_get(relay.addr, "/api/v1/stats").await;
    assert_eq!(status, 429, "a request got in beside 10 sockets");
    assert_eq!(http_get(relay.addr, "/health").await.0, 200);
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // And so do event streams.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let path = "/api/v1/changes?schema=public&table=profiles&event=INSERT";
        let sse = Sse::connect(relay.addr, path, None).await;
        assert_eq!(sse.status, 200);
        streams.push(sse);
    }
    let (status, _) = http_get(relay.addr, "/api/v1/stats").await;
    assert_eq!(status, 429, "a request got in beside 10 event streams");
    drop(streams);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Keep-alive: one request answered, then the idle connection is closed by the relay.
    let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let took = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection was not closed");
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
    relay.stop().await;
}

/// Boosts used to be unlimited (an anonymous caller boosted 20 times in a row). Now each user
/// has `PGRELAY_MAX_BOOSTS_PER_MINUTE` and each IP `PGRELAY_MAX_BOOSTS_PER_IP_PER_MINUTE`;
/// over either the boost is 429 `BoostRateLimitReached` and not counted.
#[tokio::test]
async fn boosts_are_rate_limited_per_user_and_per_ip() {
    use crate::api::{assert_error, poll, request};
    let relay = start_relay_with(|c| c.limits.guards.max_boosts_per_ip_per_minute = 15).await;
    let db = relay.db().await;
    let p = poll(&db, "Boost me?", json!(["a"]), "active").await;
    let path = format!("/api/v1/polls/{p}/boost");
    let boost = |user: &'static str| {
        let path = path.clone();
        let addr = relay.addr;
        async move {
            let (status, body, head) =
                request(addr, "POST", &path, &[("X-User-Id", user)], None).await;
            (status, body, head)
        }
    };
    let ada = "00000000-0000-4000-8000-00000000000a";
    let bob = "00000000-0000-4000-8000-00000000000b";
    for n in 1..=10 {
        let (status, body, _) = boost(ada).await;
        assert_eq!(status, 200, "boost {n}: {body}");
    }
    let (status, body, head) = boost(ada).await;
    assert_error((status, body.clone()), 429, "BoostRateLimitReached");
    assert!(head.contains("retry-after: 60"), "{head}");
    // Another user from the same IP has a budget of their own, up to the IP's 15.
    for n in 1..=5 {
        let (status, body, _) = boost(bob).await;
        assert_eq!(status, 200, "bob's boost {n}: {body}");
    }
    assert_error(
        {
            let (s, b, _) = boost(bob).await;
            (s, b)
        },
        429,
        "BoostRateLimitReached",
    );
    // Without a user, the IP's budget is all there is.
    let (status, body, _) = request(relay.addr, "POST", &path, &[], None).await;
    assert_error((status, body), 429, "BoostRateLimitReached");
    let count: i32 = db
        .query_one("SELECT boost_count FROM polls WHERE id = $1", &[&p])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 15);
    relay.stop().await;
}
