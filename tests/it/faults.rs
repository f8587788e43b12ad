//! Delivery guarantees under faults: the LISTEN session terminated or the relay's database
//! connections cut, while writers keep committing. Every subscriber must receive every change
//! exactly once, in an order consistent with commit order, checked against the table.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// Terminate the relay's LISTEN session; returns how many backends were terminated.
async fn kill_listener(db: &tokio_postgres::Client) -> u64 {
    kill_session(db, "pgrelay listener").await
}

/// Terminate the relay's session named `name` (its `application_name`).
pub(crate) async fn kill_session(db: &tokio_postgres::Client, name: &str) -> u64 {
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
        &[&name],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn changes_committed_while_listener_is_down_are_replayed() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:resilient",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    // Let a watermark marker come back first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(kill_listener(&db).await, 1, "exactly one LISTEN session");
    for i in 0..50 {
        db.execute(
            "INSERT INTO profiles (username) VALUES ($1)",
            &[&format!("u{i}")],
        )
        .await
        .unwrap();
    }
    for i in 0..50 {
        let f = ws.recv().await;
        assert_eq!(
            f.event, "postgres_changes",
            "no gap message expected: {f:?}"
        );
        assert_eq!(f.payload["data"]["record"]["username"], format!("u{i}"));
    }
    ws.expect_silence(Duration::from_millis(1500)).await;
    let (_, body) = http_get(relay.addr, "/metrics").await;
    assert_eq!(metric(&body, "pgrelay_listener_reconnects_total"), 1.0);
    assert_eq!(metric(&body, "pgrelay_catchups_total"), 1.0);
    assert_eq!(metric(&body, "pgrelay_gaps_total"), 0.0);
    relay.stop().await;
}

#[tokio::test]
async fn a_gap_that_cannot_be_filled_is_announced() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:g",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    // As if pruning had deleted changes the reader had not read yet: when its session comes
    // back, it must admit the gap rather than pretend.
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.batch_execute("UPDATE pgrelay.prune_state SET max_pruned_xid = pg_current_xact_id()")
        .await
        .unwrap();
    assert_eq!(kill_session(&db, "pgrelay reader").await, 1);
    let sys = ws.recv().await;
    assert_eq!(sys.event, "system");
    assert_eq!(sys.payload["status"], "error");
    assert_eq!(sys.payload["extension"], "postgres_changes");
    assert!(sys.payload["message"]
        .as_str()
        .unwrap()
        .contains("may be missing"));
    relay.stop().await;
}

/// What a subscriber saw, checked against the table.
pub(crate) fn check_polls_stream(
    who: &str,
    events: &[serde_json::Value],
    truth: &BTreeMap<i64, i32>,
) {
    // poll id → boost counts seen, in arrival order.
    let mut inserted: BTreeMap<i64, usize> = BTreeMap::new();
    let mut boosts: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for data in events {
        let id = data["record"]["id"].as_i64().unwrap();
        match data["type"].as_str().unwrap() {
            "INSERT" => *inserted.entry(id).or_default() += 1,
            "UPDATE" => {
                let old = data["old_record"]["boost_count"].as_i64().unwrap();
                let new = data["record"]["boost_count"].as_i64().unwrap();
                assert_eq!(new, old + 1, "{who}: poll {id} update skipped a value");
                boosts.entry(id).or_default().push(new);
            }
            other => panic!("{who}: unexpected {other}"),
        }
    }
    for (id, final_count) in truth {
        assert_eq!(
            inserted.get(id),
            Some(&1),
            "{who}: poll {id} INSERT exactly once"
        );
        let seen = boosts.remove(id).unwrap_or_default();
        let want: Vec<i64> = (1..=i64::from(*final_count)).collect();
        assert_eq!(
            seen, want,
            "{who}: poll {id} updates exactly once, in order"
        );
    }
    assert_eq!(inserted.len(), truth.len(), "{who}: no phantom polls");
    assert!(boosts.is_empty(), "{who}: updates for unknown polls");
}

/// 300 writes/s for `secs` seconds from 3 writers (inserts and increments of polls), plus a
/// transaction held open across each fault; `fault` runs every 2 s.
async fn write_through_faults<F, Fut>(relay: &Relay, secs: u64, fault: F)
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Subscribers read concurrently, as real clients do.
    let mut readers = Vec::new();
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(usize::MAX);
    for vsn in ["2.0.0", "1.0.0"] {
        let mut ws = relay.ws(vsn).await;
        ws.subscribe(
            "realtime:polls",
            json!([{"event":"*","schema":"public","table":"polls"}]),
        )
        .await;
        let mut expected = expected_rx.clone();
        readers.push(tokio::spawn(async move {
            let mut events = Vec::new();
            loop {
                let want = *expected.borrow();
                if events.len() >= want {
                    // Anything more would be a repeat.
                    if let Some(extra) = ws.try_recv(Duration::from_millis(1500)).await {
                        panic!("{vsn}: more than {want} changes: {extra:?}");
                    }
                    return events;
                }
                let wait = if want == usize::MAX { 60 } else { 15 };
                tokio::select! {
                    f = ws.try_recv(Duration::from_secs(wait)) => {
                        let Some(f) = f else {
                            panic!("{vsn}: stalled at {} changes (want {want})", events.len())
                        };
                        assert_eq!(f.event, "postgres_changes", "{vsn}: unexpected {f:?}");
                        events.push(f.payload["data"].clone());
                    }
                    _ = expected.changed() => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // first watermark

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let c = relay.db.client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                if n % 3 == 0 {
                    c.execute(
                        "INSERT INTO polls (question) VALUES ($1)",
                        &[&format!("w{w}-{n}")],
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
            }
        }));
    }
    // Transactions that stay open across a fault and commit after it.
    let straddler = {
        let c = relay.db.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.batch_execute(
                    "BEGIN; INSERT INTO polls (question) VALUES ('long-running'); \
                     UPDATE polls SET boost_count = boost_count + 1 WHERE id = \
                     (SELECT max(id) FROM polls)",
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(1700)).await;
                c.batch_execute("COMMIT").await.unwrap();
            }
        })
    };
    let rounds = u32::try_from(secs / 2).unwrap();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_secs(2)).await;
        fault(round).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    straddler.await.unwrap();

    let db = relay.db().await;
    let truth: BTreeMap<i64, i32> = db
        .query("SELECT id, boost_count FROM polls", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: usize = truth.values().map(|b| 1 + *b as usize).sum();
    expected_tx.send_replace(expected);
    for (i, reader) in readers.into_iter().enumerate() {
        let events = reader.await.unwrap();
        check_polls_stream(&format!("subscriber {i}"), &events, &truth);
    }
    let (_, body) = http_get(relay.addr, "/metrics").await;
    assert_eq!(metric(&body, "pgrelay_gaps_total"), 0.0);
    // Every lost session was followed by a catch-up, and there was at least one.
    let reconnects = metric(&body, "pgrelay_listener_reconnects_total");
    assert!(reconnects >= 1.0, "{body}");
    assert_eq!(metric(&body, "pgrelay_catchups_total"), reconnects);
}

#[tokio::test]
async fn listener_terminated_ten_times_under_load_loses_and_repeats_nothing() {
    let relay = start_relay().await;
    let killer = relay.db().await;
    write_through_faults(&relay, 20, |_| {
        let killer = &killer;
        async move {
            assert_eq!(kill_listener(killer).await, 1);
        }
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn database_connections_cut_for_seconds_lose_and_repeat_nothing() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(pg_addr()).await;
    let mut config = pgrelay::Config::new(proxy.url_for(&db));
    config.pool_size = 4;
    // Probe often so the cut is noticed quickly (a half-open session would look alive).
    config.limits.listener_probe = Duration::from_millis(500);
    let relay = start_on(db, config).await;
    write_through_faults(&relay, 16, |round| {
        let proxy = &proxy;
        async move {
            if round % 2 == 0 {
                proxy.cut();
                tokio::time::sleep(Duration::from_secs(5)).await;
                proxy.restore();
            }
        }
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn pruning_deletes_old_changes_in_batches_and_records_the_horizon() {
    let relay = start_relay().await;
    let db = relay.db().await;
    for i in 0..20 {
        db.execute(
            "INSERT INTO profiles (username) VALUES ($1)",
            &[&format!("p{i}")],
        )
        .await
        .unwrap();
    }
    // Backdate half of the log, as if it were older than the retention.
    db.batch_execute(
        "UPDATE pgrelay.change_log SET created_at = now() - interval '1 hour' \
         WHERE seq IN (SELECT seq FROM pgrelay.change_log ORDER BY seq LIMIT 10)",
    )
    .await
    .unwrap();
    let pool = pgrelay::db::build_pool(&relay.db.url, 1).unwrap();
    // Rows of transactions newer than the cluster's oldest running one are kept, and other
    // tests run transactions concurrently: retry until they are out of the way.
    let mut pruned = 0;
    for _ in 0..100 {
        pruned += pgrelay::db::cleanup::prune_change_log(&pool, Duration::from_secs(15 * 60))
            .await
            .unwrap();
        if pruned >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pruned, 10);
    let row = db
        .query_one(
            "SELECT count(*), (SELECT max_pruned_xid IS NOT NULL FROM pgrelay.prune_state) \
             FROM pgrelay.change_log WHERE schema_name = 'public'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10, "the recent half stays");
    assert!(row.get::<_, bool>(1), "horizon recorded");
    // Nothing else is old enough.
    assert_eq!(
        pgrelay::db::cleanup::prune_change_log(&pool, Duration::from_secs(15 * 60))
            .await
            .unwrap(),
        0
    );
    relay.stop().await;
}
