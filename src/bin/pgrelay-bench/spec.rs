//! What each client joins and must receive, and whether and when it presses the hold button.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Which committed changes a client must receive (for the drop count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Every `button_holds` insert.
    AllHolds,
    /// `button_holds` inserts of one poll (index into the seeded polls).
    Poll(usize),
    /// The reference app's three channels: hold starts and ends once, votes twice
    /// (`polls-changes` and `statistics-updates`).
    App,
    /// Nothing is written.
    Nothing,
}

/// One channel to join: its name, its `postgres_changes` bindings (a JSON array, `[]` for
/// none) and its presence key (`None`: presence disabled).
#[derive(Debug, Clone)]
pub(crate) struct ChannelSpec {
    pub(crate) name: String,
    pub(crate) bindings: String,
    pub(crate) presence_key: Option<String>,
}

impl ChannelSpec {
    pub(crate) fn has_bindings(&self) -> bool {
        self.bindings.trim() != "[]"
    }
}

/// The channel whose presence tracks start relay-run holds (the relay's default).
pub(crate) const HOLD_CHANNEL: &str = "button-presence";

/// When presses happen: from `start` (one hold time before the writers start) until `stop`
/// (the end of the window; no press at or after it). Published once every client is ready.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PressSchedule {
    pub(crate) start: Instant,
    pub(crate) stop: Instant,
}

/// A client that presses the hold button: press `n` is due at `start + offset + n × period`
/// and released `hold` after it was sent.
#[derive(Debug, Clone)]
pub(crate) struct PresserSpec {
    /// `profiles.id` of this user (also its presence key).
    pub(crate) user_id: String,
    pub(crate) polls: Arc<Vec<i64>>,
    /// This presser's number (spreads the polls held).
    pub(crate) index: usize,
    pub(crate) offset: Duration,
    pub(crate) period: Duration,
    pub(crate) hold: Duration,
    pub(crate) schedule: watch::Receiver<Option<PressSchedule>>,
}

#[derive(Debug, Clone)]
pub(crate) struct ClientSpec {
    pub(crate) channels: Vec<ChannelSpec>,
    pub(crate) interest: Interest,
    pub(crate) presser: Option<PresserSpec>,
}
