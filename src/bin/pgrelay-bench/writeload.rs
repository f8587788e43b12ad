//! The write-cost scenario's dealings with the world outside the relay: the pgbench load that
//! plays the app's writers, renicing the relay, and reading the relay's `/metrics`.

use std::time::Duration;

use tokio::process::Command;

use crate::relay::Relay;

/// The load of one point.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Load {
    /// `writers` pgbench clients as fast as they go.
    Flat(usize),
    /// 4 clients at this many commits/s in all.
    Rate(f64),
    /// No writes at all: the relay's idle cost.
    Idle,
}

/// Renice every thread of `pid` (Linux sets a niceness per thread; threads started later
/// inherit it from the one that starts them).
pub(crate) async fn renice(pid: u32, niceness: i32) -> Result<(), String> {
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("threads of {pid}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let status = Command::new("renice")
        .args(["-n", &niceness.to_string(), "-p"])
        .args(&tids)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| format!("renice: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "renice -n {niceness} -p {pid} failed (root needed)"
        ))
    }
}

/// The relay's `/metrics` text ("" if it does not answer).
pub(crate) async fn relay_metrics(relay: &Relay) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(relay.addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(Duration::from_secs(5), io).await {
        Ok(Ok(buf)) => String::from_utf8_lossy(&buf).into_owned(),
        _ => String::new(),
    }
}

/// `pgrelay_ingest_reads_total`.
pub(crate) fn relay_reads(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgrelay_ingest_reads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The upper bound (ms) of the commit→send histogram bucket holding quantile `q`: the relay's
/// own view of latency, to the resolution of its buckets.
pub(crate) fn histogram_bound_ms(metrics: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets = Vec::new();
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else {
            continue;
        };
        let Some((le, n)) = rest.split_once("\"} ") else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        buckets.push((bound, n.trim().parse::<f64>().unwrap_or(0.0)));
    }
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return 0.0;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::INFINITY, |(b, _)| b * 1000.0)
}

/// Run pgbench against `url`: single-row INSERTs, `writers` clients, for `total`.
///
/// With `log`, pgbench logs every transaction (`-l`) to files starting with that path, and
/// [`transaction_latencies`] reads them.
pub(crate) async fn pgbench(
    url: &str,
    writers: usize,
    load: Load,
    total: Duration,
    log: Option<&std::path::Path>,
) -> Result<(), String> {
    let cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("url: {e}"))?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let script = std::env::temp_dir().join(format!("pgrelay-writecost-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "\\set k random(0, 99)\nINSERT INTO public.bench_writes (k, note) VALUES (:k, 'x');\n",
    )
    .map_err(|e| format!("pgbench script: {e}"))?;
    let mut cmd = Command::new("pgbench");
    cmd.arg("-n")
        .args(["-M", "prepared"])
        .args(["-h", &host])
        .args(["-p", &port.to_string()])
        .args(["-U", cfg.get_user().unwrap_or("postgres")])
        .args(["-c", &writers.to_string()])
        .args(["-j", &writers.min(4).to_string()])
        .args(["-T", &total.as_secs().max(1).to_string()])
        .arg("-f")
        .arg(&script);
    if let Load::Rate(r) = load {
        cmd.args(["-R", &format!("{r}")]);
    }
    if let Some(prefix) = log {
        cmd.arg("-l")
            .arg(format!("--log-prefix={}", prefix.display()));
    }
    if let Some(pw) = cfg.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).into_owned());
    }
    cmd.arg(cfg.get_dbname().unwrap_or("postgres"));
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("running pgbench (install PostgreSQL's client tools): {e}"))?;
    let _ = std::fs::remove_file(&script);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The latencies (µs) of the transactions pgbench logged under `prefix` (`-l`: one file per
/// thread, a line per transaction: client, number, latency µs, script, end s, end µs) that
/// ended in `[from_us, to_us)`; the files are removed.
pub(crate) fn transaction_latencies(
    prefix: &std::path::Path,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<u64>, String> {
    let dir = prefix.parent().unwrap_or(std::path::Path::new("."));
    let stem = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{stem}.")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let _ = std::fs::remove_file(entry.path());
        for line in text.lines() {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let (Some(lat), Some(s), Some(us)) = (f.get(2), f.get(4), f.get(5)) else {
                continue;
            };
            let (Ok(lat), Ok(s), Ok(us)) =
                (lat.parse::<u64>(), s.parse::<i64>(), us.parse::<i64>())
            else {
                continue;
            };
            let end = s * 1_000_000 + us;
            if end >= from_us && end < to_us {
                out.push(lat);
            }
        }
    }
    Ok(out)
}
