//! What the benchmark reads from /proc: CPU time and RSS of a process, the CPU time of every
//! PostgreSQL process, whole-machine CPU, and the open-files limit.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second for /proc CPU times (`getconf CLK_TCK`, else 100).
pub(crate) fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// `(comm, utime + stime)` from `/proc/<pid>/stat`, in clock ticks.
fn stat(pid: &str) -> Option<(String, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    // After "pid (comm) ": state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU time (user + system) of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    stat(&pid.to_string()).map(|(_, t)| t)
}

/// Resident set size of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time per PostgreSQL process that works for this benchmark: the server's own
/// processes (WAL writer, checkpointer, autovacuum, …) and the backends of database `db`;
/// other databases' backends (other users of the server) are left out. Clock ticks by pid.
pub(crate) fn postgres_ticks(db: &str) -> HashMap<u32, u64> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    let needle = format!(" {db} ");
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|pid| pid.parse::<u32>().ok())
        .filter_map(|pid| {
            let (comm, ticks) = stat(&pid.to_string())?;
            if comm != "postgres" {
                return None;
            }
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let backend =
                cmd.contains("127.0.0.1(") || cmd.contains("[local]") || cmd.contains("::1(");
            (!backend || cmd.contains(&needle)).then_some((pid, ticks))
        })
        .collect()
}

/// Ticks spent between two [`postgres_ticks`] samples: processes that started in between
/// count whole; those that ended are missed.
pub(crate) fn ticks_between(a: &HashMap<u32, u64>, b: &HashMap<u32, u64>) -> u64 {
    b.iter()
        .map(|(pid, &t)| t.saturating_sub(a.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// Whole-machine `(busy, total)` CPU ticks summed over all cores, from /proc/stat.
pub(crate) fn machine_ticks() -> Option<(u64, u64)> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// 1-minute load average.
pub(crate) fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `(soft, hard)` open-files limit of this process.
pub(crate) fn nofile_limit() -> Option<(u64, u64)> {
    let s = fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|v| {
            if v == "unlimited" {
                Some(u64::MAX)
            } else {
                v.parse().ok()
            }
        });
    Some((it.next()??, it.next()??))
}

/// Make sure this process (and so the relay it starts) may open `needed` files. Raises the
/// limit with `prlimit` (util-linux) when it is too low; the crate forbids unsafe code, so no
/// direct setrlimit. Returns the soft limit in force afterwards.
pub(crate) fn ensure_nofile(needed: u64) -> Result<u64, String> {
    let Some((soft, hard)) = nofile_limit() else {
        return Err("cannot read /proc/self/limits".into());
    };
    if soft >= needed {
        return Ok(soft);
    }
    let new_hard = hard.max(needed);
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={needed}:{new_hard}"))
        .status()
        .map_err(|e| format!("running prlimit: {e}"))?;
    let after = nofile_limit().map_or(soft, |(s, _)| s);
    if !status.success() || after < needed {
        return Err(format!(
            "open-files limit is {after}, {needed} needed, and prlimit could not raise it (run as root or raise `ulimit -n`)"
        ));
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss_kib(me).is_some_and(|r| r > 0));
        assert!(machine_ticks().is_some_and(|(b, t)| b <= t && t > 0));
        assert!(nofile_limit().is_some());
    }
}
