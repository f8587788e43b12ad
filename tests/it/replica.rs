//! Changes from a hot standby (`PGRELAY_READ_URL`): a private primary and a standby made with
//! `pg_basebackup -R`, a real relay process writing to the one and reading from the other.

mod cluster;

use std::time::Duration;

use serde_json::json;

use crate::api::{get, hold, request, vote};
use crate::support::*;
use cluster::wait_connect;

async fn application_names(db: &tokio_postgres::Client, database: &str) -> Vec<String> {
    db.query(
        "SELECT application_name FROM pg_stat_activity WHERE datname = $1 \
         AND pid <> pg_backend_pid()",
        &[&database],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn a_standby_serves_changes_to_a_relay_that_writes_to_the_primary() {
    let Some(mut started) = cluster::start().await else {
        return;
    };
    let (write_url, addr) = (started.write_url.clone(), started.addr);
    let (primary_port, standby_port) =
        (started.clusters.primary_port, started.clusters.standby_port);
    let standby = wait_connect(&started.read_url).await;
    let log = started.log.clone();
    let primary = connect(&write_url).await;

    // One line says where reads and writes go, without passwords.
    let lines = log.lock().unwrap().clone();
    let roles = lines
        .iter()
        .find(|l| l.contains("databases: writes"))
        .expect("a line naming the databases");
    assert!(
        roles.contains(&format!("writes=127.0.0.1:{}/relay", primary_port))
            && roles.contains(&format!("reads=127.0.0.1:{}/relay", standby_port)),
        "{roles}"
    );
    assert!(
        lines.iter().any(|l| l.contains("ingest mode tail")),
        "{lines:#?}"
    );

    let mut subscribers = Vec::new();
    for vsn in ["1.0.0", "2.0.0"] {
        let url = format!("ws://{addr}/realtime/v1/websocket?apikey=test&vsn={vsn}");
        let mut ws = Ws::connect(&url, vsn).await;
        let ids = ws
            .subscribe(
                "realtime:replica",
                json!([{"event":"*","schema":"public","table":"polls"}]),
            )
            .await;
        subscribers.push((vsn, ws, ids));
    }

    // A transaction open on the primary across the next one's commit: a standby's snapshot
    // does not list it as running, and it must still arrive, after the one that committed
    // first.
    let mut early = connect(&write_url).await;
    let open = early.transaction().await.unwrap();
    let early_id: i64 = open
        .query_one(
            "INSERT INTO polls (question, options, status) VALUES ('Early?', '[\"x\"]', 'draft') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let id: i64 = primary
        .query_one(
            "INSERT INTO polls (question, options, status) VALUES ('From the standby?', '[\"a\",\"b\"]', 'draft') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for (vsn, ws, ids) in &mut subscribers {
        let f = ws.recv_event("postgres_changes").await;
        assert_eq!(f.topic, "realtime:replica", "{vsn}");
        assert_eq!(f.payload["ids"], json!(ids), "{vsn}");
        let data = &f.payload["data"];
        assert_eq!(data["type"], "INSERT", "{vsn}");
        assert_eq!(data["schema"], "public");
        assert_eq!(data["table"], "polls");
        assert_eq!(data["errors"], json!(null));
        assert!(data.get("old_record").is_none());
        assert_eq!(
            data["record"]["id"],
            json!(id),
            "{vsn}: the committed one first"
        );
        assert_eq!(data["record"]["question"], "From the standby?");
        assert_eq!(data["record"]["options"], json!(["a", "b"]));
        assert_eq!(data["record"]["status"], "draft");
        assert_eq!(data["record"]["boost_count"], 0);
        assert_eq!(data["record"]["created_by"], json!(null));
        let ts = data["commit_timestamp"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
        let names: Vec<&str> = data["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "question",
                "options",
                "status",
                "created_by",
                "boost_count",
                "created_at",
                "closes_at"
            ]
        );
    }
    open.commit().await.unwrap();
    primary
        .execute("UPDATE polls SET status = 'active' WHERE id = $1", &[&id])
        .await
        .unwrap();
    for (vsn, ws, _) in &mut subscribers {
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "INSERT", "{vsn}: {data}");
        assert_eq!(
            data["record"]["id"],
            json!(early_id),
            "{vsn}: the long one, not lost"
        );
        assert_eq!(data["record"]["question"], "Early?");
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "UPDATE", "{vsn}");
        assert_eq!(data["record"]["id"], json!(id));
        assert_eq!(data["record"]["status"], "active");
        assert_eq!(data["old_record"]["status"], "draft");
        assert_eq!(
            data["old_record"]["question"], "From the standby?",
            "full old row"
        );
    }

    // Writes through the relay land on the primary, and come back as changes from the
    // standby.
    let (status, body, _) = request(
        addr,
        "POST",
        &format!("/api/v1/polls/{id}/boost"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (vsn, ws, _) in &mut subscribers {
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "UPDATE", "{vsn}");
        assert_eq!(data["record"]["boost_count"], 1, "{vsn}");
        assert_eq!(data["old_record"]["boost_count"], 0, "{vsn}");
    }
    let user: String = primary
        .query_one(
            "INSERT INTO profiles (username) VALUES ('reader') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    hold(&primary, &user, Some(id), 4000, Some(0)).await;
    let (status, body) = vote(addr, &id.to_string(), Some(&user), r#"{"option_index": 1}"#).await;
    assert_eq!(status, 201, "{body}");
    let row = primary
        .query_one(
            "SELECT option_index FROM user_votes WHERE poll_id = $1 AND user_id = $2::text::uuid",
            &[&id, &user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1, "the vote is on the primary");
    let boosts: i32 = primary
        .query_one("SELECT boost_count FROM polls WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(boosts, 1, "the boost is on the primary");

    // The change-log reader runs on the standby only; the primary has no LISTEN session and
    // no reader.
    let on_primary = application_names(&primary, "relay").await;
    assert!(
        !on_primary
            .iter()
            .any(|n| n == "pgrelay reader" || n == "pgrelay listener"),
        "{on_primary:?}"
    );
    let on_standby = application_names(&standby, "relay").await;
    assert!(
        on_standby.iter().any(|n| n == "pgrelay reader"),
        "{on_standby:?}"
    );
    let doorbell: bool = primary
        .query_one("SELECT notify FROM pgrelay.ingest_state", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!doorbell, "nobody can hear a doorbell on a standby");

    // Replication lag is in /metrics, and near zero once the standby caught up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let lag = metric(&body, "pgrelay_replica_lag_seconds");
        let bytes = metric(&body, "pgrelay_replica_lag_bytes");
        assert!(lag.is_finite() && lag >= 0.0, "{lag}");
        if lag < 2.0 && bytes == 0.0 {
            assert_eq!(metric(&body, "pgrelay_listening"), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag {lag} s, {bytes} bytes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = started.child.kill().await;
}

/// While the standby lags (replay paused), changes wait, /metrics shows the lag, writes
/// through the relay still succeed on the primary and a read right after does not see them;
/// once replay resumes, every change arrives, in commit order, and the read sees the write.
#[tokio::test]
async fn during_lag_changes_wait_and_then_arrive_in_order() {
    let Some(mut started) = cluster::start().await else {
        return;
    };
    let addr = started.addr;
    let primary = connect(&started.write_url).await;
    let standby = wait_connect(&started.read_url).await;
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey=test&vsn=2.0.0");
    let mut ws = Ws::connect(&url, "2.0.0").await;
    ws.subscribe(
        "realtime:lag",
        json!([{"event":"*","schema":"public","table":"polls"}]),
    )
    .await;

    standby
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let mut ids = Vec::new();
    for q in ["First?", "Second?", "Third?"] {
        let row = primary
            .query_one(
                "INSERT INTO polls (question, status) VALUES ($1, 'active') RETURNING id",
                &[&q],
            )
            .await
            .unwrap();
        ids.push(row.get::<_, i64>(0));
    }
    let first = ids[0];
    let (status, body, _) = request(
        addr,
        "POST",
        &format!("/api/v1/polls/{first}/boost"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "writes still go to the primary: {body}");
    let (status, body) = get(addr, &format!("/api/v1/polls/{first}")).await;
    assert_eq!(
        status, 404,
        "the standby has not replayed the poll yet: {body}"
    );
    ws.expect_silence(Duration::from_millis(1500)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(addr, "/metrics").await;
        let lag = metric(&body, "pgrelay_replica_lag_seconds");
        if lag >= 1.0 && metric(&body, "pgrelay_replica_lag_bytes") > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lag shown: {lag}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    standby
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    for (id, q) in ids.iter().zip(["First?", "Second?", "Third?"]) {
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "INSERT", "{data}");
        assert_eq!(data["record"]["id"], json!(id));
        assert_eq!(data["record"]["question"], q);
    }
    let f = ws.recv_event("postgres_changes").await;
    let data = &f.payload["data"];
    assert_eq!(data["type"], "UPDATE", "{data}");
    assert_eq!(data["record"]["id"], json!(first));
    assert_eq!(data["record"]["boost_count"], 1);
    let (status, body) = get(addr, &format!("/api/v1/polls/{first}")).await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(addr, "/metrics").await;
        let lag = metric(&body, "pgrelay_replica_lag_seconds");
        if lag < 1.0 && metric(&body, "pgrelay_replica_lag_bytes") == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lag stays {lag}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = started.child.kill().await;
}

#[tokio::test]
async fn a_read_url_that_is_not_a_standby_stops_the_start_with_one_line() {
    let db = TestDb::new().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("PGRELAY_READ_URL", &db.url)
        .env("PGRELAY_STARTUP_TIMEOUT", "0s")
        .env("NO_COLOR", "1")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("exits")
        .expect("ran");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pgrelay: error: PGRELAY_READ_URL (")
            && last.contains("is not a hot standby"),
        "{stderr}"
    );
    // Checked before anything is written: the primary was not even migrated.
    let client = db.client().await;
    let migrated: bool = client
        .query_one(
            "SELECT to_regclass('pgrelay.ingest_state') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!migrated);
}

/// Four writers update eight rows on the primary, in one- and two-row transactions, while a
/// transaction stays open across many of their commits: through the standby, each row's
/// updates arrive exactly once and in commit order (boost_count 1, 2, 3, …).
#[tokio::test]
async fn concurrent_writes_arrive_once_and_in_order_through_a_standby() {
    let Some(mut started) = cluster::start().await else {
        return;
    };
    let (write_url, addr) = (started.write_url.clone(), started.addr);
    let primary = connect(&write_url).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let row = primary
            .query_one(
                "INSERT INTO polls (question) VALUES ($1) RETURNING id",
                &[&format!("hot {i}")],
            )
            .await
            .unwrap();
        ids.push(row.get::<_, i64>(0));
    }
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey=test&vsn=2.0.0");
    let mut ws = Ws::connect(&url, "2.0.0").await;
    ws.subscribe(
        "realtime:hot",
        json!([{"event":"UPDATE","schema":"public","table":"polls"}]),
    )
    .await;

    let mut long = connect(&write_url).await;
    let open = long.transaction().await.unwrap();
    open.execute(
        "UPDATE polls SET boost_count = boost_count + 1 WHERE id = $1",
        &[&ids[7]],
    )
    .await
    .unwrap();
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (url, ids) = (write_url.clone(), ids.clone());
        writers.push(tokio::spawn(async move {
            let mut db = connect(&url).await;
            for i in 0..150usize {
                // Row 7 is locked by the open transaction until the writers are done.
                let a = ids[(w + i) % 7];
                let b = ids[(w + 3 * i + 1) % 7];
                let tx = db.transaction().await.unwrap();
                for id in [a.min(b), a.max(b)]
                    .into_iter()
                    .take(if i % 3 == 0 { 2 } else { 1 })
                {
                    tx.execute(
                        "UPDATE polls SET boost_count = boost_count + 1 WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    open.commit().await.unwrap();
    let mut want = std::collections::BTreeMap::new();
    for id in &ids {
        let n: i32 = primary
            .query_one("SELECT boost_count FROM polls WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        want.insert(*id, n);
    }
    let total: i32 = want.values().sum();
    let mut seen: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for got in 0..total {
        let Some(f) = ws.try_recv(Duration::from_secs(60)).await else {
            panic!("stalled after {got} of {total} updates");
        };
        assert_eq!(f.event, "postgres_changes", "{f:?}");
        let rec = &f.payload["data"]["record"];
        let old = &f.payload["data"]["old_record"];
        let (id, boost) = (
            rec["id"].as_i64().unwrap(),
            rec["boost_count"].as_i64().unwrap(),
        );
        assert_eq!(old["boost_count"].as_i64().unwrap(), boost - 1, "row {id}");
        seen.entry(id).or_default().push(boost);
    }
    if let Some(extra) = ws.try_recv(Duration::from_millis(1500)).await {
        panic!("more than {total} updates: {extra:?}");
    }
    for (id, n) in want {
        let expected: Vec<i64> = (1..=i64::from(n)).collect();
        assert_eq!(seen.remove(&id).unwrap_or_default(), expected, "row {id}");
    }
    let _ = started.child.kill().await;
}
