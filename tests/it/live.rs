//! Live aggregate topics: computed once on the server per change burst, pushed when changed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

async fn join_live(ws: &mut Ws, name: &str) -> Value {
    let topic = format!("realtime:{name}");
    let (_, reply) = ws
        .join_with(&topic, json!({"config":{"postgres_changes":[]}}))
        .await;
    assert_eq!(reply["status"], "ok");
    let f = ws.recv().await;
    assert_eq!(f.event, "broadcast", "current value on join: {f:?}");
    assert_eq!(f.payload["event"], "update");
    assert_eq!(f.payload["payload"]["name"], name);
    f.payload["payload"]["rows"].clone()
}

#[tokio::test]
async fn a_burst_of_100_votes_pushes_at_most_3_updates_with_the_right_total() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (_, poll) = seed(&db).await;
    db.batch_execute(
        "INSERT INTO profiles (username) SELECT 'voter' || g FROM generate_series(1, 100) g",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // let the profile inserts settle
    let mut ws = relay.ws("2.0.0").await;
    let rows = join_live(&mut ws, "statistics").await;
    assert_eq!(rows[0]["votes"], 0);
    assert_eq!(rows[0]["users"], 101);

    // 100 votes in one burst: one statement, so they commit (and notify) together. The
    // relay reads 100 changes; the statistics query runs once for them.
    db.execute(
        "INSERT INTO user_votes (poll_id, user_id, option_index, hold_ms) \
         SELECT $1, id, 1, 3000 FROM profiles WHERE username LIKE 'voter%'",
        &[&poll],
    )
    .await
    .unwrap();
    let mut pushes = Vec::new();
    while let Some(f) = ws.try_recv(Duration::from_millis(1500)).await {
        assert_eq!(f.event, "broadcast");
        pushes.push(f.payload["payload"]["rows"][0]["votes"].as_i64().unwrap());
    }
    assert!(
        !pushes.is_empty() && pushes.len() <= 3,
        "pushes: {pushes:?}"
    );
    assert_eq!(pushes.last(), Some(&100), "pushes: {pushes:?}");
    relay.stop().await;
}

#[tokio::test]
async fn active_holds_follow_starts_and_ends() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (user, poll) = seed(&db).await;
    let mut ws = relay.ws("1.0.0").await;
    let rows = join_live(&mut ws, "active-holds").await;
    assert_eq!(rows, json!([{"total":0,"by_poll":{}}]));
    let id: String = db
        .query_one(
            "INSERT INTO button_holds (user_id, poll_id) VALUES ($1::text::uuid, $2) RETURNING id::text",
            &[&user, &poll],
        )
        .await
        .unwrap()
        .get(0);
    let f = ws.recv().await;
    assert_eq!(
        f.payload["payload"]["rows"],
        json!([{"total":1,"by_poll":{poll.to_string():1}}])
    );
    // The same user holding in a second tab is still one holder (as GET /api/v1/holds/active
    // counts), and the figure does not change, so nothing is pushed.
    db.execute(
        "INSERT INTO button_holds (user_id, poll_id) VALUES ($1::text::uuid, $2)",
        &[&user, &poll],
    )
    .await
    .unwrap();
    ws.expect_silence(Duration::from_millis(700)).await;
    // A heartbeat changes nothing (and is not even notified).
    db.execute(
        "UPDATE button_holds SET last_heartbeat = now() WHERE id = $1::text::uuid",
        &[&id],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE button_holds SET is_active = false, ended_at = now() WHERE user_id = $1::text::uuid",
        &[&user],
    )
    .await
    .unwrap();
    let f = ws.recv().await;
    assert_eq!(
        f.payload["payload"]["rows"],
        json!([{"total":0,"by_poll":{}}])
    );
    ws.expect_silence(Duration::from_millis(700)).await;
    relay.stop().await;
}

/// A client cannot speak for the relay: broadcasts to a live topic are refused on the socket
/// and through both REST endpoints, and the topic's subscribers see nothing of them. A private
/// channel of the same name is another topic and stays the clients' own.
#[tokio::test]
async fn clients_cannot_send_on_a_topic_the_relay_publishes() {
    let relay = start_relay().await;
    let mut watcher = relay.ws("2.0.0").await;
    join_live(&mut watcher, "statistics").await;

    let mut faker = relay.ws("2.0.0").await;
    let topic = "realtime:statistics";
    let (jr, _) = faker
        .join_with(
            topic,
            json!({"config":{"broadcast":{"ack":true,"self":false},"postgres_changes":[]}}),
        )
        .await;
    let _current = faker.recv().await;
    faker
        .push(
            Some(&jr),
            "f1",
            topic,
            "broadcast",
            json!({"type":"broadcast","event":"update","payload":{"name":"statistics","rows":[{"votes":999999}]}}),
        )
        .await;
    let reply = faker.recv().await;
    assert_eq!(reply.event, "phx_reply");
    assert_eq!(reply.payload["status"], "error");
    assert_eq!(
        reply.payload["response"]["reason"],
        "Unauthorized: the relay publishes on this topic; clients may not send to it: statistics"
    );

    let fake = json!({"name":"statistics","rows":[{"votes":999999}]}).to_string();
    let batch = json!({"messages":[{"topic":"statistics","event":"update","payload":{"rows":[]}}]})
        .to_string();
    let (status, body) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast",
        "application/json",
        batch.as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("the relay publishes on this topic"), "{body}");
    let (status, body) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast/statistics/events/update",
        "application/json",
        fake.as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    watcher.expect_silence(Duration::from_millis(800)).await;

    // The private channel of the same name is not the relay's.
    let (status, body) = http_post(
        relay.addr,
        "/realtime/v1/api/broadcast/statistics/events/update?private=true",
        "application/json",
        fake.as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    relay.stop().await;
}
