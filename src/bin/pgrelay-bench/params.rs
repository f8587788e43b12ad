//! What a run is asked to do: the options shared by every scenario, as given on the command
//! line ([`Opts`]), and resolved with the scenario's defaults into [`Params`].

use crate::relay::Target;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::db::Workload;

/// `mixed`: how long a press is held (a vote needs a hold of at least 3 s).
const HOLD: Duration = Duration::from_millis(3200);
/// `mixed`: how often each pressing user presses, at most (fewer users press more often only
/// when there are not enough users).
const PRESS_EVERY: Duration = Duration::from_secs(5);
/// `mixed`: the shortest press period (a hold, then a pause before the next press).
const MIN_PRESS_PERIOD: Duration = Duration::from_millis(3700);
/// `mixed` with `--rate 0`: presses per second (the votes go as fast as possible).
const DEFAULT_PRESS_RATE: f64 = 20.0;

/// Options shared by every scenario. Unset ones take the scenario's default.
#[derive(Debug, Clone, Args)]
pub(crate) struct Opts {
    /// WebSocket clients (users for `mixed`). Defaults: fanout, filtered, mixed 1000; idle 10000.
    #[arg(long)]
    clients: Option<usize>,
    /// Writer connections (idle: 0).
    #[arg(long)]
    writers: Option<usize>,
    /// Target changes/s over all writers; 0 = as fast as possible. Defaults: baseline 0,
    /// fanout 100, filtered 1000, mixed 60 (mixed: a third are votes by the writers, two
    /// thirds hold starts and ends that the relay runs for the pressing users).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of writes before measuring (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Longest wait, in seconds, for deliveries still in flight after the window closes.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds to wait after every client joined, before measuring (lets memory settle).
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Polls seeded (writes spread over them). Defaults: filtered and idle N; mixed 100; else 10.
    #[arg(long)]
    polls: Option<usize>,
    /// Profiles seeded. Defaults: mixed N; baseline with `--workload app` 1000; else 8.
    #[arg(long)]
    profiles: Option<usize>,
    /// Write load of `baseline`: `holds` (as fanout/filtered) or `app` (as mixed).
    #[arg(long, value_enum)]
    workload: Option<Workload>,
    /// `synchronous_commit` of the writer sessions (e.g. `off`: commits do not wait for the
    /// WAL flush, so the disk no longer bounds the write rate). Default: the server's setting.
    #[arg(long, value_parser = ["on", "off", "local", "remote_write", "remote_apply"])]
    synchronous_commit: Option<String>,
    #[command(flatten)]
    target: Target,
    /// Extra argument for `pgrelay serve` (repeatable), e.g. `--relay-arg=--socket-queue=4096`.
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// RUST_LOG of the relay (its listening address is read from an info line of
    /// pgrelay::server).
    #[arg(long, default_value = "warn,pgrelay::http::server=info")]
    relay_log: String,
    /// Clients connecting and joining at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print one JSON line on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
    /// Free text copied into the JSON line (e.g. the matrix point).
    #[arg(long)]
    label: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Baseline,
    Fanout,
    Filtered,
    Idle,
    Mixed,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::Fanout => "fanout",
            Kind::Filtered => "filtered",
            Kind::Idle => "idle",
            Kind::Mixed => "mixed",
        }
    }
}

/// How `mixed` users press the hold button: `pressers` users each press every `period` and
/// hold for `hold`, in turn, so presses are evenly spaced at `rate` per second; each press is a
/// hold start and a hold end (run by the relay), and the writers vote at `vote_rate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PressPlan {
    pub(crate) pressers: usize,
    pub(crate) period: Duration,
    pub(crate) hold: Duration,
    pub(crate) rate: f64,
    /// 0: as fast as possible.
    pub(crate) vote_rate: f64,
}

impl PressPlan {
    /// `--rate` is changes/s as before: a third hold starts, a third hold ends, a third votes.
    fn new(users: usize, rate: f64) -> PressPlan {
        let (target, vote_rate) = if rate > 0.0 {
            (rate / 3.0, rate / 3.0)
        } else {
            (DEFAULT_PRESS_RATE, 0.0)
        };
        let pressers =
            ((target * PRESS_EVERY.as_secs_f64()).ceil() as usize).clamp(1, users.max(1));
        let period = (pressers as f64 / target).max(MIN_PRESS_PERIOD.as_secs_f64());
        PressPlan {
            pressers,
            period: Duration::from_secs_f64(period),
            hold: HOLD,
            rate: pressers as f64 / period,
            vote_rate,
        }
    }

    /// Which presser client `i` of `clients` is, if any: pressers are spread evenly.
    pub(crate) fn presser_of(&self, i: usize, clients: usize) -> Option<usize> {
        let stride = (clients / self.pressers.max(1)).max(1);
        (i % stride == 0 && i / stride < self.pressers).then_some(i / stride)
    }
}

/// Options with every scenario default applied.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) kind: Kind,
    pub(crate) clients: usize,
    pub(crate) writers: usize,
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) drain: Duration,
    pub(crate) settle: Duration,
    pub(crate) polls: usize,
    pub(crate) profiles: usize,
    pub(crate) workload: Workload,
    pub(crate) synchronous_commit: Option<String>,
    pub(crate) relay_bin: Option<PathBuf>,
    pub(crate) relay_args: Vec<String>,
    pub(crate) relay_log: String,
    pub(crate) database_url: String,
    pub(crate) connect_concurrency: usize,
    pub(crate) threads: usize,
    pub(crate) json: bool,
    pub(crate) label: Option<String>,
    /// `mixed` only.
    pub(crate) press: Option<PressPlan>,
}

fn secs(what: &str, v: f64, min: f64) -> Result<Duration, String> {
    if !v.is_finite() || v < min || v > 3600.0 {
        return Err(format!("--{what} must be between {min} and 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Params {
    pub(crate) fn resolve(kind: Kind, o: Opts) -> Result<Params, String> {
        if o.workload.is_some() && kind != Kind::Baseline {
            return Err("--workload applies to `baseline` only (mixed is always `app`)".into());
        }
        let workload = match kind {
            Kind::Baseline => o.workload.unwrap_or(Workload::Holds),
            Kind::Mixed => Workload::App,
            _ => Workload::Holds,
        };
        let clients = match kind {
            Kind::Baseline => 0,
            Kind::Idle => o.clients.unwrap_or(10_000),
            _ => o.clients.unwrap_or(1000),
        };
        if kind != Kind::Baseline && clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        let writers = match kind {
            Kind::Idle => 0,
            _ => o.writers.unwrap_or(4),
        };
        if kind != Kind::Idle && writers == 0 {
            return Err("--writers must be at least 1".into());
        }
        let rate = o.rate.unwrap_or(match kind {
            Kind::Baseline | Kind::Idle => 0.0,
            Kind::Fanout => 100.0,
            Kind::Filtered => 1000.0,
            Kind::Mixed => 60.0,
        });
        if !rate.is_finite() || rate < 0.0 {
            return Err("--rate must be 0 (as fast as possible) or positive".into());
        }
        let polls = o.polls.unwrap_or(match kind {
            Kind::Filtered | Kind::Idle => clients,
            Kind::Mixed => 100,
            _ => 10,
        });
        if polls == 0 {
            return Err("--polls must be at least 1".into());
        }
        let profiles = o.profiles.unwrap_or(match (kind, workload) {
            (Kind::Mixed, _) => clients,
            (_, Workload::App) => 1000,
            _ => 8,
        });
        if profiles == 0 {
            return Err("--profiles must be at least 1".into());
        }
        if o.threads == 0 || o.connect_concurrency == 0 {
            return Err("--threads and --connect-concurrency must be at least 1".into());
        }
        Ok(Params {
            kind,
            clients,
            writers,
            rate,
            duration: secs("duration", o.duration, 0.5)?,
            warmup: secs("warmup", o.warmup, 0.0)?,
            drain: secs("drain", o.drain, 0.0)?,
            settle: secs("settle", o.settle, 0.0)?,
            polls,
            profiles,
            workload,
            synchronous_commit: o.synchronous_commit,
            relay_bin: o.target.relay_bin,
            relay_args: o.relay_args,
            relay_log: o.relay_log,
            database_url: o.target.database_url,
            connect_concurrency: o.connect_concurrency,
            threads: o.threads,
            json: o.json,
            label: o.label,
            press: (kind == Kind::Mixed).then(|| PressPlan::new(clients, rate)),
        })
    }
}
