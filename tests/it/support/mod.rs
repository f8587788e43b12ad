//! Test support: a fresh database per test, the relay started in-process on port 0, and a
//! WebSocket client speaking the Phoenix protocol.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pgrelay::Config;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The server tests run against; each test creates (and drops) its own database there.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// How long a test waits for an expected frame before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A database created for one test and dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub async fn new() -> TestDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "pgrelay_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let mut cfg: tokio_postgres::Config = admin_url().parse().expect("admin url");
        cfg.dbname(&name);
        let url = config_url(&cfg, &name);
        TestDb { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

fn config_url(cfg: &tokio_postgres::Config, db: &str) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let pass = cfg
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    format!("postgres://{user}{pass}@{host}:{port}/{db}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let admin = connect(&admin_url()).await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A relay running in this process against its own database.
#[derive(Debug)]
pub struct Relay {
    pub addr: std::net::SocketAddr,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), pgrelay::http::server::ServerError>>>,
}

pub async fn start_relay() -> Relay {
    start_relay_with(|_| {}).await
}

pub async fn start_relay_with(adjust: impl FnOnce(&mut Config)) -> Relay {
    init_tracing();
    let db = TestDb::new().await;
    let mut config = Config::new(db.url.clone());
    config.pool_size = 4;
    adjust(&mut config);
    let relay = start_on(db, config).await;
    relay
}

/// Start a relay on an existing database.
pub async fn start_on(db: TestDb, config: Config) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(pgrelay::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let relay = Relay {
        addr,
        db,
        stop: Some(stop),
        task: Some(task),
    };
    relay.wait_ready().await;
    relay
}

impl Relay {
    async fn wait_ready(&self) {
        // Generous: the suite starts ~100 relays, each migrating its own database, and a
        // shared 2-core machine can take a while; a relay that never gets ready still fails.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(mut s) = TcpStream::connect(self.addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s
                    .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
                if buf.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "relay did not become ready within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, vsn: &str) -> String {
        format!(
            "ws://{}/realtime/v1/websocket?apikey=test&vsn={vsn}",
            self.addr
        )
    }

    pub async fn ws(&self, vsn: &str) -> Ws {
        Ws::connect(&self.url(vsn), vsn).await
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        self.db.client().await
    }

    /// Stop the relay and wait for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("relay stops in time");
            r.expect("relay task").expect("relay result");
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// One server frame, whichever serializer carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Value,
    pub msg_ref: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// A Phoenix WebSocket client for tests.
#[derive(Debug)]
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub vsn: String,
    next_ref: u64,
}

impl Ws {
    pub async fn connect(url: &str, vsn: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("ws connect {url}: {e}"));
        Ws {
            stream,
            vsn: vsn.into(),
            next_ref: 0,
        }
    }

    pub fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.stream
            .send(Message::text(text.into()))
            .await
            .expect("ws send");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::binary(bytes))
            .await
            .expect("ws send");
    }

    /// Send a message in this socket's serializer.
    pub async fn push(
        &mut self,
        join_ref: Option<&str>,
        msg_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = if self.vsn == "2.0.0" {
            json!([join_ref, msg_ref, topic, event, payload]).to_string()
        } else {
            json!({"topic": topic, "event": event, "payload": payload, "ref": msg_ref, "join_ref": join_ref})
                .to_string()
        };
        self.send_text(text).await;
    }

    /// Join `topic` with these `postgres_changes` bindings; returns (join_ref, reply payload).
    pub async fn join(&mut self, topic: &str, bindings: Value) -> (String, Value) {
        self.join_with(
            topic,
            json!({"config": {"broadcast": {"ack": false, "self": false},
            "presence": {"key": "", "enabled": false},
            "postgres_changes": bindings, "private": false}}),
        )
        .await
    }

    pub async fn join_with(&mut self, topic: &str, payload: Value) -> (String, Value) {
        let r = self.next_ref();
        self.push(Some(&r), &r, topic, "phx_join", payload).await;
        let reply = self.recv().await;
        assert_eq!(reply.event, "phx_reply", "{reply:?}");
        assert_eq!(reply.topic, topic);
        assert_eq!(reply.msg_ref, json!(r));
        (r, reply.payload)
    }

    /// Join and wait for the `system` message; panics unless it says "Subscribed".
    pub async fn subscribe(&mut self, topic: &str, bindings: Value) -> Vec<u32> {
        let (_, reply) = self.join(topic, bindings).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let sys = self.recv().await;
        assert_eq!(sys.event, "system", "{sys:?}");
        assert_eq!(sys.payload["status"], "ok", "{sys:?}");
        assert_eq!(sys.payload["message"], "Subscribed to PostgreSQL");
        reply["response"]["postgres_changes"]
            .as_array()
            .expect("bindings")
            .iter()
            .map(|b| b["id"].as_u64().expect("id") as u32)
            .collect()
    }

    /// The next frame, or panic after `WAIT`.
    pub async fn recv(&mut self) -> Frame {
        match self.try_recv(WAIT).await {
            Some(f) => f,
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next text frame within `within`, or None.
    pub async fn try_recv(&mut self, within: Duration) -> Option<Frame> {
        loop {
            let msg = tokio::time::timeout(within, self.stream.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(parse_frame(&self.vsn, &t)),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Next frame that is not a `system`/`presence_state` housekeeping frame.
    pub async fn recv_event(&mut self, event: &str) -> Frame {
        loop {
            let f = self.recv().await;
            if f.event == event {
                return f;
            }
            assert!(
                f.event == "system" || f.event == "presence_state",
                "expected {event}, got {f:?}"
            );
        }
    }

    /// Assert that nothing arrives for `dur`.
    pub async fn expect_silence(&mut self, dur: Duration) {
        if let Some(f) = self.try_recv(dur).await {
            panic!("expected silence, got {f:?}");
        }
    }

    /// Raw next message (text, binary, close), for close-code assertions.
    pub async fn next_raw(&mut self, within: Duration) -> Option<Message> {
        tokio::time::timeout(within, self.stream.next())
            .await
            .ok()?
            .and_then(Result::ok)
    }
}

pub fn parse_frame(vsn: &str, text: &str) -> Frame {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("bad frame {text}: {e}"));
    if vsn == "2.0.0" {
        let a = v
            .as_array()
            .unwrap_or_else(|| panic!("v2 frame not an array: {text}"));
        assert_eq!(a.len(), 5, "{text}");
        Frame {
            join_ref: a[0].clone(),
            msg_ref: a[1].clone(),
            topic: a[2].as_str().expect("topic").into(),
            event: a[3].as_str().expect("event").into(),
            payload: a[4].clone(),
        }
    } else {
        Frame {
            join_ref: v.get("join_ref").cloned().unwrap_or(Value::Null),
            msg_ref: v["ref"].clone(),
            topic: v["topic"].as_str().expect("topic").into(),
            event: v["event"].as_str().expect("event").into(),
            payload: v["payload"].clone(),
        }
    }
}

/// A profile and an active poll, for tests that need rows to point at.
pub async fn seed(db: &tokio_postgres::Client) -> (String, i64) {
    let row = db
        .query_one(
            "INSERT INTO profiles (username) VALUES ('alice') RETURNING id::text",
            &[],
        )
        .await
        .expect("profile");
    let user: String = row.get(0);
    let row = db
        .query_one(
            "INSERT INTO polls (question, options, status, created_by) \
             VALUES ('Tea or coffee?', '[\"tea\",\"coffee\"]', 'active', $1::text::uuid) RETURNING id",
            &[&user],
        )
        .await
        .expect("poll");
    (user, row.get(0))
}

/// A plain HTTP/1.1 GET on the relay; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled metric in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{body}"))
}

/// A TCP proxy in front of PostgreSQL that a test can cut: `cut()` drops every proxied
/// connection and refuses new ones until `restore()`.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    up: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (up, _) = tokio::sync::watch::channel(true);
        let up = std::sync::Arc::new(up);
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*state.borrow() {
                    drop(inbound); // refused while cut
                    continue;
                }
                let mut down = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { port, up }
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, db: &TestDb) -> String {
        let mut cfg: tokio_postgres::Config = db.url.parse().expect("url");
        cfg.host("127.0.0.1").port(self.port);
        let user = cfg.get_user().unwrap_or("postgres").to_owned();
        format!("postgres://{user}@127.0.0.1:{}/{}", self.port, db.name)
    }
}

/// Host and port of the test PostgreSQL.
pub fn pg_addr() -> std::net::SocketAddr {
    let cfg: tokio_postgres::Config = admin_url().parse().expect("url");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".into()
    } else {
        host
    };
    format!("{host}:{port}").parse().expect("pg addr")
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// A minimal `EventSource`: HTTP/1.0 (so the body is close-delimited, not chunked), keeps the
/// last event id like a browser does (id-only messages move it too).
#[derive(Debug)]
pub struct Sse {
    lines: tokio::io::Lines<tokio::io::BufReader<TcpStream>>,
    pub status: u16,
    pub last_id: Option<String>,
}

impl Sse {
    pub async fn connect(addr: std::net::SocketAddr, path: &str, last_id: Option<&str>) -> Sse {
        Self::try_connect(addr, path, last_id)
            .await
            .expect("server-sent events connection")
    }

    pub async fn try_connect(
        addr: std::net::SocketAddr,
        path: &str,
        last_id: Option<&str>,
    ) -> std::io::Result<Sse> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await?;
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut lines = tokio::io::BufReader::new(s).lines();
        let bad = |what: &str| std::io::Error::other(what.to_owned());
        let status_line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .map_err(|_| bad("no status line in time"))??
            .ok_or_else(|| bad("closed before the status line"))?;
        let status = status_line
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        // Skip headers.
        while let Ok(Some(l)) = lines.next_line().await {
            if l.is_empty() {
                break;
            }
        }
        Ok(Sse {
            lines,
            status,
            last_id: last_id.map(str::to_owned),
        })
    }

    /// The rest of the body (for error responses).
    pub async fn body(mut self) -> String {
        let mut out = String::new();
        while let Ok(Ok(Some(l))) = tokio::time::timeout(WAIT, self.lines.next_line()).await {
            out.push_str(&l);
        }
        out
    }

    /// The next event with data, within `within`; None on timeout or end of stream.
    /// Wait (up to 5 s) until the stream has a position: its first id-only message.
    pub async fn wait_for_position(&mut self) {
        for _ in 0..100 {
            if self.last_id.is_some() {
                return;
            }
            let _ = self.next(Duration::from_millis(50)).await;
        }
    }

    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        match self.poll(within).await {
            SseNext::Event(e) => Some(e),
            _ => None,
        }
    }

    /// The next event with data, or why there is none.
    pub async fn poll(&mut self, within: Duration) -> SseNext {
        let deadline = tokio::time::Instant::now() + within;
        let (mut id, mut event, mut data): (Option<String>, Option<String>, Vec<String>) =
            (None, None, Vec::new());
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Err(_) => return SseNext::Timeout,
                Ok(Ok(Some(l))) => l,
                Ok(_) => return SseNext::Closed,
            };
            if line.is_empty() {
                if let Some(i) = id.take() {
                    self.last_id = Some(i);
                }
                if !data.is_empty() {
                    return SseNext::Event(SseEvent {
                        id: self.last_id.clone(),
                        event: event.take(),
                        data: data.join("\n"),
                    });
                }
                event = None;
                continue;
            }
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim_start().to_owned());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim_start().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
            }
        }
    }
}

/// What [`Sse::poll`] found.
#[derive(Debug)]
pub enum SseNext {
    Event(SseEvent),
    Timeout,
    Closed,
}

/// A plain HTTP/1.1 POST; returns (status, body).
pub async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
