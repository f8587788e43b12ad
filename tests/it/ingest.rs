//! Ingest: every change is read from the change log, exactly once and in per-row commit order,
//! whatever rings (or does not ring) the doorbell: across lost sessions, mode switches,
//! transactions that straddle a switch, and forged notifications from other roles.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::faults::kill_session;
use crate::support::*;

/// A socket subscribed to every INSERT on `profiles`.
async fn profile_inserts(relay: &Relay) -> Ws {
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:p",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    ws
}

/// The switch as the triggers read it (`pgrelay.doorbell()`) and as the row says.
async fn doorbell(db: &tokio_postgres::Client) -> (bool, bool) {
    let row = db
        .query_one(
            "SELECT pgrelay.doorbell(), (SELECT notify FROM pgrelay.ingest_state)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn set_doorbell(db: &tokio_postgres::Client, on: bool) {
    db.execute("UPDATE pgrelay.ingest_state SET notify = $1", &[&on])
        .await
        .unwrap();
}

/// `rows` hot polls updated by 4 concurrent writers (single-row and two-row transactions,
/// rows always locked in id order) while `disturb(round)` runs `rounds` times, `every`
/// apart. Every subscriber (both serializers) must see each row's updates exactly once and
/// in commit order: boost_count 1, 2, 3, … with nothing missing or repeated.
async fn hot_rows_through<F, Fut>(
    relay: &Relay,
    rows: i64,
    rounds: u32,
    every: Duration,
    disturb: F,
) where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = relay.db().await;
    let mut ids = Vec::new();
    for i in 0..rows {
        let row = db
            .query_one(
                "INSERT INTO polls (question) VALUES ($1) RETURNING id",
                &[&format!("hot {i}")],
            )
            .await
            .unwrap();
        ids.push(row.get::<_, i64>(0));
    }
    // Subscribers read concurrently from the start, as real clients do: one left unread
    // while the other is checked would fill its queue and be cut off as too slow.
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(i64::MAX);
    let mut subscribers = Vec::new();
    for vsn in ["2.0.0", "1.0.0"] {
        let mut ws = relay.ws(vsn).await;
        ws.subscribe(
            "realtime:hot",
            json!([{"event":"UPDATE","schema":"public","table":"polls"}]),
        )
        .await;
        let mut expected = expected_rx.clone();
        subscribers.push(tokio::spawn(async move {
            let mut seen: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            let mut got = 0i64;
            loop {
                let want = *expected.borrow();
                if got >= want {
                    if let Some(extra) = ws.try_recv(Duration::from_millis(1500)).await {
                        panic!("{vsn}: more than {want} updates: {extra:?}");
                    }
                    return (vsn, seen);
                }
                tokio::select! {
                    f = ws.try_recv(Duration::from_secs(60)) => {
                        let Some(f) = f else {
                            panic!("{vsn}: stalled after {got} updates (want {want})");
                        };
                        assert_eq!(f.event, "postgres_changes", "{vsn}: {f:?}");
                        let rec = &f.payload["data"]["record"];
                        let old = &f.payload["data"]["old_record"];
                        let id = rec["id"].as_i64().unwrap();
                        let boost = rec["boost_count"].as_i64().unwrap();
                        assert_eq!(
                            old["boost_count"].as_i64(),
                            Some(boost - 1),
                            "{vsn}: old row"
                        );
                        seen.entry(id).or_default().push(boost);
                        got += 1;
                    }
                    _ = expected.changed() => {}
                }
            }
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let c = relay.db().await;
        let stop = stop.clone();
        let ids = ids.clone();
        writers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let a = ids[(n as usize) % ids.len()];
                if n % 4 == 0 {
                    let b = ids[(n as usize + 1) % ids.len()];
                    let (lo, hi) = (a.min(b), a.max(b));
                    c.batch_execute(&format!(
                        "BEGIN; \
                         UPDATE polls SET boost_count = boost_count + 1 WHERE id = {lo}; \
                         UPDATE polls SET boost_count = boost_count + 1 WHERE id = {hi}; \
                         COMMIT"
                    ))
                    .await
                    .unwrap();
                } else {
                    c.execute(
                        "UPDATE polls SET boost_count = boost_count + 1 WHERE id = $1",
                        &[&a],
                    )
                    .await
                    .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for round in 0..rounds {
        tokio::time::sleep(every).await;
        disturb(round).await;
    }
    tokio::time::sleep(every).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let truth: BTreeMap<i64, i64> = db
        .query("SELECT id, boost_count::int8 FROM polls", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: i64 = truth.values().sum();
    assert!(expected > 100, "the writers wrote: {expected}");
    expected_tx.send_replace(expected);
    for subscriber in subscribers {
        let (vsn, seen) = subscriber.await.unwrap();
        for (id, n) in &truth {
            let want: Vec<i64> = (1..=*n).collect();
            assert_eq!(
                seen.get(id).cloned().unwrap_or_default(),
                want,
                "{vsn}: poll {id} updates exactly once, in order"
            );
        }
    }
}

/// The scenario that once delivered `[4, 1, 2, 3, …]` for one row, repeated until it would
/// have been caught: 20 losses of the relay's sessions while a few hot rows are updated
/// concurrently.
#[tokio::test]
async fn per_row_order_holds_across_20_lost_sessions() {
    let relay = start_relay_with(|c| c.limits.listener_probe = Duration::from_millis(500)).await;
    let killer = relay.db().await;
    hot_rows_through(&relay, 3, 20, Duration::from_millis(300), |round| {
        let killer = &killer;
        async move {
            let name = match round % 3 {
                0 => "pgrelay reader",
                1 => "pgrelay listener",
                _ => "%",
            };
            if name == "%" {
                kill_session(killer, "pgrelay reader").await;
                kill_session(killer, "pgrelay listener").await;
            } else {
                kill_session(killer, name).await;
            }
        }
    })
    .await;
    relay.stop().await;
}

/// The doorbell switched on and off 20 times under write load, by the test and by the relay
/// itself (its threshold is low): transactions that read the switch just before a flip still
/// arrive, once.
#[tokio::test]
async fn mode_switches_under_write_load_lose_and_repeat_nothing() {
    let relay = start_relay_with(|c| c.limits.tail_above = 50).await;
    let flipper = relay.db().await;
    hot_rows_through(&relay, 4, 20, Duration::from_millis(250), |round| {
        let flipper = &flipper;
        async move { set_doorbell(flipper, round % 2 == 1).await }
    })
    .await;
    let (_, body) = http_get(relay.addr, "/metrics").await;
    assert!(metric(&body, "pgrelay_ingest_reads_total") > 0.0, "{body}");
    relay.stop().await;
}

/// A transaction that read the switch before it flipped and commits after: with the doorbell
/// going off it rings anyway (harmless), with the doorbell coming on it never rings and is
/// found by the reader all the same. Each is delivered exactly once.
#[tokio::test]
async fn a_transaction_open_across_a_switch_is_delivered_once() {
    let relay = start_relay_with(|c| c.limits.ingest = pgrelay::config::IngestMode::Notify).await;
    let db = relay.db().await;
    let mut ws = profile_inserts(&relay).await;
    for (name, before, after) in [("on-then-off", true, false), ("off-then-on", false, true)] {
        set_doorbell(&db, before).await;
        let tx = relay.db().await;
        tx.batch_execute(&format!(
            "BEGIN; INSERT INTO profiles (username) VALUES ('{name}')"
        ))
        .await
        .unwrap();
        set_doorbell(&db, after).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.batch_execute("COMMIT").await.unwrap();
        let f = ws.recv_event("postgres_changes").await;
        assert_eq!(f.payload["data"]["type"], "INSERT");
        assert_eq!(f.payload["data"]["record"]["username"], name);
        ws.expect_silence(Duration::from_millis(1200)).await;
    }
    relay.stop().await;
}

/// A role of the test's own: LOGIN and nothing else but what `grants` gives.
async fn role(
    db: &tokio_postgres::Client,
    url: &str,
    name: &str,
    grants: &str,
) -> tokio_postgres::Client {
    db.batch_execute(&format!(
        "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; {grants}"
    ))
    .await
    .unwrap();
    let mut cfg: tokio_postgres::Config = url.parse().unwrap();
    cfg.user(name);
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn drop_role(db: &tokio_postgres::Client, name: &str) {
    let _ = db
        .batch_execute(&format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {name}; \
             REVOKE ALL ON SCHEMA public FROM {name}; DROP ROLE IF EXISTS {name}"
        ))
        .await;
}

/// An application role can write its tables (the trigger, running as that role, logs for it)
/// but cannot flip the switch, read the change log, or add to it anything but its own writes.
#[tokio::test]
async fn app_roles_cannot_write_the_flag_or_the_log() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let name = format!("app_{}", relay.db.name.rsplit('_').next().unwrap_or("x"));
    let app = role(
        &db,
        &relay.db.url,
        &name,
        &format!(
            "GRANT USAGE ON SCHEMA public TO {name}; GRANT ALL ON ALL TABLES IN SCHEMA public TO {name};"
        ),
    )
    .await;
    let mut ws = profile_inserts(&relay).await;
    app.execute("INSERT INTO profiles (username) VALUES ('by-app')", &[])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["username"], "by-app");
    for attack in [
        "UPDATE pgrelay.ingest_state SET notify = false",
        // A change of a table the role may not write.
        "INSERT INTO pgrelay.change_log (schema_name, table_name, op, commit_timestamp, record) \
         VALUES ('pgrelay', 'read_policies', 'INSERT', 'x', '{\"role\":\"anon\"}')",
        // A change placed in another transaction's window, or with a chosen seq.
        "INSERT INTO pgrelay.change_log (xid, schema_name, table_name, op, commit_timestamp) \
         VALUES ('1', 'public', 'profiles', 'INSERT', 'x')",
        "INSERT INTO pgrelay.change_log (seq, schema_name, table_name, op, commit_timestamp) \
         OVERRIDING SYSTEM VALUE VALUES (1, 'public', 'profiles', 'INSERT', 'x')",
        // An op that is no row change (the role may SELECT profiles).
        "INSERT INTO pgrelay.change_log (schema_name, table_name, op, record) \
         VALUES ('public', 'profiles', 'SELECT', '{}')",
        // The switch as the triggers read it, and the trigger that keeps it in step.
        "CREATE OR REPLACE FUNCTION pgrelay.doorbell() RETURNS boolean \
         LANGUAGE sql IMMUTABLE AS $$ SELECT true $$",
        "SELECT pgrelay.ingest_state_changed()",
        "SELECT * FROM pgrelay.change_log",
        "DELETE FROM pgrelay.change_log",
        "UPDATE pgrelay.change_log SET record = '{}'",
    ] {
        let err = app.batch_execute(attack).await.expect_err(attack);
        let db_err = err.as_db_error().expect("a database error");
        assert_eq!(
            db_err.code(),
            &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE,
            "{attack}: {db_err}"
        );
    }
    ws.expect_silence(Duration::from_millis(800)).await;
    drop(app);
    drop_role(&db, &name).await;
    relay.stop().await;
}

/// The triggers read the switch as `pgrelay.doorbell()`, a constant that PostgreSQL folds into
/// each session's cached plan, where a query per row would cost every published write. A flip
/// of `pgrelay.ingest_state` must reach a writer session that is already open, both ways.
#[tokio::test]
async fn an_open_writer_session_follows_each_flip_of_the_switch() {
    // `tail` sets the switch off once at start and leaves it to the test after that.
    let relay = start_relay_with(|c| c.limits.ingest = pgrelay::config::IngestMode::Tail).await;
    let db = relay.db().await;
    let writer = relay.db().await;
    let (listener, rang) = crate::holds::count_hold_notifications(&relay.db.url).await;
    let rang_now = || rang.load(Ordering::Relaxed);
    let insert = |name: &'static str| {
        let writer = &writer;
        async move {
            writer
                .execute("INSERT INTO profiles (username) VALUES ($1)", &[&name])
                .await
                .unwrap();
        }
    };

    assert_eq!(doorbell(&db).await, (false, false));
    insert("quiet-1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rang_now(), 0, "switch off: no doorbell");

    set_doorbell(&db, true).await;
    assert_eq!(
        doorbell(&db).await,
        (true, true),
        "the function follows the row"
    );
    insert("rings").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rang_now() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rang_now(),
        1,
        "the open session rang after the switch went on"
    );

    set_doorbell(&db, false).await;
    assert_eq!(doorbell(&db).await, (false, false));
    insert("quiet-2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rang_now(), 1, "and stopped after it went off");

    listener.abort();
    relay.stop().await;
}

/// Rows logged before migration V12 carry the string their trigger formatted as
/// `commit_timestamp`; later rows leave it NULL and the relay formats `created_at`, the clock
/// time the trigger logged them. At an upgrade the log holds both kinds: each is delivered with
/// its own time.
#[tokio::test]
async fn rows_logged_by_an_older_trigger_keep_their_commit_timestamp() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = profile_inserts(&relay).await;
    // As the trigger file before V12 wrote it.
    db.batch_execute(
        "INSERT INTO pgrelay.change_log (schema_name, table_name, op, commit_timestamp, record) \
         VALUES ('public', 'profiles', 'INSERT', '2026-01-02T03:04:05.678Z', \
                 '{\"id\": \"00000000-0000-0000-0000-000000000001\", \"username\": \"legacy\"}')",
    )
    .await
    .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["username"], "legacy");
    assert_eq!(
        f.payload["data"]["commit_timestamp"],
        "2026-01-02T03:04:05.678Z"
    );

    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    db.execute("INSERT INTO profiles (username) VALUES ('current')", &[])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    let after = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(f.payload["data"]["record"]["username"], "current");
    let ts = f.payload["data"]["commit_timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    let at = chrono::DateTime::parse_from_rfc3339(ts).unwrap();
    assert!(
        before <= at && at <= after,
        "{ts} is the time of the insert"
    );
    relay.stop().await;
}

/// The reader's plan is made once per session and cached, perhaps while the log is nearly
/// empty. Whatever the log's size it must find the new rows through the xid index: a plan
/// that walks the whole log would make every read slower as the log grows.
#[tokio::test]
async fn the_readers_cached_plan_reads_the_log_through_the_xid_index() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut cfg: tokio_postgres::Config = relay.db.url.parse().unwrap();
    cfg.options(pgrelay::ingest::tail::SESSION_OPTIONS);
    let (reader, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    reader
        .batch_execute(&format!(
            "PREPARE read_log(text, text) AS {}",
            pgrelay::ingest::tail::READ_SQL
        ))
        .await
        .unwrap();
    // The first runs fix the generic plan while the log holds a row or two.
    for _ in 0..6 {
        reader
            .batch_execute("EXECUTE read_log('1', '{}')")
            .await
            .unwrap();
    }
    db.batch_execute(
        "INSERT INTO profiles (username) SELECT 'grown-' || i FROM generate_series(1, 20000) i; \
         ANALYZE pgrelay.change_log",
    )
    .await
    .unwrap();
    let xmax: String = db
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await
        .unwrap()
        .get(0);
    let plan: Vec<String> = reader
        .simple_query(&format!(
            "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY OFF) \
             EXECUTE read_log('{xmax}', '{{1}}')"
        ))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Cond: (xid >= ") && plan.contains("Index Cond: (xid = ANY "),
        "both halves of the window are index conditions:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan on change_log"), "{plan}");
    // A disabled scan costs a plan 10^10, enough to make PostgreSQL JIT-compile each read.
    assert!(!plan.contains("JIT"), "no read is JIT-compiled:\n{plan}");
    relay.stop().await;
}

/// A role with CONNECT and nothing else NOTIFYs on the relay's channel every way the old
/// payload format allowed: a reference to another table's change, the next change's seq, a
/// watermark marker of the relay's, and a flood. Subscribers get the real changes only,
/// field by field, nothing is dropped, and an SSE stream carries on intact.
#[tokio::test]
async fn forged_notifications_deliver_nothing_and_drop_nothing() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let name = format!("forger_{}", relay.db.name.rsplit('_').next().unwrap_or("x"));
    let forger = role(&db, &relay.db.url, &name, "").await;
    // A profiles change exists in the log: the old "ref" forgery pointed at such a row and
    // had it delivered as a change of the table the forger named.
    db.execute("INSERT INTO profiles (username) VALUES ('secret')", &[])
        .await
        .unwrap();
    let other_seq: i64 = db
        .query_one("SELECT max(seq) FROM pgrelay.change_log", &[])
        .await
        .unwrap()
        .get(0);
    // Let that change go by before anyone subscribes.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let mut polls = relay.ws("2.0.0").await;
    polls
        .subscribe(
            "realtime:polls",
            json!([{"event":"*","schema":"public","table":"polls"}]),
        )
        .await;
    let path = "/api/v1/changes?schema=public&table=profiles&event=INSERT";
    let mut sse = Sse::connect(relay.addr, path, None).await;
    sse.wait_for_position().await;
    let next_seq = other_seq + 1;
    let forgeries = [
        format!(
            r#"{{"v":1,"seq":{other_seq},"schema":"public","table":"polls","type":"INSERT","commit_timestamp":"2026-01-01T00:00:00.000Z","ref":true}}"#
        ),
        format!(
            r#"{{"v":1,"seq":{next_seq},"schema":"public","table":"polls","type":"INSERT","commit_timestamp":"2026-01-01T00:00:00.000Z","record":{{"id":999,"question":"forged"}}}}"#
        ),
        r#"{"v":1,"marker":1,"relay":"x","snapshot":"garbage"}"#.to_owned(),
        r#"{"v":1,"marker":2,"relay":"x","snapshot":"1:1:"}"#.to_owned(),
    ];
    for f in &forgeries {
        forger
            .execute("SELECT pg_notify('pgrelay', $1)", &[f])
            .await
            .unwrap();
    }
    // A flood: 20,000 notifications in 20 transactions.
    for _ in 0..20 {
        forger
            .batch_execute(
                "SELECT pg_notify('pgrelay', 'flood ' || g) FROM generate_series(1, 1000) g",
            )
            .await
            .unwrap();
    }
    // The real changes: a poll (takes the seq the forgery claimed) and a profile.
    db.execute(
        "INSERT INTO polls (question, options, status) VALUES ('real', '[\"a\"]', 'active')",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO profiles (username) VALUES ('real-profile')",
        &[],
    )
    .await
    .unwrap();

    let f = polls.recv_event("postgres_changes").await;
    let data = &f.payload["data"];
    assert_eq!(data["type"], "INSERT");
    assert_eq!(data["table"], "polls");
    assert_eq!(data["record"]["question"], "real");
    assert_eq!(data["record"]["status"], "active");
    assert!(data.get("old_record").is_none_or(Value::is_null));
    polls.expect_silence(Duration::from_millis(1500)).await;

    // The stream started after 'secret' was read: only the real profile, no system message.
    let e = loop {
        let e = sse
            .next(WAIT)
            .await
            .expect("the real profile on the stream");
        assert_ne!(e.event.as_deref(), Some("system"), "stream intact: {e:?}");
        if !e.data.is_empty() {
            break e;
        }
    };
    let d: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(d["record"]["username"], "real-profile");
    assert_eq!(d["table"], "profiles");
    let (_, body) = http_get(relay.addr, "/metrics").await;
    assert_eq!(metric(&body, "pgrelay_changes_dropped_total"), 0.0);
    assert_eq!(metric(&body, "pgrelay_gaps_total"), 0.0);
    drop(forger);
    drop_role(&db, &name).await;
    relay.stop().await;
}

/// `/metrics` says which mode runs and how the log is read.
#[tokio::test]
async fn metrics_show_the_ingest_mode_and_its_figures() {
    let relay = start_relay_with(|c| c.limits.ingest = pgrelay::config::IngestMode::Tail).await;
    let db = relay.db().await;
    db.execute("INSERT INTO profiles (username) VALUES ('m')", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = http_get(relay.addr, "/metrics").await;
    assert!(
        body.contains("pgrelay_ingest_mode{mode=\"tail\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("pgrelay_ingest_mode{mode=\"adaptive\"} 0"),
        "{body}"
    );
    assert_eq!(metric(&body, "pgrelay_ingest_tailing"), 1.0);
    assert!(
        metric(&body, "pgrelay_ingest_reads_total") >= 10.0,
        "{body}"
    );
    assert_eq!(metric(&body, "pgrelay_notify_lock_waiters"), 0.0);
    let lag = metric(&body, "pgrelay_ingest_lag_seconds");
    assert!((0.0..60.0).contains(&lag), "{body}");
    // Tail mode turned the doorbell off for everyone.
    let on: bool = db
        .query_one("SELECT notify FROM pgrelay.ingest_state", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!on);
    relay.stop().await;
}
