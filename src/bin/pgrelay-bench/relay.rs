//! The relay under test as a child process: schema setup through its own commands, start on
//! port 0, the address read from its log, its warnings forwarded, and a bounded stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long the relay may take to print its listening address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the relay may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Relay log lines forwarded to our stderr; the rest are only counted.
const FORWARD_LINES: u64 = 20;

/// The relay binary: `--relay-bin`, else `pgrelay` next to this executable (both are built into
/// the same target directory), else `target/release/pgrelay`.
pub(crate) fn resolve_bin(flag: Option<&Path>) -> Result<PathBuf, String> {
    let candidate = match flag {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("pgrelay")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("target/release/pgrelay")),
    };
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "relay binary {} not found: run `cargo build --release` or pass --relay-bin",
            candidate.display()
        ))
    }
}

/// Run `pgrelay migrate` and `pgrelay triggers apply` against `db_url`.
pub(crate) async fn prepare_schema(bin: &Path, db_url: &str) -> Result<(), String> {
    for args in [&["migrate"][..], &["triggers", "apply"][..]] {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(bin)
                .args(args)
                .env("DATABASE_URL", db_url)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| format!("`pgrelay {}` timed out", args.join(" ")))?
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`pgrelay {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// The status line of a plain HTTP GET.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

#[derive(Debug)]
pub(crate) struct Relay {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    /// WARN and ERROR lines the relay logged.
    pub(crate) warnings: Arc<AtomicU64>,
}

impl Relay {
    pub(crate) async fn start(
        bin: &Path,
        db_url: &str,
        rust_log: &str,
        extra_args: &[String],
    ) -> Result<Relay, String> {
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra_args)
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let pid = child.id().ok_or("the relay exited at once")?;
        let stderr = child.stderr.take().ok_or("no relay stderr")?;
        let warnings = Arc::new(AtomicU64::new(0));
        let (addr_tx, addr_rx) = oneshot::channel::<String>();
        {
            let warnings = warnings.clone();
            // Drain the relay's stderr for its whole life (a full pipe would block its logging).
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut addr_tx = Some(addr_tx);
                let mut last = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(tx) = addr_tx.take() {
                        match line
                            .find("pgrelay listening")
                            .and_then(|p| line[p..].find("addr="))
                        {
                            Some(_) => {
                                let _ = tx.send(line.clone());
                                continue;
                            }
                            None => {
                                addr_tx = Some(tx);
                                last.push(line.clone());
                                if last.len() > 5 {
                                    last.remove(0);
                                }
                            }
                        }
                    }
                    if line.contains(" WARN ") || line.contains(" ERROR ") {
                        let n = warnings.fetch_add(1, Ordering::Relaxed) + 1;
                        if n <= FORWARD_LINES {
                            eprintln!("relay: {line}");
                        } else if n == FORWARD_LINES + 1 {
                            eprintln!("relay: (further warnings only counted)");
                        }
                    }
                }
                if addr_tx.is_some() {
                    for l in last {
                        eprintln!("relay: {l}");
                    }
                }
            });
        }
        let line = match tokio::time::timeout(START_TIMEOUT, addr_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = child.wait().await.ok();
                return Err(format!(
                    "the relay exited before listening ({})",
                    status.map_or_else(|| "unknown status".into(), |s| s.to_string())
                ));
            }
            Err(_) => return Err(format!("the relay did not listen within {START_TIMEOUT:?}")),
        };
        let addr = line
            .rsplit("addr=")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.trim_matches('"').parse::<SocketAddr>().ok())
            .ok_or_else(|| format!("cannot read the address from: {line}"))?;
        let relay = Relay {
            child,
            pid,
            addr,
            warnings,
        };
        relay.wait_ready().await?;
        Ok(relay)
    }

    /// The relay serves HTTP before its database is set up: wait until `/ready` says 200.
    async fn wait_ready(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            match http_get(self.addr, "/ready").await {
                Ok(status) if status.starts_with("HTTP/1.1 200") => return Ok(()),
                Ok(status) => last = status,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "the relay was not ready within {START_TIMEOUT:?} (/ready: {last})"
        ))
    }

    /// SIGKILL, as a crash would: the relay says goodbye to nobody (neither its clients nor
    /// Redis).
    pub(crate) async fn kill(mut self) -> Result<(), String> {
        self.child
            .kill()
            .await
            .map_err(|e| format!("killing the relay: {e}"))
    }

    /// SIGTERM, wait, then kill if it is still there.
    pub(crate) async fn stop(mut self) -> Result<(), String> {
        let term = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if term.is_ok_and(|s| s.success()) {
            if let Ok(Ok(status)) = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the relay exited with {status}"))
                };
            }
        }
        let _ = self.child.kill().await;
        Err(format!(
            "the relay did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed"
        ))
    }
}

/// Which relay binary a scenario runs, and the server on which each run creates (and drops)
/// its own database.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// The relay binary (default: `pgrelay` next to this binary, i.e. target/release/pgrelay).
    #[arg(long)]
    pub(crate) relay_bin: Option<std::path::PathBuf>,
    /// Server on which each run creates (and drops) its own database.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub(crate) database_url: String,
}
