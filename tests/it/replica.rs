//! Changes from a hot standby (`PGRELAY_READ_URL`): a private primary and a standby made with
//! `pg_basebackup -R`, a real relay process writing to the one and reading from the other.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::api::{hold, request, vote};
use crate::support::*;

/// A primary and its streaming standby in a temporary directory; both are stopped
/// (`pg_ctl stop -m immediate`) and the directory removed when this is dropped, whatever the
/// test did.
struct Clusters {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    primary_port: u16,
    standby_port: u16,
}

impl Clusters {
    /// `None` when the PostgreSQL server programs are not installed.
    fn start() -> Option<Clusters> {
        let bins = pgrelay::db::pginstance::Binaries::find()?;
        // `initdb` on PATH may be a link into the server's own directory, which also holds
        // pg_basebackup.
        let initdb = std::fs::canonicalize(&bins.initdb).ok()?;
        let bin = initdb.parent()?.to_path_buf();
        if !bin.join("pg_basebackup").is_file() {
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("pgrelay-replica-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // initdb refuses root: as root the clusters belong to the `postgres` OS user.
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let clusters = Clusters {
            primary_port: free_port(),
            standby_port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        if as_postgres {
            clusters.run(Command::new("chown").args(["postgres"]).arg(&clusters.dir));
        }
        let primary = clusters.dir.join("primary");
        let standby = clusters.dir.join("standby");
        clusters.pg(
            "initdb",
            &[
                "-D",
                s(&primary),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        append(
            &primary.join("postgresql.conf"),
            &format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 wal_level = replica\nmax_wal_senders = 4\nfsync = off\n",
                clusters.primary_port,
                clusters.dir.display()
            ),
        );
        append(
            &primary.join("pg_hba.conf"),
            "host replication postgres 127.0.0.1/32 trust\n",
        );
        let log = clusters.dir.join("primary.log");
        clusters.pg("pg_ctl", &["-D", s(&primary), "-l", s(&log), "-w", "start"]);
        let port = clusters.primary_port.to_string();
        clusters.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                s(&standby),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        append(
            &standby.join("postgresql.conf"),
            &format!("port = {}\n", clusters.standby_port),
        );
        let log = clusters.dir.join("standby.log");
        clusters.pg("pg_ctl", &["-D", s(&standby), "-l", s(&log), "-w", "start"]);
        Some(clusters)
    }

    fn url(&self, port: u16, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{db}")
    }

    fn pg(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.args(args);
        self.run(&mut cmd);
    }

    fn run(&self, cmd: &mut Command) {
        let out = cmd.stdin(Stdio::null()).output().expect("run");
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for data in ["standby", "primary"] {
            let data = self.dir.join(data);
            if data.join("postmaster.pid").exists() {
                let path = self.bin.join("pg_ctl");
                let mut cmd = if self.as_postgres {
                    let mut c = Command::new("runuser");
                    c.args(["-u", "postgres", "--"]).arg(path);
                    c
                } else {
                    Command::new(path)
                };
                let _ = cmd
                    .args(["-D", s(&data), "-m", "immediate", "-w", "stop"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Wait until `url` answers (the standby has replayed the database's creation).
async fn wait_connect(url: &str) -> tokio_postgres::Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return client;
            }
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{url}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The relay binary with `DATABASE_URL` and `PGRELAY_READ_URL`; its address, once ready, and
/// its log lines.
async fn spawn_relay(
    write: &str,
    read: &str,
) -> (
    tokio::process::Child,
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", write)
        .env("PGRELAY_READ_URL", read)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relay");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("pgrelay listening addr=").nth(1) {
                return rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
        None
    })
    .await
    .expect("relay started in time")
    .expect("listening line");
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while http_get(addr, "/ready").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never ready: {:#?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr, log)
}

async fn application_names(db: &tokio_postgres::Client, database: &str) -> Vec<String> {
    db.query(
        "SELECT application_name FROM pg_stat_activity WHERE datname = $1 \
         AND pid <> pg_backend_pid()",
        &[&database],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn a_standby_serves_changes_to_a_relay_that_writes_to_the_primary() {
    let Some(clusters) = Clusters::start() else {
        eprintln!(
            "skipped: the PostgreSQL server programs (initdb, pg_basebackup) are not installed"
        );
        return;
    };
    let admin = connect(&clusters.url(clusters.primary_port, "postgres")).await;
    admin.batch_execute("CREATE DATABASE relay").await.unwrap();
    let write_url = clusters.url(clusters.primary_port, "relay");
    let read_url = clusters.url(clusters.standby_port, "relay");
    let standby = wait_connect(&read_url).await;
    let (mut child, addr, log) = spawn_relay(&write_url, &read_url).await;
    let primary = connect(&write_url).await;

    // One line says where reads and writes go, without passwords.
    let lines = log.lock().unwrap().clone();
    let roles = lines
        .iter()
        .find(|l| l.contains("databases: writes"))
        .expect("a line naming the databases");
    assert!(
        roles.contains(&format!("writes=127.0.0.1:{}/relay", clusters.primary_port))
            && roles.contains(&format!("reads=127.0.0.1:{}/relay", clusters.standby_port)),
        "{roles}"
    );
    assert!(
        lines.iter().any(|l| l.contains("ingest mode tail")),
        "{lines:#?}"
    );

    let mut subscribers = Vec::new();
    for vsn in ["1.0.0", "2.0.0"] {
        let url = format!("ws://{addr}/realtime/v1/websocket?apikey=test&vsn={vsn}");
        let mut ws = Ws::connect(&url, vsn).await;
        let ids = ws
            .subscribe(
                "realtime:replica",
                json!([{"event":"*","schema":"public","table":"polls"}]),
            )
            .await;
        subscribers.push((vsn, ws, ids));
    }

    // A transaction open on the primary across the next one's commit: a standby's snapshot
    // does not list it as running, and it must still arrive, after the one that committed
    // first.
    let mut early = connect(&write_url).await;
    let open = early.transaction().await.unwrap();
    let early_id: i64 = open
        .query_one(
            "INSERT INTO polls (question, options, status) VALUES ('Early?', '[\"x\"]', 'draft') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let id: i64 = primary
        .query_one(
            "INSERT INTO polls (question, options, status) VALUES ('From the standby?', '[\"a\",\"b\"]', 'draft') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for (vsn, ws, ids) in &mut subscribers {
        let f = ws.recv_event("postgres_changes").await;
        assert_eq!(f.topic, "realtime:replica", "{vsn}");
        assert_eq!(f.payload["ids"], json!(ids), "{vsn}");
        let data = &f.payload["data"];
        assert_eq!(data["type"], "INSERT", "{vsn}");
        assert_eq!(data["schema"], "public");
        assert_eq!(data["table"], "polls");
        assert_eq!(data["errors"], json!(null));
        assert!(data.get("old_record").is_none());
        assert_eq!(
            data["record"]["id"],
            json!(id),
            "{vsn}: the committed one first"
        );
        assert_eq!(data["record"]["question"], "From the standby?");
        assert_eq!(data["record"]["options"], json!(["a", "b"]));
        assert_eq!(data["record"]["status"], "draft");
        assert_eq!(data["record"]["boost_count"], 0);
        assert_eq!(data["record"]["created_by"], json!(null));
        let ts = data["commit_timestamp"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
        let names: Vec<&str> = data["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "question",
                "options",
                "status",
                "created_by",
                "boost_count",
                "created_at",
                "closes_at"
            ]
        );
    }
    open.commit().await.unwrap();
    primary
        .execute("UPDATE polls SET status = 'active' WHERE id = $1", &[&id])
        .await
        .unwrap();
    for (vsn, ws, _) in &mut subscribers {
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "INSERT", "{vsn}: {data}");
        assert_eq!(
            data["record"]["id"],
            json!(early_id),
            "{vsn}: the long one, not lost"
        );
        assert_eq!(data["record"]["question"], "Early?");
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "UPDATE", "{vsn}");
        assert_eq!(data["record"]["id"], json!(id));
        assert_eq!(data["record"]["status"], "active");
        assert_eq!(data["old_record"]["status"], "draft");
        assert_eq!(
            data["old_record"]["question"], "From the standby?",
            "full old row"
        );
    }

    // Writes through the relay land on the primary, and come back as changes from the
    // standby.
    let (status, body, _) = request(
        addr,
        "POST",
        &format!("/api/v1/polls/{id}/boost"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (vsn, ws, _) in &mut subscribers {
        let f = ws.recv_event("postgres_changes").await;
        let data = &f.payload["data"];
        assert_eq!(data["type"], "UPDATE", "{vsn}");
        assert_eq!(data["record"]["boost_count"], 1, "{vsn}");
        assert_eq!(data["old_record"]["boost_count"], 0, "{vsn}");
    }
    let user: String = primary
        .query_one(
            "INSERT INTO profiles (username) VALUES ('reader') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    hold(&primary, &user, Some(id), 4000, Some(0)).await;
    let (status, body) = vote(addr, &id.to_string(), Some(&user), r#"{"option_index": 1}"#).await;
    assert_eq!(status, 201, "{body}");
    let row = primary
        .query_one(
            "SELECT option_index FROM user_votes WHERE poll_id = $1 AND user_id = $2::text::uuid",
            &[&id, &user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1, "the vote is on the primary");
    let boosts: i32 = primary
        .query_one("SELECT boost_count FROM polls WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(boosts, 1, "the boost is on the primary");

    // The change-log reader runs on the standby only; the primary has no LISTEN session and
    // no reader.
    let on_primary = application_names(&primary, "relay").await;
    assert!(
        !on_primary
            .iter()
            .any(|n| n == "pgrelay reader" || n == "pgrelay listener"),
        "{on_primary:?}"
    );
    let on_standby = application_names(&standby, "relay").await;
    assert!(
        on_standby.iter().any(|n| n == "pgrelay reader"),
        "{on_standby:?}"
    );
    let doorbell: bool = primary
        .query_one("SELECT notify FROM pgrelay.ingest_state", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!doorbell, "nobody can hear a doorbell on a standby");

    // Replication lag is in /metrics, and near zero once the standby caught up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let lag = metric(&body, "pgrelay_replica_lag_seconds");
        let bytes = metric(&body, "pgrelay_replica_lag_bytes");
        assert!(lag.is_finite() && lag >= 0.0, "{lag}");
        if lag < 2.0 && bytes == 0.0 {
            assert_eq!(metric(&body, "pgrelay_listening"), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag {lag} s, {bytes} bytes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill().await;
    drop(clusters);
}

#[tokio::test]
async fn a_read_url_that_is_not_a_standby_stops_the_start_with_one_line() {
    let db = TestDb::new().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("PGRELAY_READ_URL", &db.url)
        .env("PGRELAY_STARTUP_TIMEOUT", "0s")
        .env("NO_COLOR", "1")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("exits")
        .expect("ran");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pgrelay: error: PGRELAY_READ_URL (")
            && last.contains("is not a hot standby"),
        "{stderr}"
    );
    // Checked before anything is written: the primary was not even migrated.
    let client = db.client().await;
    let migrated: bool = client
        .query_one(
            "SELECT to_regclass('pgrelay.ingest_state') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!migrated);
}

/// Four writers update eight rows on the primary, in one- and two-row transactions, while a
/// transaction stays open across many of their commits: through the standby, each row's
/// updates arrive exactly once and in commit order (boost_count 1, 2, 3, …).
#[tokio::test]
async fn concurrent_writes_arrive_once_and_in_order_through_a_standby() {
    let Some(clusters) = Clusters::start() else {
        eprintln!(
            "skipped: the PostgreSQL server programs (initdb, pg_basebackup) are not installed"
        );
        return;
    };
    let admin = connect(&clusters.url(clusters.primary_port, "postgres")).await;
    admin.batch_execute("CREATE DATABASE relay").await.unwrap();
    let write_url = clusters.url(clusters.primary_port, "relay");
    let read_url = clusters.url(clusters.standby_port, "relay");
    let _ = wait_connect(&read_url).await;
    let (mut child, addr, _) = spawn_relay(&write_url, &read_url).await;
    let primary = connect(&write_url).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let row = primary
            .query_one(
                "INSERT INTO polls (question) VALUES ($1) RETURNING id",
                &[&format!("hot {i}")],
            )
            .await
            .unwrap();
        ids.push(row.get::<_, i64>(0));
    }
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey=test&vsn=2.0.0");
    let mut ws = Ws::connect(&url, "2.0.0").await;
    ws.subscribe(
        "realtime:hot",
        json!([{"event":"UPDATE","schema":"public","table":"polls"}]),
    )
    .await;

    let mut long = connect(&write_url).await;
    let open = long.transaction().await.unwrap();
    open.execute(
        "UPDATE polls SET boost_count = boost_count + 1 WHERE id = $1",
        &[&ids[7]],
    )
    .await
    .unwrap();
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (url, ids) = (write_url.clone(), ids.clone());
        writers.push(tokio::spawn(async move {
            let mut db = connect(&url).await;
            for i in 0..150usize {
                // Row 7 is locked by the open transaction until the writers are done.
                let a = ids[(w + i) % 7];
                let b = ids[(w + 3 * i + 1) % 7];
                let tx = db.transaction().await.unwrap();
                for id in [a.min(b), a.max(b)]
                    .into_iter()
                    .take(if i % 3 == 0 { 2 } else { 1 })
                {
                    tx.execute(
                        "UPDATE polls SET boost_count = boost_count + 1 WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    open.commit().await.unwrap();
    let mut want = std::collections::BTreeMap::new();
    for id in &ids {
        let n: i32 = primary
            .query_one("SELECT boost_count FROM polls WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        want.insert(*id, n);
    }
    let total: i32 = want.values().sum();
    let mut seen: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for got in 0..total {
        let Some(f) = ws.try_recv(Duration::from_secs(60)).await else {
            panic!("stalled after {got} of {total} updates");
        };
        assert_eq!(f.event, "postgres_changes", "{f:?}");
        let rec = &f.payload["data"]["record"];
        let old = &f.payload["data"]["old_record"];
        let (id, boost) = (
            rec["id"].as_i64().unwrap(),
            rec["boost_count"].as_i64().unwrap(),
        );
        assert_eq!(old["boost_count"].as_i64().unwrap(), boost - 1, "row {id}");
        seen.entry(id).or_default().push(boost);
    }
    if let Some(extra) = ws.try_recv(Duration::from_millis(1500)).await {
        panic!("more than {total} updates: {extra:?}");
    }
    for (id, n) in want {
        let expected: Vec<i64> = (1..=i64::from(n)).collect();
        assert_eq!(seen.remove(&id).unwrap_or_default(), expected, "row {id}");
    }
    let _ = child.kill().await;
    drop(clusters);
}
