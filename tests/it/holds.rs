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

/// A LISTEN session of the test's own that counts notifications about button_holds.
async fn count_hold_notifications(
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
                    if n.payload().contains("\"button_holds\"") {
                        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
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
