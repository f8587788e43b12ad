//! The binary started as an operator starts it: with no configuration at all (a private
//! PostgreSQL under `.pgrelay/`), and with `--log-format json`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// How long the binary may take to start (initdb included) or to stop.
const PROCESS_WAIT: Duration = Duration::from_secs(90);

/// A `pgrelay` process whose stderr is read line by line.
#[derive(Debug)]
struct Pgrelay {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Pgrelay {
    fn start(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Pgrelay {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgrelay"));
        cmd.args(args)
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env_remove("PGRELAY_LOG_FORMAT")
            .env("PGRELAY_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn pgrelay");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Pgrelay {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line (from the start) that satisfies `pred`.
    fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} line within {PROCESS_WAIT:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then every remaining stderr line once the process exits.
    fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + PROCESS_WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "pgrelay did not stop in time");
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Pgrelay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// The address in the "pgrelay listening" line (text: `addr=…`; JSON: `fields.addr`).
fn listening_addr(line: &str) -> std::net::SocketAddr {
    let addr = match serde_json::from_str::<Value>(line) {
        Ok(v) => v["fields"]["addr"].as_str().expect("addr field").to_owned(),
        Err(_) => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("addr=")
            .to_owned(),
    };
    addr.parse().expect("socket address")
}

/// A directory of its own under the system temp dir, removed on drop, together with any
/// private PostgreSQL a failed test left running in it.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("pgrelay-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A server still running here (the test failed before stopping the relay): SIGINT is
        // PostgreSQL's fast shutdown.
        let pid_file = self.0.join(".pgrelay/data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            for _ in 0..100 {
                if !pid_file.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + PROCESS_WAIT;
    while http_get(addr, "/ready").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay at {addr} never ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pgrelay` with no configuration and nothing on the default address starts a private
/// PostgreSQL under `.pgrelay/` in its working directory, serves changes from it, and stops
/// it on SIGTERM. Without PostgreSQL's server programs it says, in one line, how to fix it.
#[tokio::test(flavor = "multi_thread")]
async fn zero_config_starts_a_private_postgres() {
    let dir = TempDir::new("zero-config");
    let probe = format!("127.0.0.1:{}", dead_port());
    let env = [
        ("PGRELAY_ZERO_CONFIG_PROBE", probe.as_str()),
        ("RUST_LOG", "info"),
    ];
    if pgrelay::db::pginstance::Binaries::find().is_none() {
        // Nothing to start: the one clear line instead.
        let out = Command::new(env!("CARGO_BIN_EXE_pgrelay"))
            .current_dir(&dir.0)
            .env_remove("DATABASE_URL")
            .env("PGRELAY_LISTEN", "127.0.0.1:0")
            .envs(env)
            .output()
            .expect("run pgrelay");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().last().unwrap_or_default();
        assert!(
            line.starts_with("pgrelay: error: no PostgreSQL answers at"),
            "{err}"
        );
        assert!(line.contains("install PostgreSQL") && line.contains("DATABASE_URL"));
        return;
    }

    // No arguments at all: `cargo run --release`.
    let mut relay = Pgrelay::start(&[], &env, &dir.0);
    let private = relay.wait_line("private PostgreSQL", |l| l.contains("using a private one"));
    let data = dir.0.join(".pgrelay").canonicalize().expect(".pgrelay");
    assert!(
        private.contains(&format!("data={}", data.join("data").display())),
        "{private}"
    );
    assert!(
        private.contains(&format!("log={}", data.join("postgres.log").display())),
        "{private}"
    );
    let url = private
        .split_whitespace()
        .find_map(|w| w.strip_prefix("url="))
        .expect("url=")
        .to_owned();
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    // Not the maintenance database: one of pgrelay's own, created and named in the log.
    let own = relay.wait_line("own database", |l| {
        l.contains("using pgrelay's own database")
    });
    assert!(own.contains("created=true"), "{own}");
    let maintenance = url;
    let url = own
        .split_whitespace()
        .find_map(|w| w.strip_prefix("url="))
        .expect("url=")
        .to_owned();
    let server = maintenance
        .strip_suffix("/postgres")
        .expect("maintenance url");
    assert_eq!(url, format!("{server}/pgrelay"), "{own}");
    let addr = listening_addr(&relay.wait_line("listening", |l| l.contains("pgrelay listening")));
    wait_ready(addr).await;
    let schemas_in_maintenance: i64 = connect(&maintenance)
        .await
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrelay'",
            &[],
        )
        .await
        .expect("maintenance database")
        .get(0);
    assert_eq!(
        schemas_in_maintenance, 0,
        "pgrelay wrote into {maintenance}"
    );

    // The demo has active polls to vote on at once.
    let (status, body) = http_get(addr, "/api/v1/polls?status=active").await;
    assert_eq!(status, 200, "{body}");
    let polls: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        polls["polls"].as_array().map(Vec::len),
        Some(pgrelay::db::demo::DEMO_POLLS.len()),
        "{body}"
    );

    // It is a working relay on that database.
    let mut ws = Ws::connect(
        &format!("ws://{addr}/realtime/v1/websocket?apikey=x&vsn=2.0.0"),
        "2.0.0",
    )
    .await;
    ws.subscribe(
        "realtime:zero",
        json!([{"event": "INSERT", "schema": "public", "table": "profiles"}]),
    )
    .await;
    let db = connect(&url).await;
    db.execute("INSERT INTO profiles (username) VALUES ('zero')", &[])
        .await
        .expect("insert");
    let change = ws.recv_event("postgres_changes").await;
    assert_eq!(change.payload["data"]["record"]["username"], "zero");
    drop(db);
    drop(ws);

    let (status, lines) = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success(), "{status}:\n{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stopped the private PostgreSQL")),
        "{}",
        lines.join("\n")
    );
    assert!(
        !data.join("data/postmaster.pid").exists(),
        "the private PostgreSQL still runs"
    );
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .expect("port");
    assert!(
        !pgrelay::db::pginstance::answers(&format!("127.0.0.1:{port}"), Duration::from_secs(1))
            .await,
        "the private PostgreSQL still answers"
    );
}

/// `--log-format json`: every stderr line is one JSON object with a level, a target and a
/// message, and lines logged inside a socket carry the socket span's fields.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs() {
    let db = TestDb::new().await;
    let dir = TempDir::new("json-logs");
    let mut relay = Pgrelay::start(
        &["--log-format", "json", "serve"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("RUST_LOG", "info,pgrelay=debug"),
        ],
        &dir.0,
    );
    let addr = listening_addr(&relay.wait_line("listening", |l| l.contains("pgrelay listening")));
    wait_ready(addr).await;
    let mut ws = Ws::connect(
        &format!("ws://{addr}/realtime/v1/websocket?apikey=x&vsn=1.0.0"),
        "1.0.0",
    )
    .await;
    ws.subscribe(
        "realtime:logs",
        json!([{"event": "*", "schema": "public", "table": "profiles"}]),
    )
    .await;
    db.client()
        .await
        .execute("INSERT INTO profiles (username) VALUES ('logs')", &[])
        .await
        .expect("insert");
    ws.recv_event("postgres_changes").await;
    // A refused join logs (debug) inside its channel span.
    let (_, reply) = ws.join_with("nope", json!({})).await;
    assert_eq!(reply["status"], "error");
    drop(ws);

    // A database DATABASE_URL names is used as given and never seeded.
    let polls: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM polls", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(polls, 0, "demo polls seeded into a DATABASE_URL database");

    let (status, lines) = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success(), "{status}");
    assert!(lines.len() > 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("using the database DATABASE_URL names")
                && l.contains(&format!("/{}", db.name))),
        "{lines:#?}"
    );
    let mut in_socket_span = 0;
    let mut in_channel_span = 0;
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "no {key}: {line}");
        }
        assert!(v["fields"]["message"].is_string(), "no message: {line}");
        if v["span"]["name"] == "socket" {
            assert!(
                v["span"]["socket_id"].is_u64(),
                "socket span fields: {line}"
            );
            in_socket_span += 1;
        }
        if v["span"]["name"] == "channel" {
            // Inside the connection's socket span, naming the push's topic and event.
            assert_eq!(v["spans"][0]["name"], "socket", "{line}");
            assert_eq!(v["span"]["event"], "phx_join", "{line}");
            if v["span"]["topic"] == "nope" && v["fields"]["message"] == "join refused" {
                in_channel_span += 1;
            }
        }
    }
    assert_eq!(
        in_channel_span, 1,
        "the refused join was not logged inside its channel span:\n{lines:#?}"
    );
    assert!(
        in_socket_span > 0,
        "no line inside a socket span:\n{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("\"message\":\"stopped\"")),
        "{lines:#?}"
    );
}

/// Relays started together on a fresh database (two compose services, replicas behind a load
/// balancer) take turns to migrate and apply the triggers instead of racing on creating the
/// same objects; all of them become ready.
#[tokio::test(flavor = "multi_thread")]
async fn relays_starting_together_on_a_fresh_database_all_become_ready() {
    init_tracing();
    let db = TestDb::new().await;
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addrs.push(listener.local_addr().expect("addr"));
        let mut config = pgrelay::Config::new(db.url.clone());
        config.pool_size = 2;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        tasks.push(tokio::spawn(pgrelay::run(config, listener, async move {
            let _ = stopped.await;
        })));
    }
    for addr in &addrs {
        wait_ready(*addr).await;
    }
    let client = db.client().await;
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .expect("history")
        .get(0);
    let distinct: i64 = client
        .query_one(
            "SELECT count(DISTINCT version) FROM refinery_schema_history",
            &[],
        )
        .await
        .expect("history")
        .get(0);
    assert_eq!(applied, distinct, "each migration applied once");
    for stop in stops {
        let _ = stop.send(());
    }
    for task in tasks {
        let r = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("relay stops in time");
        r.expect("relay task").expect("relay result");
    }
}
