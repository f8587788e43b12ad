//! Changes flowing from the triggers to subscribers: payloads, filters on old and new rows,
//! order, large rows, heartbeat-only updates, slow consumers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn columns(data: &Value) -> Vec<(String, String)> {
    data["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn insert_update_delete_on_polls_arrive_field_by_field() {
    let relay = start_relay().await;
    let db = relay.db().await;
    for vsn in ["1.0.0", "2.0.0"] {
        let mut ws = relay.ws(vsn).await;
        let ids = ws
            .subscribe(
                "realtime:polls-changes",
                json!([{"event":"*","schema":"public","table":"polls"}]),
            )
            .await;
        let row = db
            .query_one(
                "INSERT INTO polls (question, options, status) VALUES ('Q?', '[\"a\",\"b\"]', 'draft') RETURNING id",
                &[],
            )
            .await
            .unwrap();
        let id: i64 = row.get(0);
        let f = ws.recv_event("postgres_changes").await;
        assert_eq!(f.topic, "realtime:polls-changes");
        assert_eq!(f.join_ref, json!(null));
        assert_eq!(f.msg_ref, json!(null));
        assert_eq!(f.payload["ids"], json!(ids));
        let data = &f.payload["data"];
        assert_eq!(data["type"], "INSERT");
        assert_eq!(data["schema"], "public");
        assert_eq!(data["table"], "polls");
        assert_eq!(data["errors"], json!(null));
        assert!(data.get("old_record").is_none());
        assert_eq!(data["record"]["id"], json!(id));
        assert_eq!(data["record"]["question"], "Q?");
        assert_eq!(data["record"]["options"], json!(["a", "b"]));
        assert_eq!(data["record"]["status"], "draft");
        assert_eq!(data["record"]["boost_count"], 0);
        assert_eq!(data["record"]["created_by"], json!(null));
        let ts = data["commit_timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert_eq!(
            columns(data),
            [
                ("id", "int8"),
                ("question", "text"),
                ("options", "jsonb"),
                ("status", "text"),
                ("created_by", "uuid"),
                ("boost_count", "int4"),
                ("created_at", "timestamptz"),
                ("closes_at", "timestamptz")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );

        db.execute("UPDATE polls SET status = 'active' WHERE id = $1", &[&id])
            .await
            .unwrap();
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "UPDATE");
        assert_eq!(data["record"]["status"], "active");
        assert_eq!(data["old_record"]["status"], "draft");
        assert_eq!(data["old_record"]["question"], "Q?", "full old row");

        db.execute("DELETE FROM polls WHERE id = $1", &[&id])
            .await
            .unwrap();
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "DELETE");
        assert!(data.get("record").is_none());
        assert_eq!(data["old_record"]["id"], json!(id));
        assert_eq!(data["old_record"]["status"], "active");
    }
    relay.stop().await;
}

#[tokio::test]
async fn every_reference_table_is_published() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:all",
        json!([
            {"event":"*","schema":"public","table":"profiles"},
            {"event":"*","schema":"public","table":"polls"},
            {"event":"*","schema":"public","table":"user_votes"},
            {"event":"*","schema":"public","table":"button_holds"}
        ]),
    )
    .await;
    let (user, poll) = seed(&db).await;
    db.execute(
        "INSERT INTO user_votes (poll_id, user_id, option_index, hold_ms) VALUES ($1, $2::text::uuid, 1, 3200)",
        &[&poll, &user],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO button_holds (user_id, poll_id) VALUES ($1::text::uuid, $2)",
        &[&user, &poll],
    )
    .await
    .unwrap();
    let mut tables = Vec::new();
    for _ in 0..4 {
        let f = ws.recv_event("postgres_changes").await;
        assert_eq!(f.payload["data"]["type"], "INSERT");
        tables.push(f.payload["data"]["table"].as_str().unwrap().to_owned());
    }
    assert_eq!(tables, ["profiles", "polls", "user_votes", "button_holds"]);
    relay.stop().await;
}

#[tokio::test]
async fn one_frame_per_channel_with_all_matching_ids() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    let ids = ws
        .subscribe(
            "realtime:app-updates",
            json!([
                {"event":"INSERT","schema":"public","table":"polls"},
                {"event":"*","schema":"public","table":"polls"},
                {"event":"UPDATE","schema":"public","table":"polls","filter":"status=eq.active"},
                {"event":"DELETE","schema":"public","table":"polls"}
            ]),
        )
        .await;
    let (_, poll) = seed(&db).await;
    let f = ws.recv_event("postgres_changes").await;
    let mut got: Vec<u64> = f.payload["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    got.sort_unstable();
    let mut want = vec![ids[0] as u64, ids[1] as u64];
    want.sort_unstable();
    assert_eq!(got, want);
    db.execute("UPDATE polls SET boost_count = 1 WHERE id = $1", &[&poll])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    let mut got: Vec<u64> = f.payload["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    got.sort_unstable();
    let mut want = vec![ids[1] as u64, ids[2] as u64];
    want.sort_unstable();
    assert_eq!(got, want);
    ws.expect_silence(Duration::from_millis(300)).await;
    relay.stop().await;
}

#[tokio::test]
async fn update_leaving_a_filter_is_delivered_and_delete_filters_on_old_row() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:active",
        json!([{"event":"*","schema":"public","table":"polls","filter":"status=eq.active"}]),
    )
    .await;
    let (_, poll) = seed(&db).await; // inserted active: delivered
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["type"], "INSERT");
    db.execute("UPDATE polls SET status = 'closed' WHERE id = $1", &[&poll])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["type"], "UPDATE");
    assert_eq!(f.payload["data"]["record"]["status"], "closed");
    assert_eq!(f.payload["data"]["old_record"]["status"], "active");
    // Now closed: an update that stays outside the filter is not delivered.
    db.execute("UPDATE polls SET boost_count = 5 WHERE id = $1", &[&poll])
        .await
        .unwrap();
    // A draft poll deleted: its old row does not match, nothing delivered.
    let row = db
        .query_one(
            "INSERT INTO polls (question) VALUES ('draft') RETURNING id",
            &[],
        )
        .await
        .unwrap();
    let draft: i64 = row.get(0);
    db.execute("DELETE FROM polls WHERE id = $1", &[&draft])
        .await
        .unwrap();
    ws.expect_silence(Duration::from_millis(500)).await;
    // An active poll deleted: its old row matches.
    db.execute("UPDATE polls SET status = 'active' WHERE id = $1", &[&poll])
        .await
        .unwrap();
    assert_eq!(
        ws.recv_event("postgres_changes").await.payload["data"]["type"],
        "UPDATE"
    );
    db.execute("DELETE FROM polls WHERE id = $1", &[&poll])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["type"], "DELETE");
    assert_eq!(f.payload["data"]["old_record"]["id"], json!(poll));
    relay.stop().await;
}

#[tokio::test]
async fn heartbeat_only_update_emits_nothing() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:button-sessions",
        json!([{"event":"*","schema":"public","table":"button_holds"}]),
    )
    .await;
    let (user, _) = seed(&db).await;
    let row = db
        .query_one(
            "INSERT INTO button_holds (user_id) VALUES ($1::text::uuid) RETURNING id::text",
            &[&user],
        )
        .await
        .unwrap();
    let hold: String = row.get(0);
    assert_eq!(
        ws.recv_event("postgres_changes").await.payload["data"]["type"],
        "INSERT"
    );
    let logged_before: i64 = db
        .query_one("SELECT count(*) FROM pgrelay.change_log", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..3 {
        db.execute(
            "UPDATE button_holds SET last_heartbeat = now() WHERE id = $1::text::uuid",
            &[&hold],
        )
        .await
        .unwrap();
    }
    ws.expect_silence(Duration::from_millis(500)).await;
    let logged_after: i64 = db
        .query_one("SELECT count(*) FROM pgrelay.change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged_before, logged_after, "no change-log rows either");
    db.execute(
        "UPDATE button_holds SET ended_at = now(), is_active = false, last_heartbeat = now() WHERE id = $1::text::uuid",
        &[&hold],
    )
    .await
    .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["type"], "UPDATE");
    assert_eq!(f.payload["data"]["record"]["is_active"], false);
    relay.stop().await;
}

#[tokio::test]
async fn a_20kb_row_is_delivered_whole() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:big",
        json!([{"event":"*","schema":"public","table":"polls"}]),
    )
    .await;
    let question: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    db.execute("INSERT INTO polls (question) VALUES ($1)", &[&question])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["type"], "INSERT");
    assert_eq!(f.payload["data"]["record"]["question"], json!(question));
    db.execute("UPDATE polls SET status = 'active'", &[])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["question"], json!(question));
    assert_eq!(f.payload["data"]["old_record"]["question"], json!(question));
    assert_eq!(f.payload["data"]["old_record"]["status"], "draft");
    relay.stop().await;
}

#[tokio::test]
async fn commit_order_across_concurrent_transactions() {
    let relay = start_relay().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:order",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    // Two transactions interleave: A inserts first but commits last.
    let a = relay.db().await;
    let b = relay.db().await;
    a.batch_execute("BEGIN; INSERT INTO profiles (username) VALUES ('a1')")
        .await
        .unwrap();
    b.batch_execute("BEGIN; INSERT INTO profiles (username) VALUES ('b1'); COMMIT")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO profiles (username) VALUES ('a2'); COMMIT")
        .await
        .unwrap();
    // And many small concurrent writers.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let c = relay.db().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                c.execute(
                    "INSERT INTO profiles (username) VALUES ($1)",
                    &[&format!("w{w}-{i}")],
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..103 {
        let f = ws.recv_event("postgres_changes").await;
        got.push(
            f.payload["data"]["record"]["username"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(&got[..3], ["b1", "a1", "a2"]);
    // Per writer, its own inserts arrive in order.
    for w in 0..4 {
        let mine: Vec<&String> = got
            .iter()
            .filter(|u| u.starts_with(&format!("w{w}-")))
            .collect();
        let want: Vec<String> = (0..25).map(|i| format!("w{w}-{i}")).collect();
        assert_eq!(mine.len(), 25);
        assert!(
            mine.iter().zip(&want).all(|(a, b)| *a == b),
            "writer {w} out of order"
        );
    }
    // And the relay's order is commit order: compare with the log's commit sequence via xmin.
    ws.expect_silence(Duration::from_millis(200)).await;
    relay.stop().await;
}

#[tokio::test]
async fn slow_client_is_cut_off_while_another_receives_everything() {
    // Queues that hold a read's worth of these rows (the relay reads the change log in
    // batches, so a few commits can arrive at once) but nothing like the whole run.
    let relay = start_relay_with(|c| {
        c.limits.socket_queue = 64;
        c.limits.socket_queue_bytes = 1024 * 1024;
    })
    .await;
    let db = relay.db().await;
    let bindings = json!([{"event":"*","schema":"public","table":"profiles"}]);
    let mut fast = relay.ws("2.0.0").await;
    fast.subscribe("realtime:fast", bindings.clone()).await;
    // A dead client: subscribes, then never reads again.
    let mut dead = relay.ws("2.0.0").await;
    dead.subscribe("realtime:dead", bindings.clone()).await;
    // A slow client: reads, but at 10 frames/s, slower than the writer commits even on a
    // loaded machine.
    let mut slow = relay.ws("2.0.0").await;
    slow.subscribe("realtime:slow", bindings).await;
    let slow_reader = tokio::spawn(async move {
        let mut saw_system = false;
        let mut received = 0;
        while let Some(msg) = slow.next_raw(Duration::from_secs(20)).await {
            match msg {
                tokio_tungstenite::tungstenite::Message::Text(t) => {
                    let f = parse_frame("2.0.0", &t);
                    if f.event == "system" {
                        assert_eq!(f.payload["status"], "error");
                        assert_eq!(f.payload["extension"], "system");
                        assert_eq!(
                            f.payload["message"],
                            "Client is too slow: its outbound queue is full"
                        );
                        saw_system = true;
                    } else {
                        received += 1;
                    }
                }
                tokio_tungstenite::tungstenite::Message::Close(c) => {
                    return (saw_system, received, c)
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (saw_system, received, None)
    });

    // Large rows, so that kernel socket buffers hold few of them and the relay's own queue
    // (64 frames, 1 MiB) is what overflows.
    let total = 400;
    let writer = tokio::spawn(async move {
        let filler = "x".repeat(60_000);
        for i in 0..total {
            db.execute(
                "INSERT INTO profiles (username, display_name) VALUES ($1, $2)",
                &[&format!("user{i}"), &filler],
            )
            .await
            .unwrap();
        }
    });
    for i in 0..total {
        let f = fast.recv_event("postgres_changes").await;
        assert_eq!(f.payload["data"]["record"]["username"], format!("user{i}"));
    }
    writer.await.unwrap();

    let (saw_system, received, close) = slow_reader.await.unwrap();
    assert!(
        received < total,
        "the slow client was cut off before the end"
    );
    assert!(saw_system, "slow client told why");
    let close = close.expect("close frame");
    assert_eq!(u16::from(close.code), 1008);
    // The dead client was disconnected too: its buffered frames, then the end of the
    // connection (a close frame if its buffers had room for one, else just the TCP close).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        use futures_util::StreamExt;
        while let Some(Ok(msg)) = dead.stream.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the dead client's connection was ended");
    let (_, body) = http_get(relay.addr, "/metrics").await;
    assert!(metric(&body, "pgrelay_cutoffs_total") >= 2.0);
    relay.stop().await;
}

#[tokio::test]
async fn columns_follow_ddl() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:ddl",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    db.execute("INSERT INTO profiles (username) VALUES ('before')", &[])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(columns(&f.payload["data"]).len(), 4);
    db.batch_execute("ALTER TABLE profiles ADD COLUMN karma int2 DEFAULT 3")
        .await
        .unwrap();
    db.execute("INSERT INTO profiles (username) VALUES ('after')", &[])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    let cols = columns(&f.payload["data"]);
    assert_eq!(cols.len(), 5);
    assert_eq!(cols[4], ("karma".to_owned(), "int2".to_owned()));
    assert_eq!(f.payload["data"]["record"]["karma"], 3);
    relay.stop().await;
}
