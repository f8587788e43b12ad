//! What each client joins and must receive, and whether and when it presses the hold button.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::db::{WriteCounts, HOLD_END, HOLD_START, VOTE};
use crate::params::{Kind, Params};

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

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// What each client subscribes to and must receive, and whether it presses.
pub(crate) fn client_spec(
    p: &Params,
    i: usize,
    polls: &Arc<Vec<i64>>,
    profiles: &[String],
    schedule: &watch::Receiver<Option<PressSchedule>>,
) -> ClientSpec {
    let holds = |filter: Option<String>| {
        let filter = filter.map_or_else(String::new, |f| format!(",\"filter\":{}", json_str(&f)));
        format!(
            "[{{\"event\":\"INSERT\",\"schema\":\"public\",\"table\":\"button_holds\"{filter}}}]"
        )
    };
    match p.kind {
        Kind::Baseline | Kind::Fanout => ClientSpec {
            channels: vec![ChannelSpec {
                name: "bench".into(),
                bindings: holds(None),
                presence_key: None,
            }],
            interest: Interest::AllHolds,
            presser: None,
        },
        Kind::Filtered | Kind::Idle => {
            let k = i % polls.len().max(1);
            let poll = polls.get(k).copied().unwrap_or(1);
            ClientSpec {
                channels: vec![ChannelSpec {
                    name: "bench".into(),
                    bindings: holds(Some(format!("poll_id=eq.{poll}"))),
                    presence_key: None,
                }],
                interest: if p.kind == Kind::Idle {
                    Interest::Nothing
                } else {
                    Interest::Poll(k)
                },
                presser: None,
            }
        }
        Kind::Mixed => {
            let user = profiles
                .get(i % profiles.len().max(1))
                .cloned()
                .unwrap_or_default();
            let presser = p.press.and_then(|press| {
                let j = press.presser_of(i, p.clients)?;
                Some(PresserSpec {
                    user_id: user.clone(),
                    polls: polls.clone(),
                    index: j,
                    offset: Duration::from_secs_f64(j as f64 / press.rate),
                    period: press.period,
                    hold: press.hold,
                    schedule: schedule.clone(),
                })
            });
            ClientSpec {
                channels: vec![
                    ChannelSpec {
                        name: "polls-changes".into(),
                        bindings: r#"[{"event":"*","schema":"public","table":"polls"},{"event":"*","schema":"public","table":"user_votes"}]"#.into(),
                        presence_key: None,
                    },
                    ChannelSpec {
                        name: "statistics-updates".into(),
                        bindings: r#"[{"event":"INSERT","schema":"public","table":"user_votes"},{"event":"INSERT","schema":"public","table":"polls"},{"event":"INSERT","schema":"public","table":"profiles"}]"#.into(),
                        presence_key: None,
                    },
                    ChannelSpec {
                        name: "button-sessions".into(),
                        bindings: r#"[{"event":"*","schema":"public","table":"button_holds"}]"#.into(),
                        presence_key: None,
                    },
                    // Presence keyed by the user: everyone sees the holders.
                    ChannelSpec {
                        name: HOLD_CHANNEL.into(),
                        bindings: "[]".into(),
                        presence_key: Some(user),
                    },
                    // The live aggregate topic: the current value on join, then each change.
                    ChannelSpec {
                        name: "statistics".into(),
                        bindings: "[]".into(),
                        presence_key: None,
                    },
                ],
                interest: Interest::App,
                presser,
            }
        }
    }
}

/// What a client with `interest` must receive of the changes counted in `c`.
pub(crate) fn expected(interest: Interest, c: &WriteCounts) -> u64 {
    match interest {
        Interest::AllHolds => c.window[HOLD_START],
        Interest::Poll(k) => c.per_poll.get(k).copied().unwrap_or(0),
        Interest::App => c.window[HOLD_START] + c.window[HOLD_END] + 2 * c.window[VOTE],
        Interest::Nothing => 0,
    }
}
