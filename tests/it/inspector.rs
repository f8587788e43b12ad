//! The inspector page at `/`: served by the relay itself, self-contained, and speaking the
//! protocol the relay serves.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A GET returning (status line, headers lowercased, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8(buf).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn root_serves_the_inspector() {
    let relay = start_relay().await;
    let (status, headers, body) = get(relay.addr, "/").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/html; charset=utf-8"),
        "{headers}"
    );
    // The controls and panels the page is built from.
    for id in [
        "id=\"ws-url\"",
        "id=\"apikey\"",
        "id=\"connect\"",
        "id=\"channel-name\"",
        "id=\"bindings\"",
        "id=\"add-binding\"",
        "id=\"join\"",
        "id=\"channels\"",
        "id=\"figures\"",
        "id=\"log\"",
    ] {
        assert!(body.contains(id), "{id} missing from the page");
    }
    // What it speaks and polls.
    for needle in [
        "new WebSocket(",
        "\"vsn\", \"2.0.0\"",
        "/realtime/v1/websocket",
        "\"phx_join\"",
        "\"heartbeat\"",
        "HEARTBEAT_MS = 25000",
        "postgres_changes",
        "/metrics",
        "METRICS_MS = 2000",
        "pgrelay_pg_notification_queue_usage",
        "pgrelay_commit_to_send_seconds_count",
    ] {
        assert!(body.contains(needle), "{needle} missing from the page");
    }
    // Self-contained: nothing loaded from elsewhere (the relay may run with no network).
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "<link "] {
        assert!(!body.contains(external), "external resource: {external}");
    }
    // Every figure the page reads exists in /metrics.
    let (_, metrics) = http_get(relay.addr, "/metrics").await;
    let mut rest = body.as_str();
    while let Some(at) = rest.find("pgrelay_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        rest = &rest[at + name.len()..];
        assert!(
            metrics.lines().any(|l| l.starts_with(&name)),
            "the page reads {name}, which /metrics lacks"
        );
    }
    // Only `/` is the page: other unknown paths are still 404.
    let (status, _, _) = get(relay.addr, "/inspector/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    relay.stop().await;
}

/// The page's script parses (when Node is installed, as the supabase-js suite needs it).
#[test]
fn inspector_script_parses() {
    let html = include_str!("../../static/inspector.html");
    let start = html.find("<script>").expect("<script>") + "<script>".len();
    let end = html.rfind("</script>").expect("</script>");
    let script = &html[start..end];
    let path = std::env::temp_dir().join(format!("pgrelay-inspector-{}.js", std::process::id()));
    std::fs::write(&path, script).expect("write script");
    let out = std::process::Command::new("node")
        .arg("--check")
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    match out {
        Ok(out) => assert!(
            out.status.success(),
            "inspector script: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("node not installed: inspector script not syntax-checked");
        }
        Err(e) => panic!("node: {e}"),
    }
}

/// A GET on Chromium's DevTools HTTP endpoint, which keeps the connection open: the body is
/// read by its Content-Length.
async fn devtools_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("DevTools answers in time")
            .expect("read");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len || n == 0 {
                return body.to_owned();
            }
        }
        if n == 0 {
            return String::new();
        }
    }
}

/// Chromium's profile directory, removed however the test ends.
#[derive(Debug)]
struct ProfileDir(std::path::PathBuf);

impl Drop for ProfileDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a Chromium is installed, if any.
fn chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// The page in a real browser: it connects, joins with a binding, and shows a change and the
/// relay's figures. Chromium runs headless and is watched over the DevTools protocol (with
/// tokio-tungstenite, already here) until the page shows what it should. Runs where Chromium
/// is installed (`apt-get install chromium`); elsewhere it says so and checks nothing more
/// than the tests above.
#[tokio::test(flavor = "multi_thread")]
async fn inspector_in_headless_chromium() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncBufReadExt;
    use tokio_tungstenite::tungstenite::Message;

    let Some(chromium) = chromium() else {
        eprintln!("chromium not installed: the inspector was not driven in a browser");
        return;
    };
    let relay = start_relay().await;
    let db = relay.db().await;
    // Rows keep coming while the page loads, connects and joins.
    let writer = tokio::spawn(async move {
        for i in 0.. {
            let name = format!("chromium-{i}");
            db.execute("INSERT INTO profiles (username) VALUES ($1)", &[&name])
                .await
                .expect("insert");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let url = format!(
        "http://{}/?autoconnect=1&channel=browser&event=INSERT&table=profiles",
        relay.addr
    );
    let profile =
        ProfileDir(std::env::temp_dir().join(format!("pgrelay-chromium-{}", std::process::id())));
    let mut browser = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");

    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
    let mut stderr = tokio::io::BufReader::new(browser.stderr.take().expect("stderr")).lines();
    let devtools: std::net::SocketAddr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                return rest
                    .split('/')
                    .next()
                    .expect("host:port")
                    .parse()
                    .expect("addr");
            }
        }
        panic!("chromium exited before opening DevTools");
    })
    .await
    .expect("chromium starts in time");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    // The page's own DevTools socket.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let page_ws = loop {
        let body = devtools_get(devtools, "/json/list").await;
        let targets: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let page = targets.as_array().into_iter().flatten().find(|t| {
            t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.contains("autoconnect"))
        });
        if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
            break ws.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no page target: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut cdp, _) = tokio_tungstenite::connect_async(page_ws.as_str())
        .await
        .expect("DevTools socket");

    // Poll what the page shows until it has everything, or time runs out.
    let probe = r##"JSON.stringify({
        status: document.getElementById("status").textContent,
        channel: (document.querySelector("#channels .pill") || {}).textContent || "",
        system: [...document.querySelectorAll(".entry.system")].map(e => e.textContent).join(" | "),
        inserts: [...document.querySelectorAll(".entry.INSERT")].map(e => e.textContent),
        figures: document.querySelectorAll("#figures-body tr[data-metric]").length,
        connections: (document.querySelector("tr[data-metric=pgrelay_connections] .v") || {}).textContent || ""
    })"##;
    let mut last = serde_json::Value::Null;
    let mut id = 0;
    let shown = loop {
        id += 1;
        let call = serde_json::json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": probe, "returnByValue": true}});
        cdp.send(Message::text(call.to_string()))
            .await
            .expect("cdp send");
        while let Some(Ok(msg)) = cdp.next().await {
            let Message::Text(t) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(&t).expect("cdp json");
            if v["id"] == id {
                let text = v["result"]["result"]["value"].as_str().unwrap_or("null");
                last = serde_json::from_str(text).unwrap_or_default();
                break;
            }
        }
        let done = last["status"] == "connected"
            && last["channel"] == "joined"
            && last["system"]
                .as_str()
                .is_some_and(|s| s.contains("Subscribed to PostgreSQL"))
            && last["inserts"].as_array().is_some_and(|a| {
                a.iter().any(|e| {
                    e.as_str()
                        .is_some_and(|e| e.contains("\"username\": \"chromium-"))
                })
            })
            && last["figures"].as_u64().unwrap_or(0) > 5
            && last["connections"] == "1";
        if done {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    writer.abort();
    drop(cdp);
    let _ = browser.kill().await;
    drop(profile);
    assert!(
        shown,
        "the page never showed a live change; last seen: {last:#}"
    );
    relay.stop().await;
}
