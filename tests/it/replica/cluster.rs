//! The harness of the standby tests: a private primary (`initdb`, `wal_level = replica`, trust
//! auth including replication) and a standby made with `pg_basebackup -R`, each on a free
//! port, and the relay binary between them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A primary and its streaming standby in a temporary directory; both are stopped
/// (`pg_ctl stop -m immediate`) and the directory removed when this is dropped, whatever the
/// test did.
pub(super) struct Clusters {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    pub(super) primary_port: u16,
    pub(super) standby_port: u16,
}

impl Clusters {
    /// `None` when the PostgreSQL server programs are not installed.
    pub(super) fn start() -> Option<Clusters> {
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

    pub(super) fn url(&self, port: u16, db: &str) -> String {
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
pub(super) async fn wait_connect(url: &str) -> tokio_postgres::Client {
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
pub(super) async fn spawn_relay(
    write: &str,
    read: &str,
) -> (
    tokio::process::Child,
    std::net::SocketAddr,
    crate::lifecycle::RelayLog,
) {
    crate::lifecycle::spawn_relay_env(
        "127.0.0.1:0",
        &[("DATABASE_URL", write), ("PGRELAY_READ_URL", read)],
        |_| true,
        Duration::from_secs(60),
    )
    .await
}

/// Both clusters with a database `relay` the standby has replayed, and a relay process
/// writing to the primary and reading from the standby.
pub(super) struct Started {
    pub(super) write_url: String,
    pub(super) read_url: String,
    pub(super) addr: std::net::SocketAddr,
    pub(super) log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub(super) child: tokio::process::Child,
    // Dropped last: the relay goes before its databases.
    pub(super) clusters: Clusters,
}

/// `None` (the test is skipped, saying so) when the server programs are not installed.
pub(super) async fn start() -> Option<Started> {
    let Some(clusters) = Clusters::start() else {
        eprintln!(
            "skipped: the PostgreSQL server programs (initdb, pg_basebackup) are not installed"
        );
        return None;
    };
    let admin = crate::support::connect(&clusters.url(clusters.primary_port, "postgres")).await;
    admin.batch_execute("CREATE DATABASE relay").await.unwrap();
    let write_url = clusters.url(clusters.primary_port, "relay");
    let read_url = clusters.url(clusters.standby_port, "relay");
    let _ = wait_connect(&read_url).await;
    let (child, addr, log) = spawn_relay(&write_url, &read_url).await;
    Some(Started {
        write_url,
        read_url,
        addr,
        log,
        child,
        clusters,
    })
}
