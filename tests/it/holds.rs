//! Relay-run press-and-hold sessions: a presence track on the hold channel runs a
//! `button_holds` row; heartbeats cost no NOTIFY; untrack ends it.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

fn hold_config() -> Value {
    json!({"config":{"broadcast":{"ack":false,"self":false},
        "presence":{"key":"","enabled":true},"postgres_changes":[],"private":false}})
}

/// A LISTEN session of the test's own that counts the triggers' doorbells. Nothing else
/// notifies on the relay's channel, and only the hold's own rows change during the count.
pub(crate) async fn count_hold_notifications(
    url: &str,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        let listen = async {
            client.batch_execute("LISTEN pgrelay").await.unwrap();
            let _ = ready_tx.send(());
            std::future::pending::<()>().await;
        };
        let read = async {
            while let Some(Ok(msg)) = stream.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                    assert_eq!(n.payload(), "", "a doorbell carries no data");
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        };
        tokio::select! { _ = listen => {}, _ = read => {} }
    });
    ready_rx.await.unwrap();
    (task, count)
}

#[tokio::test]
async fn a_tracked_hold_is_kept_alive_without_notify_and_ended_on_untrack() {
    let relay = start_relay_with(|c| c.hold_heartbeat = Duration::from_millis(800)).await;
    let db = relay.db().await;
    let (user, poll) = seed(&db).await;
    let mut watcher = relay.ws("2.0.0").await;
    watcher
        .subscribe(
            "realtime:button-sessions",
            json!([{"event":"*","schema":"public","table":"button_holds"}]),
        )
        .await;

    let topic = "realtime:button-presence";
    let mut holder = relay.ws("2.0.0").await;
    let (jr, _) = holder.join_with(topic, hold_config()).await;
    holder.recv().await; // presence_state
    holder
        .push(
            Some(&jr),
            "t1",
            topic,
            "presence",
            json!({"type":"presence","event":"track","payload":{"user_id":user,"poll_id":poll}}),
        )
        .await;
    let reply = holder.recv().await;
    assert_eq!(
        reply.payload,
        json!({"status":"ok","response":{}}),
        "{reply:?}"
    );
    let insert = watcher.recv_event("postgres_changes").await;
    assert_eq!(insert.payload["data"]["type"], "INSERT");
    assert_eq!(insert.payload["data"]["record"]["user_id"], user.as_str());
    assert_eq!(insert.payload["data"]["record"]["poll_id"], poll);
    assert_eq!(insert.payload["data"]["record"]["is_active"], true);
    let hold_id = insert.payload["data"]["record"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Held for a while: the heartbeat advances, and nothing is notified.
    let (probe, notified) = count_hold_notifications(&relay.db.url).await;
    let mut beats = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let row = db
            .query_one(
                "SELECT last_heartbeat::text, is_active FROM button_holds WHERE id = $1::text::uuid",
                &[&hold_id],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(1));
        beats.insert(row.get::<_, String>(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        beats.len() >= 4,
        "heartbeat advanced at least 3 times: {beats:?}"
    );
    assert_eq!(
        notified.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "heartbeats cost no NOTIFY"
    );
    watcher.expect_silence(Duration::from_millis(200)).await;

    // Untrack ends the hold: exactly one UPDATE.
    holder
        .push(
            Some(&jr),
            "t2",
            topic,
            "presence",
            json!({"type":"presence","event":"untrack"}),
        )
        .await;
    let update = watcher.recv_event("postgres_changes").await;
    let data = &update.payload["data"];
    assert_eq!(data["type"], "UPDATE");
    assert_eq!(data["record"]["id"], hold_id.as_str());
    assert_eq!(data["record"]["is_active"], false);
    assert!(data["record"]["ended_at"].is_string());
    assert_eq!(data["old_record"]["is_active"], true);
    watcher.expect_silence(Duration::from_millis(1500)).await;
    assert_eq!(notified.load(std::sync::atomic::Ordering::Relaxed), 1);
    probe.abort();
    relay.stop().await;
}

#[tokio::test]
async fn disconnect_ends_the_hold_and_bad_holds_are_refused() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (user, _) = seed(&db).await;
    let topic = "realtime:button-presence";
    let mut holder = relay.ws("1.0.0").await;
    let (jr, _) = holder.join_with(topic, hold_config()).await;
    holder.recv().await;
    // An unknown user: refused, no presence shown.
    holder
        .push(
            Some(&jr),
            "1",
            topic,
            "presence",
            json!({"type":"presence","event":"track","payload":{"user_id":"00000000-0000-4000-8000-000000000000"}}),
        )
        .await;
    let reply = holder.recv().await;
    assert_eq!(reply.payload["status"], "error");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("HoldRefused: "), "{reason}");
    // A plain presence (no user_id) works as usual and starts nothing.
    holder
        .push(
            Some(&jr),
            "2",
            topic,
            "presence",
            json!({"type":"presence","event":"track","payload":{"online_at":1}}),
        )
        .await;
    assert_eq!(holder.recv().await.payload["status"], "ok");
    // A real hold, then the socket drops.
    holder
        .push(
            Some(&jr),
            "3",
            topic,
            "presence",
            json!({"type":"presence","event":"track","payload":{"user_id":user}}),
        )
        .await;
    loop {
        let f = holder.recv().await;
        if f.msg_ref == json!("3") {
            assert_eq!(f.payload["status"], "ok");
            break;
        }
    }
    let active: i64 = db
        .query_one("SELECT count(*) FROM button_holds WHERE is_active", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(active, 1);
    drop(holder);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE is_active), count(*) FILTER (WHERE ended_at IS NOT NULL) FROM button_holds",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            assert_eq!(row.get::<_, i64>(1), 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hold not ended after disconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn holds_of_a_killed_relay_are_ended_by_a_separate_cleanup_process() {
    let db = TestDb::new().await;
    let (mut relay_a, addr_a) = crate::lifecycle::spawn_relay(&db, "127.0.0.1:0").await;
    let (mut relay_b, addr_b) = crate::lifecycle::spawn_relay(&db, "127.0.0.1:0").await;
    let client = db.client().await;
    let mut users = Vec::new();
    for i in 0..3 {
        let row = client
            .query_one(
                "INSERT INTO profiles (username) VALUES ($1) RETURNING id::text",
                &[&format!("holder{i}")],
            )
            .await
            .unwrap();
        users.push(row.get::<_, String>(0));
    }
    let mut watcher = Ws::connect(
        &format!("ws://{addr_b}/realtime/v1/websocket?vsn=2.0.0"),
        "2.0.0",
    )
    .await;
    watcher
        .subscribe(
            "realtime:button-sessions",
            json!([{"event":"UPDATE","schema":"public","table":"button_holds"}]),
        )
        .await;
    let topic = "realtime:button-presence";
    let mut holders = Vec::new();
    for user in &users {
        let mut ws = Ws::connect(
            &format!("ws://{addr_a}/realtime/v1/websocket?vsn=2.0.0"),
            "2.0.0",
        )
        .await;
        let (jr, _) = ws.join_with(topic, hold_config()).await;
        ws.recv().await;
        ws.push(
            Some(&jr),
            "t",
            topic,
            "presence",
            json!({"type":"presence","event":"track","payload":{"user_id":user}}),
        )
        .await;
        loop {
            let f = ws.recv().await;
            if f.msg_ref == json!("t") {
                assert_eq!(f.payload["status"], "ok");
                break;
            }
        }
        holders.push(ws);
    }
    crate::lifecycle::signal(&relay_a, "-KILL");
    let _ = relay_a.wait().await;
    let killed_at = tokio::time::Instant::now();

    let mut cleanup = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .arg("cleanup")
        .env("DATABASE_URL", &db.url)
        .env("PGRELAY_CLEANUP_INTERVAL", "1s")
        .env("PGRELAY_STALE_AFTER", "3s")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ended = std::collections::BTreeSet::new();
    while ended.len() < 3 {
        let f = watcher.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "UPDATE");
        assert_eq!(data["record"]["is_active"], false);
        assert_eq!(data["old_record"]["is_active"], true);
        assert!(ended.insert(data["record"]["user_id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(ended, users.iter().cloned().collect());
    // Threshold (3 s) + interval (1 s) + the last heartbeat's age (< 3 s) + slack.
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed_at.elapsed()
    );
    watcher.expect_silence(Duration::from_millis(1500)).await;
    crate::lifecycle::signal(&cleanup, "-TERM");
    assert!(cleanup.wait().await.unwrap().success());
    crate::lifecycle::signal(&relay_b, "-TERM");
    assert!(relay_b.wait().await.unwrap().success());
}
