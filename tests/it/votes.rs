//! The polling app's SQL rules (sql/V4__polls_domain.sql): cast_vote's refusals as distinct
//! SQLSTATEs, its behaviour under races, and the statistics caches under concurrent writers.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{hold, poll, users};
use crate::support::*;

/// The SQLSTATE of a failed statement ("" when it succeeded).
async fn sqlstate(
    db: &tokio_postgres::Client,
    sql: &str,
    user: &str,
    poll: i64,
    option: i32,
) -> String {
    match db.execute(sql, &[&poll, &user, &option]).await {
        Ok(_) => String::new(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_owned())
            .unwrap_or_else(|| e.to_string()),
    }
}

const CAST: &str = "SELECT cast_vote($1, $2::text::uuid, $3)";

#[tokio::test]
async fn each_refusal_is_a_distinct_sqlstate() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let us = users(&db, "sql", 3).await;
    let (user, short, nohold) = (&us[0], &us[1], &us[2]);
    let p = poll(&db, "Q?", json!(["a", "b", "c"]), "active").await;
    let draft = poll(&db, "D?", json!(["a"]), "draft").await;
    let expired = poll(&db, "E?", json!(["a"]), "active").await;
    db.execute(
        "UPDATE polls SET closes_at = now() - interval '1 ms' WHERE id = $1",
        &[&expired],
    )
    .await
    .unwrap();
    for id in [p, draft, expired] {
        hold(&db, user, Some(id), 3100, None).await;
    }
    hold(&db, short, Some(p), 2900, Some(0)).await; // ended: 2.9 s for good
    hold(&db, short, None, 60_000, None).await; // the plain button does not count
    hold(&db, nohold, Some(draft), 60_000, None).await; // another poll's hold does not count

    assert_eq!(sqlstate(&db, CAST, user, 99, 0).await, "PV001");
    assert_eq!(sqlstate(&db, CAST, user, draft, 0).await, "PV002");
    assert_eq!(sqlstate(&db, CAST, user, expired, 0).await, "PV002");
    assert_eq!(sqlstate(&db, CAST, user, p, 3).await, "PV003");
    assert_eq!(sqlstate(&db, CAST, user, p, -1).await, "PV003");
    assert_eq!(
        sqlstate(&db, CAST, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", p, 0).await,
        "PV006"
    );
    assert_eq!(sqlstate(&db, CAST, short, p, 0).await, "PV005");
    assert_eq!(sqlstate(&db, CAST, nohold, p, 0).await, "PV005");
    assert_eq!(sqlstate(&db, CAST, user, p, 2).await, "");
    assert_eq!(sqlstate(&db, CAST, user, p, 1).await, "PV004");

    let row = db
        .query_one(
            "SELECT option_index, hold_ms FROM user_votes WHERE user_id = $1::text::uuid",
            &[user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert!((3100..13_100).contains(&row.get::<_, i32>(1)));

    // The messages say what was wrong.
    let err = db.execute(CAST, &[&p, short, &0]).await.unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("shorter than the required 3000 ms"), "{msg}");

    // boost_poll: PV001 and PV002 too.
    let boost = "SELECT boost_poll($1)";
    assert_eq!(
        db.query_one(boost, &[&p]).await.unwrap().get::<_, i32>(0),
        1
    );
    for (id, code) in [(99i64, "PV001"), (draft, "PV002"), (expired, "PV002")] {
        let err = db.query_one(boost, &[&id]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), code);
    }
}

#[tokio::test]
async fn the_hold_threshold_is_a_checked_setting() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let ms: i32 = db
        .query_one("SELECT vote_hold_min_ms()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ms, 3000);
    let us = users(&db, "setting", 1).await;
    let p = poll(&db, "Q?", json!(["a"]), "active").await;
    hold(&db, &us[0], Some(p), 1200, Some(0)).await;
    assert_eq!(sqlstate(&db, CAST, &us[0], p, 0).await, "PV005");
    for bad in ["'\"2s\"'", "'-1'", "'1.5'", "'null'"] {
        let err = db
            .batch_execute(&format!(
                "UPDATE app_settings SET value = {bad} WHERE name = 'vote_hold_min_ms'"
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23514", "{bad}");
    }
    db.batch_execute("UPDATE app_settings SET value = '1000' WHERE name = 'vote_hold_min_ms'")
        .await
        .unwrap();
    assert_eq!(sqlstate(&db, CAST, &us[0], p, 0).await, "");
    // Without the row, the default applies.
    db.batch_execute("DELETE FROM app_settings WHERE name = 'vote_hold_min_ms'")
        .await
        .unwrap();
    let ms: i32 = db
        .query_one("SELECT vote_hold_min_ms()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ms, 3000);
}

/// Whether `pid` is waiting on a lock.
async fn waits_on_lock(db: &tokio_postgres::Client, pid: i32) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        let waiting: bool = db
            .query_one(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if waiting || Instant::now() > deadline {
            return waiting;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pid(db: &tokio_postgres::Client) -> i32 {
    db.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn two_racing_votes_by_one_user_succeed_exactly_once() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let us = users(&db, "twice", 1).await;
    let user = us[0].clone();
    let p = poll(&db, "Q?", json!(["a", "b"]), "active").await;
    hold(&db, &user, Some(p), 4000, Some(0)).await;

    for first_commits in [false, true] {
        db.batch_execute("DELETE FROM user_votes").await.unwrap();
        let a = relay.db().await;
        let b = std::sync::Arc::new(relay.db().await);
        let b_pid = pid(&b).await;
        a.batch_execute("BEGIN").await.unwrap();
        a.execute(CAST, &[&p, &user, &0]).await.unwrap();
        // B passes the "already voted?" check (A has not committed) and then waits on A's
        // uncommitted index entry.
        let second = {
            let (b, user) = (b.clone(), user.clone());
            tokio::spawn(async move { b.execute(CAST, &[&p, &user, &1]).await })
        };
        assert!(
            waits_on_lock(&db, b_pid).await,
            "the second vote waits for the first"
        );
        a.batch_execute(if first_commits { "COMMIT" } else { "ROLLBACK" })
            .await
            .unwrap();
        let second = second.await.unwrap();
        if first_commits {
            let err = second.unwrap_err();
            assert_eq!(err.code().unwrap().code(), "PV004");
        } else {
            second.unwrap();
        }
        let rows = db
            .query("SELECT option_index FROM user_votes", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, i32>(0), if first_commits { 0 } else { 1 });
        let counts = db
            .query(
                "SELECT option_index, votes FROM poll_option_counts WHERE votes > 0",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].get::<_, i64>(1), 1);
    }
}

#[tokio::test]
async fn a_vote_racing_a_close_is_ordered_with_it() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let us = users(&db, "closer", 2).await;
    let p = poll(&db, "Q?", json!(["a", "b"]), "active").await;
    for u in &us {
        hold(&db, u, Some(p), 4000, Some(0)).await;
    }
    let voter = std::sync::Arc::new(relay.db().await);
    let closer = std::sync::Arc::new(relay.db().await);

    // The vote's transaction is open: the close waits for it, and the vote counts.
    voter.batch_execute("BEGIN").await.unwrap();
    voter.execute(CAST, &[&p, &us[0], &0]).await.unwrap();
    let closer_pid = pid(&closer).await;
    let close = {
        let closer = closer.clone();
        tokio::spawn(async move {
            closer
                .execute("UPDATE polls SET status = 'closed' WHERE id = $1", &[&p])
                .await
        })
    };
    assert!(
        waits_on_lock(&db, closer_pid).await,
        "the close waits for the vote"
    );
    voter.batch_execute("COMMIT").await.unwrap();
    close.await.unwrap().unwrap();

    // The close's transaction is open: the vote waits for it, then sees 'closed'.
    db.execute("UPDATE polls SET status = 'active' WHERE id = $1", &[&p])
        .await
        .unwrap();
    closer.batch_execute("BEGIN").await.unwrap();
    closer
        .execute("UPDATE polls SET status = 'closed' WHERE id = $1", &[&p])
        .await
        .unwrap();
    let voter_pid = pid(&voter).await;
    let cast = {
        let (voter, user) = (voter.clone(), us[1].clone());
        tokio::spawn(async move { voter.execute(CAST, &[&p, &user, &1]).await })
    };
    assert!(
        waits_on_lock(&db, voter_pid).await,
        "the vote waits for the close"
    );
    closer.batch_execute("COMMIT").await.unwrap();
    let err = cast.await.unwrap().unwrap_err();
    assert_eq!(err.code().unwrap().code(), "PV002");
    let n: i64 = db
        .query_one("SELECT count(*) FROM user_votes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// Every cache table against the truth computed from the tables; panics with the difference.
async fn assert_caches_match(db: &tokio_postgres::Client) {
    let drift = db
        .query(
            "SELECT coalesce(c.poll_id, t.poll_id), coalesce(c.option_index, t.option_index), \
                    coalesce(c.votes, 0), coalesce(t.n, 0) \
             FROM poll_option_counts c \
             FULL JOIN (SELECT poll_id, option_index, count(*) AS n FROM user_votes GROUP BY 1, 2) t \
               ON t.poll_id = c.poll_id AND t.option_index = c.option_index \
             WHERE coalesce(c.votes, 0) <> coalesce(t.n, 0)",
            &[],
        )
        .await
        .unwrap();
    let drift: Vec<(i64, i32, i64, i64)> = drift
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert!(
        drift.is_empty(),
        "poll_option_counts (poll, option, cached, true): {drift:?}"
    );
    let row = db
        .query_one(
            "SELECT row(s.*)::text, \
                    row((SELECT count(*) FROM polls), \
                        (SELECT count(*) FROM polls WHERE status = 'active'), \
                        (SELECT count(*) FROM user_votes), \
                        (SELECT count(*) FROM profiles), \
                        (SELECT coalesce(sum(boost_count), 0) FROM polls))::text \
             FROM app_stats s",
            &[],
        )
        .await
        .unwrap();
    let (cached, truth): (String, String) = (row.get(0), row.get(1));
    assert_eq!(
        cached, truth,
        "app_stats (polls, active_polls, votes, users, boosts)"
    );
}

/// A fixed pseudo-random permutation step (no rand dependency).
fn lcg(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *x >> 33
}

#[tokio::test]
async fn caches_equal_the_truth_after_8_concurrent_writers() {
    const WRITERS: usize = 8;
    const VOTES: usize = 500;
    const POLLS: i32 = 20;
    const USERS: i32 = (WRITERS * VOTES) as i32 / POLLS;
    let relay = start_relay().await;
    let db = relay.db().await;
    let user_ids = users(&db, "w", USERS).await;
    let poll_ids: Vec<i64> = db
        .query(
            "INSERT INTO polls (question, options, status) \
             SELECT 'Q' || g, '[\"a\",\"b\",\"c\",\"d\"]', 'active' FROM generate_series(1, $1) g \
             RETURNING id",
            &[&POLLS],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // A long enough hold for every (user, poll) pair, in one statement.
    db.execute(
        "INSERT INTO button_holds (user_id, poll_id, started_at, ended_at, is_active) \
         SELECT u.id, p.id, now() - interval '4 s', now(), false FROM profiles u, polls p",
        &[],
    )
    .await
    .unwrap();
    // Every (user, poll) pair once, shuffled, dealt to the writers.
    let mut pairs: Vec<(String, i64)> = user_ids
        .iter()
        .flat_map(|u| poll_ids.iter().map(move |p| (u.clone(), *p)))
        .collect();
    let mut seed = 7;
    for i in (1..pairs.len()).rev() {
        let j = (lcg(&mut seed) as usize) % (i + 1);
        pairs.swap(i, j);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, chunk) in pairs.chunks(VOTES).enumerate() {
        let chunk = chunk.to_vec();
        let client = relay.db().await;
        let poll_ids = poll_ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut seed = w as u64;
            let mut cast = Vec::new();
            for (i, (user, p)) in chunk.iter().enumerate() {
                let option = (lcg(&mut seed) % 4) as i32;
                client.execute(CAST, &[p, user, &option]).await.unwrap();
                cast.push((user.clone(), *p));
                // Everything else the caches follow, interleaved with the votes.
                let other = poll_ids[(lcg(&mut seed) % poll_ids.len() as u64) as usize];
                if i % 10 == 3 {
                    client.execute("SELECT boost_poll($1)", &[&other]).await.unwrap();
                }
                if i % 25 == 7 {
                    // Move one of this writer's votes to another option (and poll id stays).
                    let (u, vp) = &cast[(lcg(&mut seed) as usize) % cast.len()];
                    client
                        .execute(
                            "UPDATE user_votes SET option_index = (option_index + 1) % 4 \
                             WHERE poll_id = $1 AND user_id = $2::text::uuid",
                            &[vp, u],
                        )
                        .await
                        .unwrap();
                }
                if i % 25 == 19 {
                    let (u, vp) = cast.swap_remove((lcg(&mut seed) as usize) % cast.len());
                    client
                        .execute(
                            "DELETE FROM user_votes WHERE poll_id = $1 AND user_id = $2::text::uuid",
                            &[&vp, &u],
                        )
                        .await
                        .unwrap();
                }
                if i % 50 == 11 {
                    // A poll's life: created, activated, boosted, closed, sometimes deleted;
                    // a profile comes and (sometimes) goes.
                    let np: i64 = client
                        .query_one(
                            "INSERT INTO polls (question, options) VALUES ('tmp', '[\"x\"]') RETURNING id",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    client
                        .execute("UPDATE polls SET status = 'active' WHERE id = $1", &[&np])
                        .await
                        .unwrap();
                    client.execute("SELECT boost_poll($1)", &[&np]).await.unwrap();
                    client
                        .execute("UPDATE polls SET status = 'closed' WHERE id = $1", &[&np])
                        .await
                        .unwrap();
                    let name = format!("tmp-{w}-{i}");
                    client
                        .execute("INSERT INTO profiles (username) VALUES ($1)", &[&name])
                        .await
                        .unwrap();
                    if i % 100 == 11 {
                        client
                            .execute("DELETE FROM polls WHERE id = $1", &[&np])
                            .await
                            .unwrap();
                        client
                            .execute("DELETE FROM profiles WHERE username = $1", &[&name])
                            .await
                            .unwrap();
                    }
                }
            }
            // A multi-row statement per writer: move all its remaining votes on one poll.
            let p = poll_ids[w % poll_ids.len()];
            let mine: Vec<String> = cast
                .iter()
                .filter(|(_, vp)| *vp == p)
                .map(|(u, _)| u.clone())
                .collect();
            client
                .execute(
                    "UPDATE user_votes SET option_index = (option_index + 2) % 4 \
                     WHERE poll_id = $1 AND user_id = ANY($2::text[]::uuid[])",
                    &[&p, &mine],
                )
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let votes: i64 = db
        .query_one("SELECT count(*) FROM user_votes", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("{WRITERS} writers x {VOTES} votes (+ boosts, moves, deletes, polls, profiles) in {elapsed:?}; {votes} votes remain");
    assert_eq!(votes, (WRITERS * (VOTES - VOTES / 25)) as i64);
    assert_caches_match(&db).await;

    // And the caches follow a cascade (a poll deleted with its votes, a profile with its
    // votes) and a TRUNCATE.
    db.execute("DELETE FROM polls WHERE id = $1", &[&poll_ids[0]])
        .await
        .unwrap();
    db.execute(
        "DELETE FROM profiles WHERE id = $1::text::uuid",
        &[&user_ids[0]],
    )
    .await
    .unwrap();
    assert_caches_match(&db).await;
    db.batch_execute("TRUNCATE user_votes").await.unwrap();
    assert_caches_match(&db).await;
    db.batch_execute("TRUNCATE profiles CASCADE").await.unwrap();
    assert_caches_match(&db).await;
}

/// One run of the measurement: `writers` connections, each casting `per_writer` votes on its
/// own poll (so no two writers share a poll or an option-count row).
async fn vote_throughput(relay: &Relay, writers: usize, per_writer: usize) -> Throughput {
    let db = relay.db().await;
    db.batch_execute(
        "TRUNCATE profiles, polls CASCADE; \
         INSERT INTO profiles (username) SELECT 'b' || g FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let user_ids: Vec<String> = db
        .query(
            "SELECT id::text FROM profiles ORDER BY username LIMIT $1",
            &[&(per_writer as i64)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let polls: Vec<i64> = db
        .query(
            "INSERT INTO polls (question, options, status) \
             SELECT 'B' || g, '[\"a\",\"b\"]', 'active' FROM generate_series(1, $1) g RETURNING id",
            &[&(writers as i32)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    db.execute(
        "INSERT INTO button_holds (user_id, poll_id, started_at, ended_at, is_active) \
         SELECT u.id, p.id, now() - interval '4 s', now(), false FROM profiles u, polls p \
         WHERE p.question LIKE 'B%'",
        &[],
    )
    .await
    .unwrap();
    let mut clients = Vec::new();
    for _ in 0..writers {
        let c = relay.db().await;
        c.batch_execute("SELECT 1").await.unwrap();
        clients.push(c);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Lock waits by kind: on another transaction (a row lock: `transactionid`, `tuple`) and on
    // the cluster-wide NOTIFY commit lock (`object`, taken by every notifying commit).
    let sampler = {
        let stop = stop.clone();
        let c = relay.db().await;
        tokio::spawn(async move {
            let (mut samples, mut row, mut notify) = (0u64, 0i64, 0i64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c
                    .query_one(
                        "SELECT count(*) FILTER (WHERE wait_event IN ('transactionid', 'tuple')), \
                                count(*) FILTER (WHERE wait_event = 'object') \
                         FROM pg_stat_activity \
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                        &[],
                    )
                    .await
                    .unwrap();
                samples += 1;
                row += r.get::<_, i64>(0);
                notify += r.get::<_, i64>(1);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let n = samples.max(1) as f64;
            (row as f64 / n, notify as f64 / n)
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(polls)
        .map(|(c, p)| {
            let user_ids = user_ids.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(user_ids.len());
                for u in &user_ids {
                    let t = Instant::now();
                    c.execute(CAST, &[&p, u, &0]).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (row_waits, notify_waits) = sampler.await.unwrap();
    latencies.sort();
    assert_caches_match(&db).await;
    Throughput {
        votes_per_s: (writers * per_writer) as f64 / elapsed.as_secs_f64(),
        row_waits,
        notify_waits,
        p50_ms: latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        p99_ms: latencies[latencies.len() * 99 / 100].as_secs_f64() * 1000.0,
    }
}

/// What one measurement run saw; waits are the mean number of backends found waiting.
#[derive(Debug)]
struct Throughput {
    votes_per_s: f64,
    row_waits: f64,
    notify_waits: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The measurement behind README's figures: 8 connections voting on different polls, with the
/// sharded totals and with a single-row total. In the normal run it is small (it checks the
/// totals and prints figures, asserting no timings); for the README's figures run it with
/// `PGRELAY_MEASURE_VOTES=600`:
///
/// ```sh
/// PGRELAY_MEASURE_VOTES=600 cargo test --test it votes::measure_sharded_totals_against_a_single_row -- --nocapture
/// ```
#[tokio::test]
async fn measure_sharded_totals_against_a_single_row() {
    const WRITERS: usize = 8;
    let per_writer: usize = std::env::var("PGRELAY_MEASURE_VOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let relay = start_relay().await;
    let db = relay.db().await;
    let single_row =
        "CREATE OR REPLACE FUNCTION public.app_stats_add(p_metric text, p_delta bigint) \
         RETURNS void LANGUAGE plpgsql AS $f$ BEGIN \
           IF p_delta <> 0 THEN \
             UPDATE public.app_stat_shards SET value = value + p_delta \
             WHERE metric = p_metric AND shard = 0; \
           END IF; END $f$";
    let original: String = db
        .query_one(
            "SELECT pg_get_functiondef('public.app_stats_add(text, bigint)'::regprocedure)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut report = Vec::new();
    for notify in [true, false] {
        if !notify {
            // Without the pgrelay trigger: no commit-time NOTIFY lock, the row lock alone.
            db.batch_execute("DROP TRIGGER pgrelay_notify ON public.user_votes")
                .await
                .unwrap();
        }
        for round in 0..2 {
            for (name, def) in [("sharded", original.as_str()), ("single-row", single_row)] {
                db.batch_execute(def).await.unwrap();
                let t = vote_throughput(&relay, WRITERS, per_writer).await;
                let line = format!(
                    "notify={notify:<5} round={round} {name:>10}: {:5.0} votes/s, backends waiting \
                     on a row lock {:.2}, on the NOTIFY lock {:.2}; latency p50 {:.1} ms, p99 {:.1} ms",
                    t.votes_per_s, t.row_waits, t.notify_waits, t.p50_ms, t.p99_ms
                );
                eprintln!("{line}");
                report.push(line);
            }
        }
    }
    db.batch_execute(&original).await.unwrap();
    eprintln!("{}", report.join("\n"));
}
