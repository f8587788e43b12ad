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

/// The upper bound (ms) of the bucket holding quantile `q` in the relay's histogram `name`
/// (e.g. its commit→send latency), to the resolution of its buckets.
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
/// [`logged_transactions`] reads them.
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
        "\\set k random(0, 99)\nINSERT INTO public.bench_writes (k, w, note) VALUES (:k, :client_id, 'x');\n",
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

/// One transaction pgbench logged (`-l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoggedTxn {
    /// pgbench's client id (`:client_id`).
    pub client: u32,
    /// The transaction's number within its client, from 0.
    pub number: u64,
    /// Begin to commit acknowledged, µs.
    pub latency_us: u64,
    /// When pgbench saw the commit acknowledged, µs since the epoch.
    pub end_us: i64,
}

/// Every transaction pgbench logged under `prefix` (`-l`: one file per thread, a line per
/// transaction: client, number, latency µs, script, end s, end µs); the files are removed.
pub(crate) fn logged_transactions(prefix: &std::path::Path) -> Result<Vec<LoggedTxn>, String> {
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
        out.extend(text.lines().filter_map(parse_logged_txn));
    }
    Ok(out)
}

fn parse_logged_txn(line: &str) -> Option<LoggedTxn> {
    let mut f = line.split_ascii_whitespace();
    let client = f.next()?.parse().ok()?;
    let number = f.next()?.parse().ok()?;
    let latency_us = f.next()?.parse().ok()?;
    let _script = f.next()?;
    let s: i64 = f.next()?.parse().ok()?;
    let us: i64 = f.next()?.parse().ok()?;
    Some(LoggedTxn {
        client,
        number,
        latency_us,
        end_us: s * 1_000_000 + us,
    })
}

/// Commit acknowledgement → client receipt, µs, for every row whose commit pgbench saw
/// acknowledged in `[from_us, to_us)`. Each pgbench client runs its transactions one after
/// another and each inserts one row tagged with its client id, so a client's rows in id order
/// are its logged transactions in number order. `rows`: (client, id), `received`: id → µs.
/// A receipt before the acknowledgement (the row became visible before pgbench read the
/// reply) counts as 0.
pub(crate) fn ack_to_receipt(
    txns: &[LoggedTxn],
    rows: &[(u32, i64)],
    received: &std::collections::HashMap<i64, i64>,
    from_us: i64,
    to_us: i64,
) -> Vec<u64> {
    let mut by_client: std::collections::BTreeMap<u32, Vec<LoggedTxn>> = Default::default();
    for t in txns {
        by_client.entry(t.client).or_default().push(*t);
    }
    let mut ids: std::collections::BTreeMap<u32, Vec<i64>> = Default::default();
    for &(client, id) in rows {
        ids.entry(client).or_default().push(id);
    }
    let mut out = Vec::new();
    for (client, mut logged) in by_client {
        logged.sort_unstable_by_key(|t| t.number);
        let Some(mut rows) = ids.remove(&client) else {
            continue;
        };
        rows.sort_unstable();
        for (t, id) in logged.iter().zip(rows) {
            if t.end_us < from_us || t.end_us >= to_us {
                continue;
            }
            if let Some(&at) = received.get(&id) {
                out.push(u64::try_from(at - t.end_us).unwrap_or(0));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_log_lines_parse() {
        assert_eq!(
            parse_logged_txn("3 17 2450 0 1764525000 123456"),
            Some(LoggedTxn {
                client: 3,
                number: 17,
                latency_us: 2450,
                end_us: 1_764_525_000_123_456
            })
        );
        assert_eq!(parse_logged_txn("3 17 skipped 0 1 2"), None);
        assert_eq!(parse_logged_txn(""), None);
    }

    #[test]
    fn rows_pair_with_their_clients_transactions_in_order() {
        let t = |client, number, end_us| LoggedTxn {
            client,
            number,
            latency_us: 1,
            end_us,
        };
        // Client 0 committed ids 1 and 4, client 1 ids 2 and 3, logged out of order.
        let txns = [t(1, 1, 300), t(0, 0, 100), t(1, 0, 200), t(0, 1, 400)];
        let rows = [(0, 4), (1, 2), (0, 1), (1, 3)];
        let received = [(1, 150), (2, 260), (3, 290), (4, 410)]
            .into_iter()
            .collect();
        let mut got = ack_to_receipt(&txns, &rows, &received, 0, 1000);
        got.sort_unstable();
        // 1: 150-100, 2: 260-200, 3: 290-300 → 0 (seen before the ack), 4: 410-400.
        assert_eq!(got, vec![0, 10, 50, 60]);
        // Only acknowledgements inside the window count.
        assert_eq!(ack_to_receipt(&txns, &rows, &received, 150, 350).len(), 2);
    }
}
