//! The relay process's lifecycle: waiting for a database that is not up yet, and an orderly
//! stop on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

#[tokio::test]
async fn started_before_the_database_it_waits_then_serves() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(pg_addr()).await;
    proxy.cut();
    let mut config = pgrelay::Config::new(proxy.url_for(&db));
    config.startup_timeout = None; // wait for ever
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(pgrelay::run(config, listener, async move {
        let _ = stopped.await;
    }));

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(http_get(addr, "/health").await, (200, "ok".into()));
    assert_eq!(
        http_get(addr, "/ready").await,
        (503, "waiting for the database".into())
    );
    let url = format!("ws://{addr}/realtime/v1/websocket?vsn=2.0.0");
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503 while starting, got {other:?}"),
    }

    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while http_get(addr, "/ready").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ws = Ws::connect(&url, "2.0.0").await;
    ws.subscribe(
        "realtime:late",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    db.client()
        .await
        .execute("INSERT INTO profiles (username) VALUES ('late')", &[])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["username"], "late");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Spawn the real binary against `db`; returns the child and its address.
pub(crate) async fn spawn_relay(
    db: &TestDb,
    listen: &str,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let (child, addr, _) = spawn_relay_collecting(db, listen, |_| false).await;
    (child, addr)
}

/// [`spawn_relay`], also keeping the relay's log lines that `keep` picks.
pub(crate) async fn spawn_relay_collecting(
    db: &TestDb,
    listen: &str,
    keep: fn(&str) -> bool,
) -> (tokio::process::Child, std::net::SocketAddr, RelayLog) {
    spawn_relay_env(
        listen,
        &[("DATABASE_URL", db.url.as_str())],
        keep,
        Duration::from_secs(30),
    )
    .await
}

/// The relay's log lines a test kept.
pub(crate) type RelayLog = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The real binary serving on `listen` with `env`; returns once `/ready` answers 200 (within
/// `ready_within`), with the log lines `keep` picks, from the start on. Its stderr is drained
/// for its whole life, so it never blocks on a full pipe.
pub(crate) async fn spawn_relay_env(
    listen: &str,
    env: &[(&str, &str)],
    keep: fn(&str) -> bool,
    ready_within: Duration,
) -> (tokio::process::Child, std::net::SocketAddr, RelayLog) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(["serve", "--listen", listen])
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relay");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let kept: RelayLog = Default::default();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if keep(&line) {
                kept.lock().unwrap().push(line.clone());
            }
            if let Some(rest) = line.split("pgrelay listening addr=").nth(1) {
                return rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
        None
    })
    .await
    .expect("relay started in time")
    .expect("listening line");
    let sink = kept.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if keep(&line) {
                sink.lock().unwrap().push(line);
            }
        }
    });
    let deadline = tokio::time::Instant::now() + ready_within;
    while http_get(addr, "/ready").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never ready; kept log: {:#?}",
            kept.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr, kept)
}

pub(crate) fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_flushes_closes_with_1001_and_exits_zero() {
    let db = TestDb::new().await;
    let (mut child, addr) = spawn_relay(&db, "127.0.0.1:0").await;
    let url = format!("ws://{addr}/realtime/v1/websocket?vsn=2.0.0");
    let mut ws = Ws::connect(&url, "2.0.0").await;
    ws.subscribe(
        "realtime:bye",
        json!([{"event":"INSERT","schema":"public","table":"profiles"}]),
    )
    .await;
    let client = db.client().await;
    client
        .execute("INSERT INTO profiles (username) VALUES ('before')", &[])
        .await
        .unwrap();
    let f = ws.recv_event("postgres_changes").await;
    assert_eq!(f.payload["data"]["record"]["username"], "before");

    signal(&child, "-TERM");
    let mut close = None;
    while let Some(msg) = ws.next_raw(Duration::from_secs(10)).await {
        if let tokio_tungstenite::tungstenite::Message::Close(c) = msg {
            close = c;
            break;
        }
    }
    let close = close.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "server shutting down");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // It stopped accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A client that goes away mid-stream is not an error of the relay's: nothing is logged at
/// ERROR for it (warp reports such connections as errors; the relay silences them).
#[tokio::test]
async fn a_client_leaving_mid_stream_logs_no_error() {
    let db = TestDb::new().await;
    let (mut child, addr, errors) =
        spawn_relay_collecting(&db, "127.0.0.1:0", |l| l.contains("ERROR")).await;
    // Three event streams and a half-sent request, each dropped by the client.
    for _ in 0..3 {
        let sse = Sse::connect(addr, "/api/v1/changes?schema=public&table=profiles", None).await;
        assert_eq!(sse.status, 200);
        drop(sse);
    }
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /api/v1/profiles HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(&child, "-TERM");
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "errors logged: {errors:#?}");
}
