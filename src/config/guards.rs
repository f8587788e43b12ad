//! Settings that bound what one caller can make the relay do over HTTP and in a WebSocket
//! frame: the REST broadcast's batch size and rate, the boost rate, how long a message or a request head may
//! take to arrive. Flattened into [`super::Limits`] as `limits.guards`.

use std::time::Duration;

use clap::Args;

use super::parse_period;

/// The default `max_message_bytes`: the default broadcast payload limit (3,000,000) and 64
/// KiB of envelope, the most the protocol needs; nothing larger is ever buffered. Supabase
/// accepts frames up to 5,000,000 bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 3_000_000 + 64 * 1024;

/// Per-caller rates (0 turns one off) and per-connection deadlines.
#[derive(Debug, Clone, Args)]
pub struct Guards {
    /// Messages one REST broadcast request may carry; a larger batch is refused whole with
    /// 429 (`Too many messages to broadcast, please reduce the batch size`).
    #[arg(long, env = "PGRELAY_MAX_BROADCAST_BATCH", default_value_t = 100)]
    pub max_broadcast_batch: u32,

    /// REST broadcast messages one caller (a token's `sub`, else the client IP) may send per
    /// second, bursts up to the same number. Over it a request is refused whole with 429
    /// (`You have exceeded your rate limit`), so a flood never reaches subscriber queues.
    #[arg(long, env = "PGRELAY_MAX_BROADCASTS_PER_SECOND", default_value_t = 100)]
    pub max_broadcasts_per_second: u32,

    /// Boosts one user (a token's `sub`, or `X-User-Id` with auth off) may make per minute;
    /// over it `POST /api/v1/polls/{id}/boost` is 429 `BoostRateLimitReached`.
    #[arg(long, env = "PGRELAY_MAX_BOOSTS_PER_MINUTE", default_value_t = 10)]
    pub max_boosts_per_minute: u32,

    /// Boosts one client IP may make per minute, whoever it says it is (several users
    /// behind one NAT share it).
    #[arg(
        long,
        env = "PGRELAY_MAX_BOOSTS_PER_IP_PER_MINUTE",
        default_value_t = 60
    )]
    pub max_boosts_per_ip_per_minute: u32,

    /// A WebSocket message whose first byte arrived this long ago and that is still not
    /// complete closes the socket (1008, `message not completed within …`): a client cannot
    /// hold a half-sent message, and the buffer reserved for it, for longer.
    #[arg(long, env = "PGRELAY_FRAME_TIMEOUT", default_value = "5s", value_parser = parse_period)]
    pub frame_timeout: Duration,

    /// An HTTP connection waiting for a request (a new one, or one kept alive after a
    /// response) must send the request's complete head within this, else it is closed.
    #[arg(long, env = "PGRELAY_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_period)]
    pub http_header_timeout: Duration,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_broadcast_batch: 100,
            max_broadcasts_per_second: 100,
            max_boosts_per_minute: 10,
            max_boosts_per_ip_per_minute: 60,
            frame_timeout: Duration::from_secs(5),
            http_header_timeout: Duration::from_secs(10),
        }
    }
}
