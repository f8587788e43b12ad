//! Presence and broadcast between sockets (docs/protocol.md, "Presence" and "Broadcast").

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn presence_config(key: &str) -> Value {
    json!({"config":{"broadcast":{"ack":false,"self":false},
        "presence":{"key":key,"enabled":true},"postgres_changes":[],"private":false}})
}

async fn track(ws: &mut Ws, join_ref: &str, topic: &str, payload: Value) -> Frame {
    let r = ws.next_ref();
    ws.push(
        Some(join_ref),
        &r,
        topic,
        "presence",
        json!({"type":"presence","event":"track","payload":payload}),
    )
    .await;
    loop {
        let f = ws.recv().await;
        if f.event == "phx_reply" && f.msg_ref == json!(r) {
            return f;
        }
    }
}

/// Next `presence_diff`, skipping nothing else silently.
async fn diff(ws: &mut Ws) -> Value {
    let f = ws.recv_event("presence_diff").await;
    assert_eq!(f.join_ref, json!(null));
    f.payload
}

#[tokio::test]
async fn presence_state_diffs_and_leaves() {
    let relay = start_relay().await;
    let topic = "realtime:button-presence";
    let mut a = relay.ws("2.0.0").await;
    let (ja, reply) = a.join_with(topic, presence_config("alice")).await;
    assert_eq!(reply["status"], "ok");
    let state = a.recv().await;
    assert_eq!(state.event, "presence_state");
    assert_eq!(state.payload, json!({}));

    let reply = track(&mut a, &ja, topic, json!({"online_at":"t1"})).await;
    assert_eq!(reply.payload, json!({"status":"ok","response":{}}));
    let d = diff(&mut a).await; // the tracker gets its own join
    let meta = &d["joins"]["alice"]["metas"][0];
    assert_eq!(meta["online_at"], "t1");
    let alice_ref = meta["phx_ref"].as_str().unwrap().to_owned();
    assert_eq!(d["leaves"], json!({}));

    // A second socket joins: its presence_state holds alice.
    let mut b = relay.ws("1.0.0").await;
    let (jb, _) = b.join_with(topic, presence_config("")).await;
    let state = b.recv().await;
    assert_eq!(state.event, "presence_state");
    assert_eq!(
        state.payload,
        json!({"alice":{"metas":[{"online_at":"t1","phx_ref":alice_ref}]}})
    );
    // An empty key gets a server-generated one.
    track(&mut b, &jb, topic, json!({"n":1})).await;
    let d = diff(&mut a).await;
    let joins = d["joins"].as_object().unwrap();
    assert_eq!(joins.len(), 1);
    let bob_key = joins.keys().next().unwrap().clone();
    assert_eq!(bob_key.len(), 36, "uuid key: {bob_key}");
    assert_eq!(diff(&mut b).await, d);

    // Re-track with a new payload: new meta in joins (phx_ref_prev), old in leaves.
    track(&mut a, &ja, topic, json!({"online_at":"t2"})).await;
    let d = diff(&mut b).await;
    assert_eq!(
        d["leaves"]["alice"]["metas"][0]["phx_ref"],
        alice_ref.as_str()
    );
    assert_eq!(
        d["joins"]["alice"]["metas"][0]["phx_ref_prev"],
        alice_ref.as_str()
    );
    assert_eq!(d["joins"]["alice"]["metas"][0]["online_at"], "t2");
    diff(&mut a).await;
    // Same payload again: ok, no diff.
    track(&mut a, &ja, topic, json!({"online_at":"t2"})).await;
    b.expect_silence(Duration::from_millis(300)).await;

    // Untrack → leave.
    let r = b.next_ref();
    b.push(
        Some(&jb),
        &r,
        topic,
        "presence",
        json!({"type":"presence","event":"untrack"}),
    )
    .await;
    assert_eq!(b.recv().await.payload["status"], "ok");
    let d = diff(&mut a).await;
    assert!(d["leaves"].get(&bob_key).is_some(), "{bob_key} not in {d}");
    assert_eq!(diff(&mut b).await, d, "the untracker hears its own leave");

    // A socket that drops (no close frame) leaves.
    let mut c = relay.ws("2.0.0").await;
    let (jc, _) = c.join_with(topic, presence_config("carol")).await;
    c.recv().await;
    track(&mut c, &jc, topic, json!({})).await;
    assert!(diff(&mut a).await["joins"].get("carol").is_some());
    drop(c);
    let d = diff(&mut a).await;
    assert!(d["leaves"].get("carol").is_some(), "{d}");
    // b (presence enabled) heard carol come and go.
    assert!(diff(&mut b).await["joins"].get("carol").is_some());
    assert!(diff(&mut b).await["leaves"].get("carol").is_some());

    // phx_leave leaves too.
    let r = a.next_ref();
    a.push(Some(&ja), &r, topic, "phx_leave", json!({})).await;
    let d = diff(&mut b).await;
    assert!(d["leaves"].get("alice").is_some(), "{d}");
    relay.stop().await;
}

#[tokio::test]
async fn presence_errors_and_limits() {
    let relay = start_relay_with(|c| {
        c.limits.max_presence_payload_bytes = 100;
        c.limits.max_presence_events_per_second = 5;
    })
    .await;
    let topic = "realtime:p";
    let mut a = relay.ws("2.0.0").await;
    let (ja, _) = a.join_with(topic, presence_config("k")).await;
    a.recv().await; // presence_state
    let r = track(&mut a, &ja, topic, json!("not a map")).await;
    assert_eq!(
        r.payload,
        json!({"status":"error","response":{"reason":"Presence track payload must be a map"}})
    );
    let r = track(&mut a, &ja, topic, json!({"big":"x".repeat(200)})).await;
    assert!(r.payload["response"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("PresencePayloadTooLarge: Track message size exceeded"));
    let mut limited = false;
    for i in 0..10 {
        let r = track(&mut a, &ja, topic, json!({"i":i})).await;
        if r.payload["status"] == "error" {
            assert_eq!(
                r.payload["response"]["reason"],
                "PresenceRateLimitReached: Too many presence messages per second"
            );
            limited = true;
        }
    }
    assert!(limited);
    relay.stop().await;
}

/// A topic holds at most `PGRELAY_MAX_PRESENCE_PER_TOPIC` presences: one more track is
/// refused with `PresenceLimitReached`, re-tracking an existing presence is not, and a leave
/// makes room.
#[tokio::test]
async fn presences_per_topic_are_bounded() {
    let relay = start_relay_with(|c| c.limits.max_presence_per_topic = 3).await;
    let topic = "realtime:crowd";
    let mut sockets = Vec::new();
    for i in 0..4 {
        let mut ws = relay.ws("1.0.0").await;
        let (jr, _) = ws.join_with(topic, presence_config(&format!("u{i}"))).await;
        ws.recv_event("presence_state").await;
        sockets.push((ws, jr));
    }
    for (i, (ws, jr)) in sockets.iter_mut().take(3).enumerate() {
        let r = track(ws, jr, topic, json!({"i": i})).await;
        assert_eq!(r.payload["status"], "ok", "{r:?}");
    }
    let (ws, jr) = &mut sockets[3];
    let r = track(ws, jr, topic, json!({"i": 3})).await;
    assert_eq!(
        r.payload,
        json!({"status":"error","response":{"reason":"PresenceLimitReached: Too many presences in this channel (maximum 3)"}})
    );
    // A member already tracked may change its meta at the limit.
    let (ws, jr) = &mut sockets[0];
    let r = track(ws, jr, topic, json!({"i": 0, "again": true})).await;
    assert_eq!(r.payload["status"], "ok", "{r:?}");
    // One leaves: room for the fourth.
    let (ws, jr) = &mut sockets[1];
    let r = ws.next_ref();
    ws.push(Some(jr.as_str()), &r, topic, "phx_leave", json!({}))
        .await;
    ws.recv_event("phx_reply").await;
    let (ws, jr) = &mut sockets[3];
    let mut tracked = false;
    for _ in 0..50 {
        let r = track(ws, jr, topic, json!({"i": 3})).await;
        if r.payload["status"] == "ok" {
            tracked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tracked, "the fourth tracks once a member left");
    relay.stop().await;
}

/// Many members tracking at once: a watcher gets their joins in a few `presence_diff` frames
/// (one per batching window), not one frame per join, and every join is in them.
#[tokio::test]
async fn a_burst_of_tracks_reaches_members_in_batched_diffs() {
    let relay = start_relay().await;
    let topic = "realtime:burst";
    let mut watcher = relay.ws("1.0.0").await;
    watcher.join_with(topic, presence_config("watcher")).await;
    watcher.recv_event("presence_state").await;
    const N: usize = 30;
    let mut members = Vec::new();
    for i in 0..N {
        let mut ws = relay.ws("1.0.0").await;
        let (jr, _) = ws.join_with(topic, presence_config(&format!("m{i}"))).await;
        ws.recv_event("presence_state").await;
        members.push((ws, jr));
    }
    // All tracks go out before any reply is read.
    for (i, (ws, jr)) in members.iter_mut().enumerate() {
        let r = ws.next_ref();
        ws.push(
            Some(jr.as_str()),
            &r,
            topic,
            "presence",
            json!({"type":"presence","event":"track","payload":{"i": i}}),
        )
        .await;
    }
    let mut joined = std::collections::BTreeSet::new();
    let mut frames = 0;
    while joined.len() < N {
        let d = diff(&mut watcher).await;
        frames += 1;
        for (key, v) in d["joins"].as_object().unwrap() {
            assert_eq!(v["metas"].as_array().unwrap().len(), 1, "{d}");
            joined.insert(key.clone());
        }
        assert_eq!(d["leaves"], json!({}));
    }
    assert_eq!(joined.len(), N);
    assert!(
        frames < N / 2,
        "{frames} presence_diff frames for {N} joins: not batched"
    );
    relay.stop().await;
}

fn broadcast_config(self_: bool, ack: bool, private: bool) -> Value {
    json!({"config":{"broadcast":{"ack":ack,"self":self_},
        "presence":{"key":"","enabled":false},"postgres_changes":[],"private":private}})
}

#[tokio::test]
async fn broadcast_self_ack_binary_and_private_topics() {
    let relay = start_relay().await;
    let topic = "realtime:room1";
    for (self_, ack) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut sender = relay.ws("2.0.0").await;
        let (js, _) = sender
            .join_with(topic, broadcast_config(self_, ack, false))
            .await;
        let mut other = relay.ws("1.0.0").await;
        other
            .join_with(topic, broadcast_config(false, false, false))
            .await;
        let r = sender.next_ref();
        sender
            .push(
                Some(&js),
                &r,
                topic,
                "broadcast",
                json!({"type":"broadcast","event":"cursor","payload":{"x":1}}),
            )
            .await;
        let expected = json!({"type":"broadcast","event":"cursor","payload":{"x":1}});
        let got = other.recv().await;
        assert_eq!(got.event, "broadcast");
        assert_eq!(got.topic, topic);
        assert_eq!(got.payload, expected);
        let mut seen = Vec::new();
        while let Some(f) = sender.try_recv(Duration::from_millis(300)).await {
            seen.push(f);
        }
        let replies = seen.iter().filter(|f| f.event == "phx_reply").count();
        let echoes = seen.iter().filter(|f| f.event == "broadcast").count();
        assert_eq!(
            replies,
            usize::from(ack),
            "self={self_} ack={ack}: {seen:?}"
        );
        assert_eq!(
            echoes,
            usize::from(self_),
            "self={self_} ack={ack}: {seen:?}"
        );
        if ack {
            let reply = seen.iter().find(|f| f.event == "phx_reply").unwrap();
            assert_eq!(reply.msg_ref, json!(r));
            assert_eq!(reply.payload, json!({"status":"ok","response":{}}));
        }
    }

    // Binary (kind 3, raw payload) → kind 4 to a v2 socket, nothing to a v1 socket.
    let mut sender = relay.ws("2.0.0").await;
    let (js, _) = sender
        .join_with("realtime:bin", broadcast_config(false, true, false))
        .await;
    let mut v2 = relay.ws("2.0.0").await;
    v2.join_with("realtime:bin", broadcast_config(false, false, false))
        .await;
    let mut v1 = relay.ws("1.0.0").await;
    v1.join_with("realtime:bin", broadcast_config(false, false, false))
        .await;
    let mut frame = vec![3u8, js.len() as u8, 2, 12, 4, 0, 0];
    frame.extend_from_slice(js.as_bytes());
    frame.extend_from_slice(b"99realtime:binblob");
    frame.extend_from_slice(&[0, 1, 2, 255]);
    sender.send_binary(frame).await;
    let ack = sender.recv().await;
    assert_eq!(ack.msg_ref, json!("99"));
    assert_eq!(ack.payload["status"], "ok");
    match v2.next_raw(WAIT).await {
        Some(tokio_tungstenite::tungstenite::Message::Binary(b)) => {
            let mut want = vec![4u8, 12, 4, 0, 0];
            want.extend_from_slice(b"realtime:binblob");
            want.extend_from_slice(&[0, 1, 2, 255]);
            assert_eq!(&b[..], &want[..]);
        }
        other => panic!("expected a kind-4 frame, got {other:?}"),
    }
    v1.expect_silence(Duration::from_millis(300)).await;

    // Private and public topics of the same name do not see each other.
    let mut public = relay.ws("2.0.0").await;
    public
        .join_with("realtime:secret", broadcast_config(false, false, false))
        .await;
    let mut private = relay.ws("2.0.0").await;
    let (jp, _) = private
        .join_with("realtime:secret", broadcast_config(false, false, true))
        .await;
    let mut private2 = relay.ws("2.0.0").await;
    private2
        .join_with("realtime:secret", broadcast_config(false, false, true))
        .await;
    private
        .push(
            Some(&jp),
            "5",
            "realtime:secret",
            "broadcast",
            json!({"type":"broadcast","event":"e","payload":{}}),
        )
        .await;
    assert_eq!(private2.recv().await.event, "broadcast");
    public.expect_silence(Duration::from_millis(300)).await;
    relay.stop().await;
}

#[tokio::test]
async fn rest_broadcast_endpoints() {
    let relay = start_relay().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.join_with("realtime:other", broadcast_config(false, false, false))
        .await;
    let mut private = relay.ws("2.0.0").await;
    private
        .join_with("realtime:other", broadcast_config(false, false, true))
        .await;

    let (status, _) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast?apikey=k&vsn=2.0.0",
        "application/json",
        br#"{"messages":[{"topic":"other","event":"ev","payload":{"a":1}}]}"#,
    )
    .await;
    assert!((200..300).contains(&status), "{status}");
    assert_eq!(
        ws.recv().await.payload,
        json!({"type":"broadcast","event":"ev","payload":{"a":1}})
    );
    let (status, _) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast/other/events/ev2?apikey=k&vsn=2.0.0&private=true",
        "application/json",
        br#"{"b":2}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        private.recv().await.payload,
        json!({"type":"broadcast","event":"ev2","payload":{"b":2}})
    );
    ws.expect_silence(Duration::from_millis(300)).await;
    let (status, body) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast",
        "application/json",
        b"{",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid body"), "{body}");
    relay.stop().await;
}

#[tokio::test]
async fn an_oversized_broadcast_is_refused_and_the_socket_lives_on() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:pg",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    let (jr, _) = ws
        .join_with("realtime:room", broadcast_config(false, false, false))
        .await;
    // Over the 3,000,000-byte payload limit, under the message limit (payload + 64 KiB).
    let big = "x".repeat(3_010_000);
    ws.push(
        Some(&jr),
        "77",
        "realtime:room",
        "broadcast",
        json!({"type":"broadcast","event":"big","payload":{"blob":big}}),
    )
    .await;
    let reply = ws.recv().await;
    assert_eq!(reply.msg_ref, json!("77"));
    assert_eq!(reply.payload["status"], "error");
    assert!(reply.payload["response"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("PayloadTooLarge:"));
    db.execute("INSERT INTO profiles (username) VALUES ('still')", &[])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["username"], "still");
    relay.stop().await;
}
