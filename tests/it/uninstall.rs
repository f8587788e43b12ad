//! `pgrelay uninstall` against a real database: after it no pgrelay trigger, schema, function
//! or migration history remains, and the app's tables keep their rows (unless
//! `--drop-app-tables`); someone else's object depending on pgrelay stops it with nothing
//! removed.

use std::process::{Command, Output};

use serde_json::json;

use crate::support::*;

fn pgrelay(args: &[&str], db: &TestDb) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "error")
        .output()
        .expect("run pgrelay")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A database with pgrelay installed as an operator installs it (`migrate`, `triggers
/// apply`), and app rows in it.
async fn installed() -> TestDb {
    let test_db = TestDb::new().await;
    for args in [&["migrate"][..], &["triggers", "apply"]] {
        let out = tokio::task::block_in_place(|| pgrelay(args, &test_db));
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let db = test_db.client().await;
    let (user, poll) = seed(&db).await;
    db.execute(
        "INSERT INTO user_votes (poll_id, user_id, option_index, hold_ms) \
         VALUES ($1, $2::text::uuid, 0, 3000)",
        &[&poll, &user],
    )
    .await
    .unwrap();
    test_db
}

/// (profiles, polls, user_votes) rows.
async fn rows(db: &tokio_postgres::Client) -> (i64, i64, i64) {
    (
        count(db, "SELECT count(*) FROM profiles").await,
        count(db, "SELECT count(*) FROM polls").await,
        count(db, "SELECT count(*) FROM user_votes").await,
    )
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// What pgrelay leaves behind: (schemas, functions, triggers, history tables).
async fn pgrelay_leftovers(db: &tokio_postgres::Client) -> (i64, i64, i64, i64) {
    (
        count(
            db,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrelay'",
        )
        .await,
        count(
            db,
            "SELECT count(*) FROM pg_proc WHERE proname IN ('notify_change', 'channel')",
        )
        .await,
        count(
            db,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgrelay%' AND NOT tgisinternal",
        )
        .await,
        count(
            db,
            "SELECT count(*) FROM pg_class WHERE relname = 'refinery_schema_history'",
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_removes_pgrelay_and_keeps_the_app() {
    let test_db = installed().await;
    let db = test_db.client().await;
    let before = pgrelay_leftovers(&db).await;
    assert_eq!((before.0, before.3), (1, 1), "installed: {before:?}");
    assert!(before.2 >= 4, "the published tables' triggers: {before:?}");
    let app_rows = rows(&db).await;
    assert_eq!(app_rows, (1, 1, 1));
    drop(db);

    let out = tokio::task::block_in_place(|| pgrelay(&["uninstall"], &test_db));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("dropped trigger pgrelay_notify on public.polls"),
        "{text}"
    );
    assert!(text.contains("dropped schema pgrelay"), "{text}");
    assert!(text.contains("dropped refinery_schema_history"), "{text}");
    assert!(text.contains("kept the app's tables"), "{text}");

    let db = test_db.client().await;
    assert_eq!(pgrelay_leftovers(&db).await, (0, 0, 0, 0));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'pgrelay'"
        )
        .await,
        0
    );
    // The app is intact: its rows, its own triggers and functions, and writes still work.
    assert_eq!(rows(&db).await, app_rows);
    assert!(
        count(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'stats_%'"
        )
        .await
            > 0
    );
    assert_eq!(count(&db, "SELECT polls FROM app_stats").await, 1);
    db.execute("INSERT INTO profiles (username) VALUES ('after')", &[])
        .await
        .expect("writes work without the triggers");
    crate::api::poll(&db, "later", json!(["a", "b"]), "active").await;

    // Again: nothing to do, and it says so.
    let out = tokio::task::block_in_place(|| pgrelay(&["uninstall"], &test_db));
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("pgrelay was not installed"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_with_the_app_tables_leaves_a_clean_database() {
    let test_db = installed().await;
    let out =
        tokio::task::block_in_place(|| pgrelay(&["uninstall", "--drop-app-tables"], &test_db));
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("public.polls"), "{}", stdout(&out));
    let db = test_db.client().await;
    assert_eq!(pgrelay_leftovers(&db).await, (0, 0, 0, 0));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public'"
        )
        .await,
        0,
        "no table, view, index or sequence is left in public"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'public'"
        )
        .await,
        0,
        "no function is left in public"
    );
    drop(db);
    // A clean database: pgrelay installs into it again.
    let out = tokio::task::block_in_place(|| pgrelay(&["migrate"], &test_db));
    assert!(out.status.success(), "{out:?}");
}

/// Someone else's view on the change log: uninstall stops, names it, and removes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn uninstall_removes_nothing_when_another_object_depends_on_pgrelay() {
    let test_db = installed().await;
    let db = test_db.client().await;
    db.batch_execute("CREATE VIEW public.recent_changes AS SELECT seq FROM pgrelay.change_log")
        .await
        .unwrap();
    let before = pgrelay_leftovers(&db).await;
    let out = tokio::task::block_in_place(|| pgrelay(&["uninstall"], &test_db));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("pgrelay: error: uninstall failed, nothing was removed"),
        "{err}"
    );
    assert!(err.contains("recent_changes"), "{err}");
    assert_eq!(pgrelay_leftovers(&db).await, before);
}
