//! The private PostgreSQL of a zero-configuration start: when `serve` runs with no
//! `DATABASE_URL` and nothing answers on the default address, a cluster of its own under
//! `.pgrelay/` in the working directory, started with the relay and stopped with it.
//!
//! Lifecycle: [`zero_config`] probes the default address; when it is silent and PostgreSQL's
//! server programs are installed (`initdb` and `pg_ctl` on `PATH`, or in
//! `/usr/lib/postgresql/*/bin` and `/usr/pgsql-*/bin`), it runs `initdb` once (trust auth,
//! superuser `postgres`) into `.pgrelay/data`, then `pg_ctl start` on a free loopback port
//! with its log in `.pgrelay/postgres.log`, and waits until the server accepts connections.
//! [`Instance::stop`] (or dropping the [`Instance`]) runs `pg_ctl stop -m fast`. The data
//! survives: the next start reuses it. A server left running by a relay that was killed is
//! adopted rather than started twice.
//!
//! `initdb` refuses to run as root, so as root the cluster belongs to the `postgres` OS user
//! (every PostgreSQL package creates it) and each program runs through `runuser` (or `su`).
//!
//! `PGRELAY_ZERO_CONFIG_PROBE` (`host:port`) replaces the probed address. It exists for tests,
//! which need a silent address on a machine whose PostgreSQL is up.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tracing::{info, warn};

/// The variable that replaces the probed address (for tests).
pub const PROBE_ENV: &str = "PGRELAY_ZERO_CONFIG_PROBE";

/// The default database's address (that of `config::DEFAULT_DATABASE_URL`), probed before
/// starting a private instance.
pub const DEFAULT_PROBE: &str = "127.0.0.1:5432";

/// The directory, relative to the working directory, that holds the private cluster.
pub const DIR: &str = ".pgrelay";

/// How long the probe waits for the default address to accept a TCP connection. Loopback
/// answers or refuses at once; the bound only matters for a firewalled address.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long `pg_ctl` may take to start or stop the server (seconds, its `-t`).
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Why no private PostgreSQL could be had. Each variant displays as one line that says what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PgInstanceError {
    #[error(
        "no PostgreSQL answers at {probe} and no PostgreSQL server programs (initdb, pg_ctl) \
         are installed to start a private one: install PostgreSQL (e.g. `apt-get install \
         postgresql`) or set DATABASE_URL"
    )]
    NotInstalled { probe: String },
    #[error(
        "no PostgreSQL answers at {probe}, and as root the private one must run as the \
         `postgres` OS user, which does not exist: run pgrelay as another user, create that \
         user, or set DATABASE_URL"
    )]
    NoPostgresUser { probe: String },
    #[error(
        "the `postgres` OS user cannot write {dir} (as root the private PostgreSQL runs as \
         that user): start pgrelay from a directory it can reach, or set DATABASE_URL"
    )]
    Unreachable { dir: String },
    #[error("private PostgreSQL: {what}: {cause}")]
    Io {
        what: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("private PostgreSQL: {what} failed: {detail}")]
    Failed { what: String, detail: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgInstanceError {
    let what = what.into();
    move |cause| PgInstanceError::Io { what, cause }
}

/// With no `DATABASE_URL`: `None` when something answers on the default address (use it, as
/// before), else a private instance that is up and accepting connections.
///
/// # Errors
/// One-line reasons: PostgreSQL not installed, root without a `postgres` user, `initdb` or
/// `pg_ctl` failing (the log file is named).
pub async fn zero_config() -> Result<Option<Instance>, PgInstanceError> {
    let probe = std::env::var(PROBE_ENV).unwrap_or_else(|_| DEFAULT_PROBE.to_owned());
    if answers(&probe, PROBE_TIMEOUT).await {
        return Ok(None);
    }
    let Some(bins) = Binaries::find() else {
        return Err(PgInstanceError::NotInstalled { probe });
    };
    let dir = std::env::current_dir()
        .map_err(io("reading the working directory"))?
        .join(DIR);
    let instance = tokio::task::spawn_blocking(move || Instance::start(&dir, &bins, &probe))
        .await
        .map_err(|e| PgInstanceError::Failed {
            what: "starting".into(),
            detail: e.to_string(),
        })??;
    info!(
        url = %instance.url,
        data = %instance.data.display(),
        log = %instance.log.display(),
        "no PostgreSQL answered on the default address: using a private one"
    );
    Ok(Some(instance))
}

/// Whether `addr` (`host:port`) accepts a TCP connection within `within`.
pub async fn answers(addr: &str, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Where PostgreSQL's server programs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub initdb: PathBuf,
    pub pg_ctl: PathBuf,
}

impl Binaries {
    /// The first directory holding both `initdb` and `pg_ctl`: `PATH` first, then the
    /// distributions' versioned directories, newest version first (Debian and Ubuntu keep
    /// them off `PATH`).
    pub fn find() -> Option<Binaries> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        dirs.extend(versioned_dirs(Path::new("/usr/lib/postgresql"), "", "bin"));
        dirs.extend(versioned_dirs(Path::new("/usr"), "pgsql-", "bin"));
        Self::find_in(dirs)
    }

    /// The first of `dirs` holding both programs.
    pub fn find_in(dirs: impl IntoIterator<Item = PathBuf>) -> Option<Binaries> {
        dirs.into_iter().find_map(|dir| {
            let initdb = dir.join("initdb");
            let pg_ctl = dir.join("pg_ctl");
            (is_executable(&initdb) && is_executable(&pg_ctl))
                .then_some(Binaries { initdb, pg_ctl })
        })
    }
}

/// `<parent>/<prefix><version>/<sub>` for every numeric version present, newest first.
fn versioned_dirs(parent: &Path, prefix: &str, sub: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?.split('.').next()?.parse().ok()?;
            Some((version, e.path().join(sub)))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Who runs the cluster's programs.
#[derive(Debug, Clone)]
enum Owner {
    /// This process's user.
    Me,
    /// Another OS user (root hands the cluster to `postgres`).
    User { name: String, uid: u32, gid: u32 },
}

impl Owner {
    fn for_this_process(probe: &str) -> Result<Owner, PgInstanceError> {
        if effective_uid() != Some(0) {
            return Ok(Owner::Me);
        }
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        match (id("-u"), id("-g")) {
            (Some(uid), Some(gid)) => Ok(Owner::User {
                name: "postgres".into(),
                uid,
                gid,
            }),
            _ => Err(PgInstanceError::NoPostgresUser {
                probe: probe.to_owned(),
            }),
        }
    }

    /// `program` to be run as this owner.
    fn command(&self, program: &Path) -> Command {
        match self {
            Owner::Me => Command::new(program),
            Owner::User { name, .. } => {
                if let Some(runuser) = find_runuser() {
                    let mut c = Command::new(runuser);
                    c.args(["-u", name, "--"]).arg(program);
                    c
                } else {
                    // `su USER -c CMD ARG...` hands ARG... to the shell as $0, $1, …: no quoting.
                    let mut c = Command::new("su");
                    c.args(["-s", "/bin/sh", "-c", "exec \"$0\" \"$@\"", name, "--"])
                        .arg(program);
                    c
                }
            }
        }
    }
}

fn find_runuser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join("runuser"))
        .find(|p| is_executable(p))
}

/// The effective uid: the owner of `/proc/self` on Linux, else what `id -u` says.
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata("/proc/self") {
        return Some(m.uid());
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A running private PostgreSQL, stopped by [`Instance::stop`] or on drop.
#[derive(Debug)]
pub struct Instance {
    /// Where the relay connects: trust auth, superuser `postgres`.
    pub url: String,
    /// The cluster's data directory (`.pgrelay/data`).
    pub data: PathBuf,
    /// The server's log (`.pgrelay/postgres.log`).
    pub log: PathBuf,
    pg_ctl: PathBuf,
    owner: Owner,
    /// The directory the programs run in: the owner can always enter it.
    dir: PathBuf,
    stopped: bool,
}

impl Instance {
    /// Initialise `dir/data` if it holds no cluster yet, start the server on a free loopback
    /// port (or adopt one already running there) and wait until it accepts connections.
    /// Blocking: runs `initdb` and `pg_ctl`.
    ///
    /// # Errors
    /// See [`PgInstanceError`]; a failing program's last output line is included.
    pub fn start(dir: &Path, bins: &Binaries, probe: &str) -> Result<Instance, PgInstanceError> {
        let owner = Owner::for_this_process(probe)?;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io(format!("resolving {}", dir.display())))?;
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        if let Owner::User { uid, gid, .. } = &owner {
            // The private directory belongs to the cluster's owner: initdb creates `data` in
            // it and the server appends to the log there.
            std::os::unix::fs::chown(&dir, Some(*uid), Some(*gid))
                .map_err(io(format!("handing {} to postgres", dir.display())))?;
            if log.exists() {
                std::os::unix::fs::chown(&log, Some(*uid), Some(*gid))
                    .map_err(io(format!("handing {} to postgres", log.display())))?;
            }
            let ok = owner
                .command(Path::new("test"))
                .arg("-w")
                .arg(&dir)
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                return Err(PgInstanceError::Unreachable {
                    dir: dir.display().to_string(),
                });
            }
        }
        let mut instance = Instance {
            url: String::new(),
            data,
            log,
            pg_ctl: bins.pg_ctl.clone(),
            owner,
            dir,
            stopped: true,
        };
        if !instance.data.join("PG_VERSION").exists() {
            let out = instance.run(
                &bins.initdb,
                &[
                    "-D".as_ref(),
                    instance.data.as_os_str(),
                    "-U".as_ref(),
                    "postgres".as_ref(),
                    "--auth=trust".as_ref(),
                    "-E".as_ref(),
                    "UTF8".as_ref(),
                    "--locale=C".as_ref(),
                ],
                "initdb",
            )?;
            check(&out, "initdb", None)?;
        }
        let port = match instance.running_port() {
            Some(port) => {
                info!(port, "adopting the private PostgreSQL left running");
                port
            }
            None => {
                let port = free_port().map_err(io("finding a free port"))?;
                // Loopback only; no Unix socket (its default directory may not be writable
                // by this user).
                let options = format!("-h 127.0.0.1 -p {port} -k ''");
                let out = instance.run(
                    &bins.pg_ctl,
                    &[
                        "start".as_ref(),
                        "-D".as_ref(),
                        instance.data.as_os_str(),
                        "-l".as_ref(),
                        instance.log.as_os_str(),
                        "-w".as_ref(),
                        "-t".as_ref(),
                        PG_CTL_TIMEOUT_SECS.as_ref(),
                        "-o".as_ref(),
                        options.as_ref(),
                    ],
                    "pg_ctl start",
                )?;
                check(&out, "pg_ctl start", Some(&instance.log))?;
                port
            }
        };
        instance.stopped = false;
        instance.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        Ok(instance)
    }

    /// The port of a server already running on this data directory (left by a relay that was
    /// killed), from `postmaster.pid` once `pg_ctl status` confirms it runs.
    fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let status = self
            .run(
                &self.pg_ctl,
                &["status".as_ref(), "-D".as_ref(), self.data.as_os_str()],
                "pg_ctl status",
            )
            .ok()?;
        if !status.status.success() {
            return None;
        }
        // postmaster.pid: pid, data directory, start time, port, …
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    /// Run one of the cluster's programs as its owner, in the private directory, output
    /// captured. Its own process group, so a Ctrl-C meant for the relay does not stop the
    /// server before the relay has drained.
    fn run(
        &self,
        program: &Path,
        args: &[&std::ffi::OsStr],
        what: &str,
    ) -> Result<Output, PgInstanceError> {
        use std::os::unix::process::CommandExt;
        self.owner
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .map_err(io(format!("running {what} ({})", program.display())))
    }

    /// Stop the server (`pg_ctl stop -m fast`) and wait for it. Blocking.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let out = self.run(
            &self.pg_ctl,
            &[
                "stop".as_ref(),
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_TIMEOUT_SECS.as_ref(),
            ],
            "pg_ctl stop",
        );
        match out.and_then(|o| check(&o, "pg_ctl stop", Some(&self.log))) {
            Ok(()) => info!(data = %self.data.display(), "stopped the private PostgreSQL"),
            Err(e) => warn!(cause = %e, "could not stop the private PostgreSQL"),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Ok if `out` succeeded, else the program's last output line (and where its log is).
fn check(out: &Output, what: &str, log: Option<&Path>) -> Result<(), PgInstanceError> {
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no output");
    let mut detail = format!("{} ({last})", out.status);
    if let Some(log) = log {
        detail.push_str(&format!("; see {}", log.display()));
    }
    Err(PgInstanceError::Failed {
        what: what.into(),
        detail,
    })
}

/// A loopback port that is free now (the server binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_need_both_programs() {
        let base = std::env::temp_dir().join(format!("pgrelay-bins-{}", std::process::id()));
        let only_initdb = base.join("a");
        let both = base.join("b");
        for d in [&only_initdb, &both] {
            std::fs::create_dir_all(d).unwrap();
        }
        let touch = |p: PathBuf| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        touch(only_initdb.join("initdb"));
        touch(both.join("initdb"));
        touch(both.join("pg_ctl"));
        let found = Binaries::find_in([base.join("missing"), only_initdb.clone(), both.clone()]);
        assert_eq!(
            found,
            Some(Binaries {
                initdb: both.join("initdb"),
                pg_ctl: both.join("pg_ctl"),
            })
        );
        assert_eq!(Binaries::find_in([only_initdb]), None);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn versioned_directories_newest_first() {
        let base = std::env::temp_dir().join(format!("pgrelay-versions-{}", std::process::id()));
        for v in ["9.6", "15", "16", "notes"] {
            std::fs::create_dir_all(base.join(v)).unwrap();
        }
        let dirs = versioned_dirs(&base, "", "bin");
        assert_eq!(
            dirs,
            vec![
                base.join("16/bin"),
                base.join("15/bin"),
                base.join("9.6/bin")
            ]
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn probes_the_default_database() {
        let url = crate::config::DEFAULT_DATABASE_URL;
        assert!(url.contains(&format!("@{DEFAULT_PROBE}/")), "{url}");
    }

    #[test]
    fn not_installed_is_one_line_saying_what_to_do() {
        let e = PgInstanceError::NotInstalled {
            probe: DEFAULT_PROBE.into(),
        }
        .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("127.0.0.1:5432") && e.contains("install PostgreSQL"));
        assert!(e.contains("set DATABASE_URL"), "{e}");
    }
}
