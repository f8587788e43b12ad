//! Settings that bound what one caller can make the relay do over HTTP: the REST
//! broadcast's batch size and rate. Flattened into [`super::Limits`] as `limits.guards`.

use clap::Args;

/// Per-caller rates and per-connection deadlines.
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
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_broadcast_batch: 100,
            max_broadcasts_per_second: 100,
        }
    }
}
