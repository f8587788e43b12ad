//! The Phoenix/Supabase protocol: join, reply, ids, heartbeat, leave, errors, in both vsns.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const VSNS: [&str; 2] = ["1.0.0", "2.0.0"];

#[tokio::test]
async fn join_reply_echoes_bindings_with_ids_then_subscribed() {
    let relay = start_relay().await;
    for vsn in VSNS {
        let mut ws = relay.ws(vsn).await;
        let bindings = json!([
            {"event":"INSERT","schema":"public","table":"polls","filter":"status=eq.active"},
            {"event":"*","schema":"public","table":"polls","select":["id"]}
        ]);
        let (join_ref, reply) = ws.join("realtime:room1", bindings.clone()).await;
        assert_eq!(reply["status"], "ok");
        let echoed = reply["response"]["postgres_changes"].as_array().unwrap();
        assert_eq!(echoed.len(), 2);
        for (i, b) in echoed.iter().enumerate() {
            let mut expected = bindings[i].clone();
            let id = b["id"].as_u64().expect("numeric id");
            assert!((1..(1 << 31)).contains(&id), "id {id}");
            expected["id"] = json!(id);
            assert_eq!(b, &expected, "binding {i} echoed exactly");
        }
        assert_ne!(echoed[0]["id"], echoed[1]["id"]);
        let sys = ws.recv().await;
        assert_eq!(sys.event, "system");
        assert_eq!(sys.topic, "realtime:room1");
        assert_eq!(sys.join_ref, json!(join_ref));
        assert_eq!(
            sys.payload,
            json!({"channel":"room1","extension":"postgres_changes",
                   "message":"Subscribed to PostgreSQL","status":"ok"})
        );

        // Same bindings on another socket: same ids (stable hash of the binding object).
        let mut other = relay.ws(vsn).await;
        let (_, reply2) = other.join("realtime:elsewhere", bindings).await;
        assert_eq!(
            reply2["response"]["postgres_changes"],
            reply["response"]["postgres_changes"]
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn join_without_bindings_replies_empty_list_and_presence_state() {
    let relay = start_relay().await;
    for vsn in VSNS {
        let mut ws = relay.ws(vsn).await;
        let (join_ref, reply) = ws
            .join_with(
                "realtime:lobby",
                json!({"config":{"presence":{"key":"u1","enabled":"true"},"postgres_changes":[],"private":false}}),
            )
            .await;
        assert_eq!(
            reply,
            json!({"status":"ok","response":{"postgres_changes":[]}})
        );
        let state = ws.recv().await;
        assert_eq!(state.event, "presence_state");
        assert_eq!(state.join_ref, json!(join_ref));
        assert_eq!(state.payload, json!({}));
        ws.expect_silence(Duration::from_millis(300)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn heartbeat_is_answered() {
    let relay = start_relay().await;
    for vsn in VSNS {
        let mut ws = relay.ws(vsn).await;
        ws.push(None, "10", "phoenix", "heartbeat", json!({})).await;
        let f = ws.recv().await;
        assert_eq!(
            f,
            Frame {
                join_ref: json!(null),
                msg_ref: json!("10"),
                topic: "phoenix".into(),
                event: "phx_reply".into(),
                payload: json!({"status":"ok","response":{}}),
            }
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn leave_replies_ok_then_closes_and_stops_delivery() {
    let relay = start_relay().await;
    let db = relay.db().await;
    for vsn in VSNS {
        let mut ws = relay.ws(vsn).await;
        ws.subscribe(
            "realtime:p",
            json!([{"event":"*","schema":"public","table":"profiles"}]),
        )
        .await;
        let (jr, r) = ("1".to_string(), "2".to_string());
        ws.push(Some(&jr), &r, "realtime:p", "phx_leave", json!({}))
            .await;
        let reply = ws.recv().await;
        assert_eq!(reply.event, "phx_reply");
        assert_eq!(reply.msg_ref, json!("2"));
        assert_eq!(reply.payload, json!({"status":"ok","response":{}}));
        let close = ws.recv().await;
        assert_eq!(close.event, "phx_close");
        assert_eq!(close.join_ref, json!("1"));
        assert_eq!(close.msg_ref, json!("1"));
        db.execute(
            "INSERT INTO profiles (username) VALUES ($1)",
            &[&format!("u{vsn}")],
        )
        .await
        .unwrap();
        ws.expect_silence(Duration::from_millis(500)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn push_to_unjoined_topic_is_unmatched() {
    let relay = start_relay().await;
    for vsn in VSNS {
        let mut ws = relay.ws(vsn).await;
        ws.push(
            Some("3"),
            "4",
            "realtime:nowhere",
            "access_token",
            json!({"access_token":"x"}),
        )
        .await;
        let f = ws.recv().await;
        assert_eq!(f.event, "phx_reply");
        assert_eq!(f.topic, "realtime:nowhere");
        assert_eq!(f.msg_ref, json!("4"));
        assert_eq!(f.join_ref, json!(null));
        assert_eq!(
            f.payload,
            json!({"status":"error","response":{"reason":"unmatched topic"}})
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_socket_keeps_working() {
    let relay = start_relay().await;
    let mut ws = relay.ws("2.0.0").await;
    let cases = [
        ("not json", None),
        ("[1,2,3]", None),
        (r#"{"topic":5}"#, None),
        (r#"[null,"9","realtime:x","phx_join"]"#, Some("9")),
        (r#"[null,"8",7,"phx_join",{}]"#, Some("8")),
    ];
    for (text, msg_ref) in cases {
        ws.send_text(text).await;
        let f = ws.recv().await;
        assert_eq!(f.event, "phx_reply", "{text}");
        assert_eq!(f.payload["status"], "error", "{text}");
        let reason = f.payload["response"]["reason"].as_str().unwrap();
        assert!(reason.starts_with("MalformedMessage: "), "{text}: {reason}");
        assert_eq!(f.msg_ref, json!(msg_ref), "{text}");
    }
    // A binary broadcast (kind 3) to a topic this socket has not joined.
    let mut frame = vec![3u8, 1, 1, 14, 6, 0, 1];
    frame.extend_from_slice(b"67realtime:room1cursor{\"x\":42}");
    ws.send_binary(frame).await;
    let f = ws.recv().await;
    assert_eq!(f.topic, "realtime:room1");
    assert_eq!(f.msg_ref, json!("7"));
    assert_eq!(
        f.payload,
        json!({"status":"error","response":{"reason":"unmatched topic"}})
    );
    ws.send_binary(vec![3, 250, 1, 1, 1, 0, 1]).await;
    let f = ws.recv().await;
    assert_eq!(f.topic, "phoenix");
    assert!(f.payload["response"]["reason"]
        .as_str()
        .unwrap()
        .contains("lengths exceed"));
    ws.send_binary(vec![1, 0, 0]).await;
    let f = ws.recv().await;
    assert_eq!(
        f.payload["response"]["reason"],
        "UnsupportedMessage: unsupported binary message kind 1"
    );
    // Still alive.
    ws.push(None, "99", "phoenix", "heartbeat", json!({})).await;
    assert_eq!(ws.recv().await.msg_ref, json!("99"));
    relay.stop().await;
}

#[tokio::test]
async fn join_errors_use_supabase_wording() {
    let relay = start_relay().await;
    let mut ws = relay.ws("2.0.0").await;
    let (_, reply) = ws.join("realtime:", json!([])).await;
    assert_eq!(
        reply,
        json!({"status":"error","response":{"reason":"TopicNameRequired: You must provide a topic name"}})
    );
    let (_, reply) = ws
        .join_with("realtime:x", json!({"config":{"postgres_changes":"nope"}}))
        .await;
    assert_eq!(reply["status"], "error");
    assert_eq!(
        reply["response"]["reason"],
        "MalformedJoin: `config.postgres_changes` must be an array"
    );
    relay.stop().await;
}

#[tokio::test]
async fn bad_bindings_join_then_get_a_system_error() {
    let relay = start_relay().await;
    let mut ws = relay.ws("2.0.0").await;
    let cases = [
        (
            json!({"event":"*","schema":"public","table":"nope"}),
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: nope, filters: []]",
        ),
        (
            json!({"event":"*"}),
            "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: [event: *, schema: nil, table: nil, filters: []]",
        ),
        (
            json!({"event":"*","schema":"public","table":"polls","filter":"status=foo.hey"}),
            "Error parsing `filter` params: [\"foo\", \"hey\"]",
        ),
        (
            json!({"event":"*","schema":"public","table":"polls","filter":"nocol=eq.1"}),
            "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: [event: *, schema: public, table: polls, filters: [nocol=eq.1]]. Exception: ERROR P0001 (raise_exception) invalid column for filter nocol",
        ),
    ];
    for (i, (binding, message)) in cases.into_iter().enumerate() {
        let topic = format!("realtime:bad{i}");
        let (jr, reply) = ws.join(&topic, json!([binding])).await;
        assert_eq!(reply["status"], "ok", "the join itself succeeds");
        let sys = ws.recv().await;
        assert_eq!(sys.event, "system");
        assert_eq!(sys.join_ref, json!(jr));
        assert_eq!(sys.payload["status"], "error");
        assert_eq!(sys.payload["extension"], "postgres_changes");
        assert_eq!(sys.payload["message"], message);
    }
    relay.stop().await;
}

#[tokio::test]
async fn second_join_of_same_topic_closes_the_first() {
    let relay = start_relay().await;
    let mut ws = relay.ws("2.0.0").await;
    let (first_ref, _) = ws.join("realtime:dup", json!([])).await;
    let r = ws.next_ref();
    ws.push(
        Some(&r),
        &r,
        "realtime:dup",
        "phx_join",
        json!({"config":{}}),
    )
    .await;
    let close = ws.recv().await;
    assert_eq!(close.event, "phx_close");
    assert_eq!(close.join_ref, json!(first_ref));
    let reply = ws.recv().await;
    assert_eq!(reply.event, "phx_reply");
    assert_eq!(reply.join_ref, json!(r));
    assert_eq!(reply.payload["status"], "ok");
    relay.stop().await;
}

#[tokio::test]
async fn channel_limit_per_socket() {
    let relay = start_relay_with(|c| c.limits.max_channels_per_client = 3).await;
    let mut ws = relay.ws("2.0.0").await;
    for i in 0..3 {
        let (_, reply) = ws.join(&format!("realtime:c{i}"), json!([])).await;
        assert_eq!(reply["status"], "ok");
    }
    let (_, reply) = ws.join("realtime:c3", json!([])).await;
    assert_eq!(
        reply,
        json!({"status":"error","response":{"reason":"ChannelRateLimitReached: Too many channels"}})
    );
    relay.stop().await;
}

#[tokio::test]
async fn both_socket_paths_and_vsn_checks() {
    let relay = start_relay().await;
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", relay.addr);
    let mut ws = Ws::connect(&url, "2.0.0").await;
    ws.push(None, "1", "phoenix", "heartbeat", json!({})).await;
    assert_eq!(ws.recv().await.event, "phx_reply");
    let bad = format!("ws://{}/realtime/v1/websocket?vsn=9.9.9", relay.addr);
    let err = tokio_tungstenite::connect_async(&bad).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 400),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    relay.stop().await;
}

/// Topic names are capped: a joined channel keeps its name for its life, so 100 channels of
/// 1 MB names would pin 100 MB per socket. The longest allowed name joins; one byte more is
/// refused with a reason, and the socket carries on.
#[tokio::test]
async fn topic_names_longer_than_255_bytes_are_refused() {
    let relay = start_relay().await;
    let mut ws = relay.ws("2.0.0").await;
    let longest = format!("realtime:{}", "t".repeat(255));
    let (_, reply) = ws.join_with(&longest, json!({"config":{}})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    for name in ["u".repeat(256), "v".repeat(1 << 20)] {
        let (_, reply) = ws
            .join_with(&format!("realtime:{name}"), json!({"config":{}}))
            .await;
        assert_eq!(reply["status"], "error");
        assert_eq!(
            reply["response"]["reason"],
            "TopicNameTooLong: a topic name may have at most 255 bytes"
        );
    }
    // Still usable.
    let (_, reply) = ws.join_with("realtime:short", json!({"config":{}})).await;
    assert_eq!(reply["status"], "ok");
    relay.stop().await;
}
