//! Configuration: command-line flags and environment variables, parsed once and passed down.
//!
//! Every setting has a flag and an environment variable (shown in `--help`); with no
//! configuration at all the relay serves on 127.0.0.1:4000 against a local PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
mod guards;
pub use guards::{Guards, DEFAULT_MAX_MESSAGE_BYTES};

/// The default server: a local PostgreSQL with the stock superuser, so that a developer can
/// start the relay without configuring anything (in pgrelay's own database, `db::home`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// pgrelay: stream PostgreSQL changes to apps over the Supabase Realtime protocol.
#[derive(Debug, Parser)]
#[command(name = "pgrelay", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Database options, shared by every command (also used when no command is given).
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Log format on stderr: `text` (for people) or `json` (one object per line, with the
    /// fields of the enclosing spans, for log collectors). Levels come from RUST_LOG.
    #[arg(
        long,
        env = "PGRELAY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields`, `target`, `span`, `spans`.
    Json,
}

// Parsed once at startup and consumed: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the database, apply the triggers, LISTEN and serve WebSocket clients (the default).
    Serve(ServeArgs),
    /// Run the embedded schema migrations (sql/) and exit.
    Migrate,
    /// Manage the change triggers (triggers/).
    Triggers {
        #[command(subcommand)]
        command: TriggersCommand,
    },
    /// End button-hold sessions whose heartbeat went stale, and prune the change log, until
    /// stopped. Needs only DATABASE_URL and a schema set up by `migrate` or `serve`; any number
    /// may run at once.
    Cleanup(CleanupArgs),
    /// Remove pgrelay's triggers, schema and migration history from the database, and exit.
    Uninstall {
        /// Also drop the app's tables with their rows (kept by default), its view and functions.
        #[arg(long)]
        drop_app_tables: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TriggersCommand {
    /// Apply the trigger SQL idempotently (also done at every `serve` start) and exit.
    Apply(TriggersArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL, used as given [default: database `pgrelay` on
    /// postgres://postgres@127.0.0.1:5432, created if missing]. The LISTEN session needs a
    /// direct connection to the primary (not through a transaction-pooling PgBouncer).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Connections in the pool used for everything but LISTEN (catalog reads, change-log reads).
    #[arg(long, env = "PGRELAY_POOL_SIZE", default_value_t = 8, global = true)]
    pub pool_size: usize,

    /// A hot standby of DATABASE_URL to read from: changes (the change log, tailed), the
    /// catalog, live topics, read policies, event streams and the JSON API's reads. Writes
    /// still go to DATABASE_URL. Unset: everything uses DATABASE_URL.
    #[arg(long, env = "PGRELAY_READ_URL", hide_env_values = true, global = true)]
    pub read_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TriggersArgs {
    /// Directory of trigger SQL files, applied in name order. Defaults to `./triggers` when that
    /// directory exists, else the copies embedded in the binary at build time.
    #[arg(long, env = "PGRELAY_TRIGGERS_DIR")]
    pub triggers_dir: Option<PathBuf>,

    /// NOTIFY channel the triggers send on and the relay LISTENs to (a plain identifier).
    #[arg(long, env = "PGRELAY_CHANNEL", default_value = "pgrelay", value_parser = parse_channel)]
    pub channel: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve WebSocket and HTTP on (`host:port`; port 0 picks a free one).
    #[arg(long, env = "PGRELAY_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub triggers: TriggersArgs,

    /// How long to keep retrying an unreachable database at startup before giving up
    /// (`forever`, or e.g. `30s`). Default: for ever when DATABASE_URL is set (a service
    /// started before its database), 0 otherwise (a developer wants to know now).
    #[arg(long, env = "PGRELAY_STARTUP_TIMEOUT", value_parser = parse_timeout)]
    pub startup_timeout: Option<Timeout>,

    /// How long changes stay in the change log: catch-up after a disconnect and server-sent
    /// event resumes reach back this far.
    #[arg(long, env = "PGRELAY_RETENTION", default_value = "15m", value_parser = parse_duration)]
    pub retention: Duration,

    /// HS256 secret that signs client JWTs (Supabase's JWT secret). With any key configured,
    /// auth is required: connect `apikey`, join `access_token`, HTTP `Authorization: Bearer`.
    #[arg(long, env = "PGRELAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with the RS256 or ES256 public key that verifies client JWTs.
    #[arg(long, env = "PGRELAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS file (a JSON Web Key Set) whose RS256/ES256 keys verify client JWTs.
    #[arg(long, env = "PGRELAY_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Channel whose presence `track({user_id, poll_id?})` starts a `button_holds` row that the
    /// relay keeps alive and ends on untrack, leave or disconnect. Empty to turn off.
    #[arg(long, env = "PGRELAY_HOLD_CHANNEL", default_value = "button-presence")]
    pub hold_channel: String,

    /// How often the relay refreshes `last_heartbeat` of every hold it runs, in one statement.
    #[arg(long, env = "PGRELAY_HOLD_HEARTBEAT", default_value = "3s", value_parser = parse_duration)]
    pub hold_heartbeat: Duration,

    /// Also end stale button-hold sessions in this process, as `pgrelay cleanup` does.
    #[arg(long, env = "PGRELAY_CLEANUP", value_parser = clap::builder::BoolishValueParser::new())]
    pub cleanup: bool,

    /// With --cleanup: how often stale sessions are looked for.
    #[arg(long, env = "PGRELAY_CLEANUP_INTERVAL", default_value = "5s", value_parser = parse_period)]
    pub cleanup_interval: Duration,

    /// With --cleanup: a session whose last heartbeat is older than this is ended.
    #[arg(long, env = "PGRELAY_STALE_AFTER", default_value = "10s", value_parser = parse_period)]
    pub stale_after: Duration,

    /// Web page origins (`scheme://host[:port]`, comma-separated, or `*`) that may open a
    /// socket or call the HTTP API from a browser. Default: with auth on, any; with auth off,
    /// the relay's own origin and loopback origins only.
    #[arg(long, env = "PGRELAY_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// A secret that `GET /metrics` requires as `Authorization: Bearer <token>`. Unset:
    /// `/metrics` is open to anyone who can reach the relay.
    #[arg(long, env = "PGRELAY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Redis shared by several relays (`redis://[user:password@]host:port[/db]`): broadcasts
    /// and presence then reach the clients of every relay that uses it. Unset: this relay is
    /// a single node.
    #[arg(long, env = "PGRELAY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel the relays use: relays with the same Redis and
    /// prefix act as one.
    #[arg(long, env = "PGRELAY_REDIS_PREFIX", default_value = "pgrelay")]
    pub redis_prefix: String,

    #[command(flatten)]
    pub limits: Limits,
}

impl ServeArgs {
    /// The session cleanup to run inside the relay, if `--cleanup` asked for one.
    pub fn session_cleanup(&self) -> Option<SessionCleanup> {
        self.cleanup.then_some(SessionCleanup {
            interval: self.cleanup_interval,
            stale_after: self.stale_after,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// How often stale sessions are looked for (each look is one UPDATE).
    #[arg(long, env = "PGRELAY_CLEANUP_INTERVAL", default_value = "5s", value_parser = parse_period)]
    pub interval: Duration,

    /// A session whose last heartbeat is older than this is ended. Clients heartbeat every
    /// 3 s, so this should span a few missed heartbeats.
    #[arg(long, env = "PGRELAY_STALE_AFTER", default_value = "10s", value_parser = parse_period)]
    pub stale_after: Duration,

    /// How long changes stay in the change log before this process prunes them.
    #[arg(long, env = "PGRELAY_RETENTION", default_value = "15m", value_parser = parse_duration)]
    pub retention: Duration,

    /// How long to keep retrying an unreachable database at startup (`forever`, or e.g.
    /// `30s`). Default: for ever when DATABASE_URL is set, 0 otherwise.
    #[arg(long, env = "PGRELAY_STARTUP_TIMEOUT", value_parser = parse_timeout)]
    pub startup_timeout: Option<Timeout>,
}

impl CleanupArgs {
    pub fn session_cleanup(&self) -> SessionCleanup {
        SessionCleanup {
            interval: self.interval,
            stale_after: self.stale_after,
        }
    }
}

/// How stale button-hold sessions are ended (`pgrelay cleanup`, `serve --cleanup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCleanup {
    /// Time between the starts of two passes.
    pub interval: Duration,
    /// A session whose `last_heartbeat` is older than this is ended.
    pub stale_after: Duration,
}

impl Default for SessionCleanup {
    fn default() -> Self {
        SessionCleanup {
            interval: Duration::from_secs(5),
            stale_after: Duration::from_secs(10),
        }
    }
}

/// A duration or `forever`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    Forever,
    After(Duration),
}

impl Timeout {
    pub fn as_option(self) -> Option<Duration> {
        match self {
            Timeout::Forever => None,
            Timeout::After(d) => Some(d),
        }
    }
}

pub fn parse_timeout(s: &str) -> Result<Timeout, String> {
    if s.trim().eq_ignore_ascii_case("forever") {
        Ok(Timeout::Forever)
    } else {
        parse_duration(s).map(Timeout::After)
    }
}

/// Limits, named after Supabase Realtime's where it has one. Each bounds memory or work that a
/// client could otherwise grow without end.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Open connections of every kind (sockets, event streams, HTTP); one more gets a 429.
    #[arg(long, env = "PGRELAY_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Channels one socket may join (Supabase: `max_channels_per_client`).
    #[arg(long, env = "PGRELAY_MAX_CHANNELS_PER_CLIENT", default_value_t = 100)]
    pub max_channels_per_client: usize,

    /// `postgres_changes` bindings in one join.
    #[arg(long, env = "PGRELAY_MAX_BINDINGS_PER_CHANNEL", default_value_t = 100)]
    pub max_bindings_per_channel: usize,

    /// Frames queued for one socket before it is cut off as too slow. The queue absorbs bursts;
    /// a client that stays behind is disconnected rather than slowing anyone else down.
    #[arg(long, env = "PGRELAY_SOCKET_QUEUE", default_value_t = 1024)]
    pub socket_queue: usize,

    /// Bytes queued for one socket before it is cut off as too slow.
    #[arg(long, env = "PGRELAY_SOCKET_QUEUE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub socket_queue_bytes: usize,

    /// Largest WebSocket message accepted from a client, in bytes; a larger one closes the
    /// socket (1009). The default leaves room for the largest broadcast payload, so an
    /// oversized payload gets an error reply and the socket lives on.
    #[arg(long, env = "PGRELAY_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Largest broadcast payload (Supabase's tenant default: 3,000 KB).
    #[arg(
        long,
        env = "PGRELAY_MAX_BROADCAST_PAYLOAD_BYTES",
        default_value_t = 3_000_000
    )]
    pub max_broadcast_payload_bytes: usize,

    /// Largest presence payload one `track()` may carry ("Track message size exceeded").
    #[arg(
        long,
        env = "PGRELAY_MAX_PRESENCE_PAYLOAD_BYTES",
        default_value_t = 10_000
    )]
    pub max_presence_payload_bytes: usize,

    /// Presence pushes (track/untrack) one socket may send per second; a press-and-hold app
    /// re-tracks every few seconds, far below this.
    #[arg(
        long,
        env = "PGRELAY_MAX_PRESENCE_EVENTS_PER_SECOND",
        default_value_t = 10
    )]
    pub max_presence_events_per_second: u32,

    /// Presences one topic may hold, on all relays together. A track beyond it is refused
    /// (`PresenceLimitReached`): every presence change goes to every member, so a topic's
    /// presence traffic grows with the square of its members.
    #[arg(long, env = "PGRELAY_MAX_PRESENCE_PER_TOPIC", default_value_t = 1000)]
    pub max_presence_per_topic: usize,

    /// Joins one socket may send per second. Over it the join is refused with Supabase's
    /// `ClientJoinRateLimitReached: Too many joins per second` and the socket is closed, as
    /// Supabase does: a client rejoining in a loop is broken, and each join costs validation.
    #[arg(long, env = "PGRELAY_MAX_JOINS_PER_SECOND", default_value_t = 100)]
    pub max_joins_per_second: u32,

    /// Messages (pushes of any kind but heartbeats) one socket may send per second. Over it a
    /// push is not processed and is answered with an error reply (`Too many messages per
    /// second`); the socket and its channels stay up.
    #[arg(long, env = "PGRELAY_MAX_MESSAGES_PER_SECOND", default_value_t = 1000)]
    pub max_messages_per_second: u32,

    /// A socket that sends nothing (not even a heartbeat) for this long is closed, so its
    /// resources are freed when a client vanishes without a close frame.
    #[arg(long, env = "PGRELAY_HEARTBEAT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Changes buffered between the change-log reader and the router. When full, the reader
    /// waits; the change log holds the rest.
    #[arg(long, env = "PGRELAY_CHANGE_BUFFER", default_value_t = 65_536)]
    pub change_buffer: usize,

    /// How often the LISTEN session is probed with a query, and how long the probe may take
    /// before the session is declared dead (a half-open TCP connection otherwise looks alive).
    #[arg(long, env = "PGRELAY_LISTENER_PROBE", default_value = "10s", value_parser = parse_duration)]
    pub listener_probe: Duration,

    /// How changes reach the relay: `adaptive` (NOTIFY while writes are quiet, tail the change
    /// log under write load), `notify` (always NOTIFY) or `tail` (never NOTIFY).
    #[arg(long, env = "PGRELAY_INGEST", default_value = "adaptive", value_parser = parse_ingest_mode)]
    pub ingest: IngestMode,

    /// While tailing, time between two reads of the change log when nothing changes; while
    /// changes flow, reads start every 1 ms (or this, if shorter).
    #[arg(long, env = "PGRELAY_TAIL_INTERVAL", default_value = "5ms", value_parser = parse_period)]
    pub tail_interval: Duration,

    /// `adaptive`: above this many committed transactions per second the relay tails the
    /// change log and the triggers stop notifying; below a quarter of it for 5 s, they notify
    /// again.
    #[arg(long, env = "PGRELAY_TAIL_ABOVE", default_value_t = 200)]
    pub tail_above: u32,
    #[command(flatten)]
    pub guards: Guards,
}

/// How committed changes reach the relay. The change log is always the source of every
/// change; the modes differ only in what tells the relay to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// NOTIFY while writes are quiet (lowest latency, no reads while idle); tail the log when
    /// the commit rate would make the NOTIFY commit lock the bottleneck.
    Adaptive,
    /// Every change's transaction sends a NOTIFY: the commit lock serializes notifying
    /// commits cluster-wide.
    Notify,
    /// No NOTIFY at all: the relay reads the log every `tail_interval`.
    Tail,
}

impl IngestMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IngestMode::Adaptive => "adaptive",
            IngestMode::Notify => "notify",
            IngestMode::Tail => "tail",
        }
    }
}

pub fn parse_ingest_mode(s: &str) -> Result<IngestMode, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "adaptive" => Ok(IngestMode::Adaptive),
        "notify" => Ok(IngestMode::Notify),
        "tail" => Ok(IngestMode::Tail),
        _ => Err(format!(
            "invalid ingest mode {s:?}: use adaptive, notify or tail"
        )),
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_channels_per_client: 100,
            max_bindings_per_channel: 100,
            socket_queue: 1024,
            socket_queue_bytes: 16 * 1024 * 1024,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_broadcast_payload_bytes: 3_000_000,
            max_presence_payload_bytes: 10_000,
            max_presence_events_per_second: 10,
            max_presence_per_topic: 1000,
            max_joins_per_second: 100,
            max_messages_per_second: 1000,
            heartbeat_timeout: Duration::from_secs(60),
            change_buffer: 65_536,
            listener_probe: Duration::from_secs(10),
            ingest: IngestMode::Adaptive,
            tail_interval: Duration::from_millis(5),
            tail_above: 200,
            guards: Guards::default(),
        }
    }
}

/// Everything `server::run` needs, assembled from the CLI (or directly by tests).
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    /// `PGRELAY_READ_URL`: a hot standby that changes and reads come from (`None`: the
    /// primary, `database_url`, does everything).
    pub read_url: Option<String>,
    pub channel: String,
    pub triggers_dir: Option<PathBuf>,
    /// How long to keep retrying an unreachable database at startup; `None`: for ever.
    pub startup_timeout: Option<Duration>,
    /// How long changes stay in the change log (catch-up and server-sent events reach back
    /// this far).
    pub retention: Duration,
    /// HS256 shared secret for JWTs (auth is on when any key is configured).
    pub jwt_secret: Option<String>,
    /// PEM public key (RS256 or ES256) for JWTs.
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file (RS256/ES256 keys, matched by `kid`).
    pub jwks_file: Option<PathBuf>,
    /// The channel whose presence tracks with a `user_id` start relay-run holds (`None`: off).
    pub hold_channel: Option<String>,
    /// How often the relay refreshes `last_heartbeat` of the holds it runs (one statement).
    pub hold_heartbeat: Duration,
    /// End stale button-hold sessions inside the relay (`serve --cleanup`); `None`: leave it to
    /// a `pgrelay cleanup` process.
    pub cleanup: Option<SessionCleanup>,
    /// Required as a bearer token by `GET /metrics`, when set.
    pub metrics_token: Option<String>,
    /// `PGRELAY_ALLOWED_ORIGINS`; `None`: the default for whether auth is on.
    pub allowed_origins: Option<String>,
    /// `PGRELAY_REDIS_URL`: the Redis shared with other relays; `None`: a single node.
    pub redis_url: Option<String>,
    /// `PGRELAY_REDIS_PREFIX`.
    pub redis_prefix: String,
    pub limits: Limits,
}

impl Config {
    /// A configuration with defaults for everything but the database.
    pub fn new(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            pool_size: 8,
            read_url: None,
            channel: "pgrelay".to_owned(),
            triggers_dir: None,
            startup_timeout: Some(Duration::ZERO),
            retention: Duration::from_secs(15 * 60),
            jwt_secret: None,
            jwt_public_key: None,
            jwks_file: None,
            hold_channel: Some("button-presence".to_owned()),
            hold_heartbeat: Duration::from_secs(3),
            cleanup: None,
            metrics_token: None,
            allowed_origins: None,
            redis_url: None,
            redis_prefix: "pgrelay".to_owned(),
            limits: Limits::default(),
        }
    }
}

/// Channel names are interpolated into `LISTEN` and into the `pgrelay.channel()` function, so
/// only plain lowercase identifiers are accepted: nothing to quote, nothing to inject.
pub fn parse_channel(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid channel {s:?}: use a lowercase identifier (a-z, 0-9, _; at most 63 bytes)"
        ))
    }
}

/// Durations like `60s`, `500ms`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 2m"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        other => Err(format!(
            "invalid duration unit {other:?} in {s:?}: use ms, s, m or h"
        )),
    }
}

/// A [`parse_duration`] that must be more than zero: a period of 0 would spin.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("invalid duration {s:?}: must be more than 0")),
        d => Ok(d),
    }
}

impl ServeArgs {
    /// `serve`'s arguments when no command is given: defaults plus environment variables.
    pub fn parse_default() -> ServeArgs {
        #[derive(Debug, Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Only::parse_from(["pgrelay"]).serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn channels() {
        assert!(parse_channel("pgrelay").is_ok());
        assert!(parse_channel("pg_relay_2").is_ok());
        assert!(parse_channel("Pgrelay").is_err());
        assert!(parse_channel("a;drop").is_err());
        assert!(parse_channel("").is_err());
        assert!(parse_channel("9abc").is_err());
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::parse_from(["pgrelay"]);
        assert!(cli.command.is_none());
        assert_eq!(parse_timeout("forever"), Ok(Timeout::Forever));
        assert_eq!(
            parse_timeout("3s"),
            Ok(Timeout::After(Duration::from_secs(3)))
        );
        let cli = Cli::parse_from(["pgrelay", "serve", "--listen", "127.0.0.1:0"]);
        match cli.command {
            Some(Command::Serve(args)) => {
                assert_eq!(args.listen.port(), 0);
                assert_eq!(args.triggers.channel, "pgrelay");
                assert_eq!(args.limits.max_channels_per_client, 100);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn read_url_is_optional_and_accepted_after_the_command() {
        assert_eq!(Cli::parse_from(["pgrelay"]).database.read_url, None);
        let cli = Cli::parse_from(["pgrelay", "serve", "--read-url", "postgres://standby/app"]);
        assert_eq!(
            cli.database.read_url.as_deref(),
            Some("postgres://standby/app")
        );
    }

    #[test]
    fn cleanup_settings() {
        assert!(parse_period("0s").is_err());
        assert_eq!(parse_period("200ms"), Ok(Duration::from_millis(200)));
        let cli = Cli::parse_from(["pgrelay", "serve"]);
        match cli.command {
            Some(Command::Serve(args)) => assert_eq!(args.session_cleanup(), None),
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::parse_from(["pgrelay", "serve", "--cleanup", "--stale-after", "30s"]);
        match cli.command {
            Some(Command::Serve(args)) => assert_eq!(
                args.session_cleanup(),
                Some(SessionCleanup {
                    interval: Duration::from_secs(5),
                    stale_after: Duration::from_secs(30),
                })
            ),
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::parse_from(["pgrelay", "cleanup", "--interval", "500ms"]);
        match cli.command {
            Some(Command::Cleanup(args)) => {
                assert_eq!(args.interval, Duration::from_millis(500));
                assert_eq!(args.stale_after, Duration::from_secs(10));
                assert_eq!(args.retention, Duration::from_secs(15 * 60));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["pgrelay", "cleanup", "--interval", "soon"]).is_err());
    }
}
