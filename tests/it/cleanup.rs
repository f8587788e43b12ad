//! Ending stale button-hold sessions: one pass, concurrent passes and processes, the loop
//! inside `serve`, and the `cleanup` command's configuration.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgrelay::config::SessionCleanup;
use pgrelay::db::cleanup::{self, Sweep};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::lifecycle::signal;
use crate::support::*;

/// Insert `n` active sessions for `user` whose last heartbeat was `age_secs` ago; their ids.
async fn holds(db: &tokio_postgres::Client, user: &str, n: i32, age_secs: f64) -> Vec<String> {
    db.query(
        "INSERT INTO button_holds (user_id, started_at, last_heartbeat) \
         SELECT $1::text::uuid, now() - make_interval(secs => $3), now() - make_interval(secs => $3) \
         FROM generate_series(1, $2) RETURNING id::text",
        &[&user, &n, &age_secs],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// `(is_active, ended_at as text)` of one session.
async fn state(db: &tokio_postgres::Client, id: &str) -> (bool, Option<String>) {
    let row = db
        .query_one(
            "SELECT is_active, ended_at::text FROM button_holds WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Receive `n` `button_holds` UPDATE events, check each is an end, and then that no more come.
/// Returns the ended ids.
async fn expect_ends(ws: &mut Ws, n: usize, quiet: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "UPDATE", "{f:?}");
        assert_eq!(data["schema"], "public");
        assert_eq!(data["table"], "button_holds");
        let (record, old) = (&data["record"], &data["old_record"]);
        assert_eq!(record["is_active"], json!(false), "{f:?}");
        assert!(record["ended_at"].is_string(), "{f:?}");
        assert_eq!(old["is_active"], json!(true), "{f:?}");
        assert_eq!(old["ended_at"], Value::Null, "{f:?}");
        assert_eq!(record["id"], old["id"]);
        assert_eq!(record["last_heartbeat"], old["last_heartbeat"]);
        ids.push(record["id"].as_str().unwrap().to_owned());
    }
    ws.expect_silence(quiet).await;
    ids
}

/// The sum of `ended=N` over a log's "stale sessions ended" lines.
fn ended_in(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("stale sessions ended"))
        .map(|l| {
            l.split("ended=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count in {l:?}"))
        })
        .sum()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn a_pass_ends_exactly_the_stale_sessions_and_announces_each_once() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (user, _) = seed(&db).await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:button-sessions",
        json!([{"event":"UPDATE","schema":"public","table":"button_holds"}]),
    )
    .await;

    let stale = holds(&db, &user, 3, 60.0).await;
    let fresh = holds(&db, &user, 2, 1.0).await;
    let ended = holds(&db, &user, 1, 60.0).await;
    db.execute(
        "UPDATE button_holds SET is_active = false, ended_at = now() - interval '30 seconds' \
         WHERE id = $1::text::uuid",
        &[&ended[0]],
    )
    .await
    .unwrap();
    let f = ws.recv_event("postgres_changes").await; // that manual end
    assert_eq!(f.payload["data"]["record"]["id"], json!(ended[0]));
    let ended_before = state(&db, &ended[0]).await;

    let pool = pgrelay::db::build_pool(&relay.db.url, 1).unwrap();
    assert_eq!(
        cleanup::sweep(&pool, Duration::from_secs(10))
            .await
            .unwrap(),
        Sweep::Ended(3)
    );
    for id in &stale {
        let (active, ended_at) = state(&db, id).await;
        assert!(!active, "{id} still active");
        assert!(ended_at.is_some(), "{id} has no ended_at");
    }
    for id in &fresh {
        assert_eq!(state(&db, id).await, (true, None), "{id} was touched");
    }
    assert_eq!(state(&db, &ended[0]).await, ended_before);

    let got = expect_ends(&mut ws, 3, Duration::from_millis(1500)).await;
    assert_eq!(sorted(got), sorted(stale));

    // Nothing stale any more: the next pass ends nothing and announces nothing.
    assert_eq!(
        cleanup::sweep(&pool, Duration::from_secs(10))
            .await
            .unwrap(),
        Sweep::Ended(0)
    );
    ws.expect_silence(Duration::from_millis(500)).await;
    relay.stop().await;
}

/// READ COMMITTED alone makes the one-statement sweep exactly-once: a concurrent UPDATE waits
/// for the first one's row locks, then re-checks `is_active` on the committed rows.
#[tokio::test]
async fn concurrent_updates_end_each_session_once_without_the_advisory_lock() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (user, _) = seed(&db).await;
    let stale = holds(&db, &user, 20, 60.0).await;

    let mut a = relay.db().await;
    let b = relay.db().await;
    let b_pid: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let tx = a.transaction().await.unwrap();
    let first = cleanup::end_stale_sessions(&tx, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(first, 20);
    let second =
        tokio::spawn(async move { cleanup::end_stale_sessions(&b, Duration::from_secs(10)).await });
    // B really is waiting on A's row locks (not merely late).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting: bool = db
            .query_one(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                &[&b_pid],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "B never blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!second.is_finished());
    tx.commit().await.unwrap();
    assert_eq!(second.await.unwrap().unwrap(), 0);

    // And with many at once, racing freely: the counts add up to the sessions, exactly.
    let more = holds(&db, &user, 200, 60.0).await;
    let mut racers = Vec::new();
    for _ in 0..6 {
        let c = relay.db().await;
        racers.push(tokio::spawn(async move {
            cleanup::end_stale_sessions(&c, Duration::from_secs(10)).await
        }));
    }
    let mut total = 0;
    for r in racers {
        total += r.await.unwrap().unwrap();
    }
    assert_eq!(total, more.len() as u64);
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE is_active), count(*) FILTER (WHERE ended_at IS NULL) \
             FROM button_holds",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
    assert_eq!(stale.len() + more.len(), 220);
    relay.stop().await;
}

#[tokio::test]
async fn a_sweep_skips_while_another_holds_the_lock() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (user, _) = seed(&db).await;
    holds(&db, &user, 2, 60.0).await;
    let mut other = relay.db().await;
    let tx = other.transaction().await.unwrap();
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&cleanup::SWEEP_LOCK])
        .await
        .unwrap();
    let pool = pgrelay::db::build_pool(&relay.db.url, 1).unwrap();
    let stale = Duration::from_secs(10);
    assert_eq!(cleanup::sweep(&pool, stale).await.unwrap(), Sweep::Skipped);
    tx.rollback().await.unwrap();
    assert_eq!(cleanup::sweep(&pool, stale).await.unwrap(), Sweep::Ended(2));
    relay.stop().await;
}

/// A running `pgrelay cleanup` process whose stderr lines are collected.
struct CleanupProcess {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl CleanupProcess {
    async fn spawn(url: &str, args: &[&str]) -> CleanupProcess {
        let p = Self::start(url, args);
        p.wait_for_line("session cleanup running").await;
        p
    }

    /// Start it without waiting for the loop to run.
    fn start(url: &str, args: &[&str]) -> CleanupProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
            .arg("cleanup")
            .args(args)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pgrelay cleanup");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(l)) = stderr.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        CleanupProcess {
            child,
            lines,
            reader,
        }
    }

    async fn wait_for_line(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.log().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGTERM; it must exit 0 in time. Returns its log.
    async fn stop(mut self) -> String {
        signal(&self.child, "-TERM");
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        assert!(status.success(), "exit status {status:?}:\n{}", self.log());
        // Every line is in once the pipe is drained.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        self.log()
    }
}

#[tokio::test]
async fn two_cleanup_processes_end_each_session_exactly_once() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let (user, _) = seed(&db).await;
    let mut ws = relay.ws("1.0.0").await;
    ws.subscribe(
        "realtime:button-sessions",
        json!([{"event":"UPDATE","schema":"public","table":"button_holds"}]),
    )
    .await;
    let args = ["--interval", "200ms", "--stale-after", "1s"];
    let (one, two) = tokio::join!(
        CleanupProcess::spawn(&relay.db.url, &args),
        CleanupProcess::spawn(&relay.db.url, &args),
    );

    // Fresh when written, so both processes see them go stale at the same moment.
    let sessions = holds(&db, &user, 50, 0.0).await;
    let got = expect_ends(&mut ws, 50, Duration::from_secs(2)).await;
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 50, "{got:?}");
    assert_eq!(sorted(got), sorted(sessions));

    let (log_one, log_two) = tokio::join!(one.stop(), two.stop());
    assert_eq!(
        ended_in(&log_one) + ended_in(&log_two),
        50,
        "logs:\n{log_one}\n---\n{log_two}"
    );
    for log in [log_one, log_two] {
        assert!(log.contains("stopped"), "{log}");
        assert!(!log.contains("CleanupFailed"), "{log}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn serve_with_cleanup_ends_stale_sessions_on_its_own() {
    let relay = start_relay_with(|c| {
        c.cleanup = Some(SessionCleanup {
            interval: Duration::from_millis(200),
            stale_after: Duration::from_secs(1),
        });
    })
    .await;
    let db = relay.db().await;
    let (user, _) = seed(&db).await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:button-sessions",
        json!([{"event":"UPDATE","schema":"public","table":"button_holds"}]),
    )
    .await;
    let abandoned = holds(&db, &user, 1, 0.0).await;
    let held = holds(&db, &user, 1, 0.0).await;
    // The held session heartbeats (which announces nothing); the abandoned one does not.
    let started = tokio::time::Instant::now();
    let mut ended = None;
    while started.elapsed() < Duration::from_millis(2500) {
        db.execute(
            "UPDATE button_holds SET last_heartbeat = now() WHERE id = $1::text::uuid",
            &[&held[0]],
        )
        .await
        .unwrap();
        if let Some(f) = ws.try_recv(Duration::from_millis(200)).await {
            assert!(ended.is_none(), "a second frame: {f:?}");
            ended = Some(f);
        }
    }
    let f = ended.expect("the abandoned session was not ended");
    let data = &f.payload["data"];
    assert_eq!(data["record"]["id"], json!(abandoned[0]));
    assert_eq!(data["record"]["is_active"], json!(false));
    assert_eq!(data["old_record"]["is_active"], json!(true));
    assert_eq!(state(&db, &held[0]).await, (true, None));
    assert!(!state(&db, &abandoned[0]).await.0);
    relay.stop().await;
}

#[tokio::test]
async fn serve_cleanup_from_the_environment() {
    let db = TestDb::new().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("PGRELAY_CLEANUP", "true")
        .env("PGRELAY_CLEANUP_INTERVAL", "200ms")
        .env("PGRELAY_STALE_AFTER", "1s")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relay");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = stderr.next_line().await {
            if l.contains("session cleanup running") {
                return;
            }
        }
        panic!("no session cleanup in serve's log");
    })
    .await
    .expect("cleanup started in time");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let client = db.client().await;
    let (user, _) = seed(&client).await;
    let id = holds(&client, &user, 1, 60.0).await.remove(0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while state(&client, &id).await.0 {
        assert!(tokio::time::Instant::now() < deadline, "never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn cleanup_waits_for_the_database_and_retries_a_failed_pass() {
    let db = TestDb::new().await;
    let pool = pgrelay::db::connect_pool(&db.url, 1).await.unwrap();
    pgrelay::db::migrate(&pool).await.unwrap();
    pgrelay::db::apply_triggers(&pool, None, "pgrelay")
        .await
        .unwrap();
    let client = db.client().await;
    let (user, _) = seed(&client).await;

    // Started before its database is reachable: it waits.
    let proxy = Proxy::start(pg_addr()).await;
    proxy.cut();
    let p = CleanupProcess::start(
        &proxy.url_for(&db),
        &["--interval", "200ms", "--stale-after", "1s"],
    );
    p.wait_for_line("database not reachable yet").await;
    proxy.restore();
    p.wait_for_line("session cleanup running").await;

    // A pass that fails is logged with its code; the next deadline tries again.
    proxy.cut();
    p.wait_for_line("CleanupFailed").await;
    let id = holds(&client, &user, 1, 60.0).await.remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(state(&client, &id).await.0, "ended while cut off");
    proxy.restore();
    let deadline = tokio::time::Instant::now() + WAIT;
    while state(&client, &id).await.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ended after the database came back:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = p.stop().await;
    assert_eq!(ended_in(&log), 1, "{log}");
}

fn pgrelay(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgrelay")
}

fn one_error_line(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{err}");
    assert!(lines[0].starts_with("pgrelay: error: "), "{err}");
    lines[0].to_owned()
}

#[test]
fn cleanup_help_lists_its_environment_and_rejects_bad_values() {
    let out = pgrelay(&["cleanup", "--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--interval",
        "--stale-after",
        "--retention",
        "PGRELAY_CLEANUP_INTERVAL",
        "PGRELAY_STALE_AFTER",
        "PGRELAY_RETENTION",
        "DATABASE_URL",
        "[default: 5s]",
        "[default: 10s]",
    ] {
        assert!(text.contains(word), "{word} missing:\n{text}");
    }
    let out = pgrelay(&["serve", "--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["--cleanup", "PGRELAY_CLEANUP", "PGRELAY_STALE_AFTER"] {
        assert!(text.contains(word), "{word} missing:\n{text}");
    }
    let out = pgrelay(&["--help"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cleanup"));

    let out = pgrelay(&["cleanup", "--interval", "soon"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--interval") && err.contains("invalid duration \"soon\""),
        "{err}"
    );
    let out = pgrelay(&["cleanup"], &[("PGRELAY_STALE_AFTER", "0s")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be more than 0"), "{err}");
}

#[tokio::test]
async fn cleanup_without_the_schema_says_so_in_one_line() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let out = tokio::task::spawn_blocking(move || pgrelay(&["cleanup"], &[("DATABASE_URL", &url)]))
        .await
        .unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("schema is not set up")
            && line.contains(&db.name)
            && line.contains("public.button_holds")
            && line.contains("pgrelay migrate"),
        "{line}"
    );
    let out = tokio::task::spawn_blocking(|| {
        pgrelay(
            &["cleanup"],
            &[
                ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres"),
                ("PGRELAY_STARTUP_TIMEOUT", "0s"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        one_error_line(&out).contains("cannot connect to PostgreSQL at 127.0.0.1:1/postgres"),
        "{out:?}"
    );
}
