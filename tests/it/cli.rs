//! The `pgrelay` binary: help texts, and startup failures that print one clear line.

use std::process::{Command, Output};

fn pgrelay(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgrelay"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgrelay")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exactly one line, prefixed, naming the cause; no panic, no backtrace.
fn assert_one_clear_line(out: &Output, needle: &str) {
    assert!(!out.status.success(), "should fail");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{err}");
    assert!(lines[0].starts_with("pgrelay: error: "), "{err}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn help_lists_commands_and_environment_variables() {
    let out = pgrelay(&["--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "migrate", "triggers", "uninstall", "DATABASE_URL"] {
        assert!(text.contains(word), "{word} missing from --help:\n{text}");
    }
    let out = pgrelay(&["serve", "--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for var in [
        "PGRELAY_LISTEN",
        "PGRELAY_CHANNEL",
        "PGRELAY_SOCKET_QUEUE",
        "PGRELAY_MAX_CHANNELS_PER_CLIENT",
        "127.0.0.1:4000",
    ] {
        assert!(
            text.contains(var),
            "{var} missing from serve --help:\n{text}"
        );
    }
    let out = pgrelay(&["triggers", "apply", "--help"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("PGRELAY_TRIGGERS_DIR"));
}

#[test]
fn bad_database_url() {
    let out = pgrelay(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("DATABASE_URL", "not a url")],
    );
    assert_one_clear_line(&out, "invalid DATABASE_URL");
}

/// A Redis URL that is not one stops the start with one line naming the setting, and the
/// password of a URL is never printed.
#[test]
fn bad_redis_url() {
    let db = crate::support::admin_url();
    let out = pgrelay(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("DATABASE_URL", db.as_str()),
            ("PGRELAY_REDIS_URL", "http://user:sekrit@example.invalid"),
        ],
    );
    assert_one_clear_line(&out, "PGRELAY_REDIS_URL");
    assert!(!stderr(&out).contains("sekrit"), "{}", stderr(&out));
}

#[test]
fn unreachable_database() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    // An explicit DATABASE_URL waits for the database: give it a bound.
    let out = pgrelay(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres"),
            ("PGRELAY_STARTUP_TIMEOUT", "0s"),
        ],
    );
    assert_one_clear_line(&out, "cannot connect to PostgreSQL at 127.0.0.1:1/postgres");
    let out = pgrelay(
        &["migrate"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres")],
    );
    assert_one_clear_line(&out, "cannot connect to PostgreSQL at 127.0.0.1:1/postgres");
}

#[test]
fn unknown_database_is_not_retried() {
    let out = pgrelay(
        &["serve", "--listen", "127.0.0.1:0"],
        &[(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/no_such_db_pgrelay",
        )],
    );
    assert_one_clear_line(&out, "does not exist");
}

#[test]
fn port_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = pgrelay(&["serve", "--listen", &addr], &[]);
    assert_one_clear_line(&out, &format!("cannot listen on {addr}"));
}

#[test]
fn bad_configuration_values_are_rejected_by_name() {
    let out = pgrelay(&["serve", "--channel", "Bad;Name"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid channel"), "{}", stderr(&out));
    let out = pgrelay(&["serve"], &[("PGRELAY_HEARTBEAT_TIMEOUT", "soon")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid duration"),
        "{}",
        stderr(&out)
    );
}
