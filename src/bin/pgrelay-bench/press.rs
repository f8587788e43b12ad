//! A pressing client's press → hold → release cycle on a fixed schedule: a presence `track`
//! of `{user_id, poll_id, pressed_at}` on the hold channel (the relay starts a `button_holds`
//! row), then an `untrack` after the hold time (the relay ends it). Slots already past are
//! skipped, as the writers do.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::spec::{PressSchedule, PresserSpec, HOLD_CHANNEL};
use crate::stats::{AppStats, Shared};
use crate::ts::now_us;

/// Where a presser is in its press → hold → release cycle.
#[derive(Debug, Clone, Copy)]
enum PressState {
    /// The schedule is not known yet.
    Waiting,
    /// The next press is due at this instant.
    Idle(Instant),
    /// Track sent, waiting for its reply.
    Tracking {
        msg_ref: u64,
        pressed_at: i64,
        sent: Instant,
    },
    /// Holding until this instant.
    Holding { until: Instant, pressed_at: i64 },
    /// No more presses.
    Done,
}

/// One client's presses.
#[derive(Debug)]
pub(crate) struct Presser {
    spec: PresserSpec,
    schedule: Option<PressSchedule>,
    state: PressState,
    /// The schedule slot of the next press.
    slot: u64,
}

impl Presser {
    pub(crate) fn new(spec: PresserSpec) -> Presser {
        Presser {
            spec,
            schedule: None,
            state: PressState::Waiting,
            slot: 0,
        }
    }

    fn slot_at(&self, slot: u64) -> Option<Instant> {
        let s = self.schedule?;
        let period = self.spec.period.as_secs_f64();
        Some(s.start + self.spec.offset + Duration::from_secs_f64(slot as f64 * period))
    }

    /// Move to the next slot, skipping slots already past (as the writers do), or to `Done`.
    fn next_press(&mut self) {
        let Some(s) = self.schedule else {
            self.state = PressState::Done;
            return;
        };
        self.slot += 1;
        let now = Instant::now();
        let mut due = self.slot_at(self.slot).unwrap_or(s.stop);
        if due + MAX_BEHIND < now {
            let behind = now.saturating_duration_since(s.start + self.spec.offset);
            let period = self.spec.period.as_secs_f64().max(1e-3);
            self.slot = (behind.as_secs_f64() / period).ceil() as u64;
            due = self.slot_at(self.slot).unwrap_or(s.stop);
        }
        self.state = if due >= s.stop {
            PressState::Done
        } else {
            PressState::Idle(due)
        };
    }

    /// When the next action (press or release) is due.
    pub(crate) fn due(&self) -> Option<Instant> {
        match self.state {
            PressState::Idle(at) => Some(at),
            PressState::Holding { until, .. } => Some(until),
            _ => None,
        }
    }

    /// The schedule is not known yet.
    pub(crate) fn waiting(&self) -> bool {
        matches!(self.state, PressState::Waiting)
    }

    /// The schedule is known: the first press is due.
    pub(crate) fn start(&mut self, schedule: Option<PressSchedule>) {
        match schedule {
            Some(s) => {
                self.schedule = Some(s);
                let first = self.slot_at(0).unwrap_or(s.stop);
                self.state = if first < s.stop {
                    PressState::Idle(first)
                } else {
                    PressState::Done
                };
            }
            None => self.state = PressState::Done,
        }
    }

    /// A reply to the pending track, if `msg_ref` is its ref.
    pub(crate) fn on_reply(&mut self, msg_ref: u64, ok: bool, app: &mut AppStats, shared: &Shared) {
        let PressState::Tracking {
            msg_ref: pending,
            pressed_at,
            sent,
        } = self.state
        else {
            return;
        };
        if pending != msg_ref {
            return;
        }
        if ok {
            app.tracks_ok += 1;
            app.track_hist
                .record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
            let win = shared.window();
            if pressed_at >= win.0 && pressed_at < win.1 {
                app.tracks_window += 1;
                let members = shared.presence_members.load(Ordering::Relaxed);
                shared
                    .presence_expected
                    .fetch_add(members, Ordering::Relaxed);
            }
            self.state = PressState::Holding {
                until: sent + self.spec.hold,
                pressed_at,
            };
        } else {
            // The error itself is counted by the caller, as every error reply.
            app.track_errors += 1;
            shared.holds_open.fetch_sub(1, Ordering::Relaxed);
            self.next_press();
        }
    }

    /// The frame of the press or release due at `now`, if any, on the hold channel joined with
    /// `jr`; `next_ref` is the client's message ref counter.
    pub(crate) fn step(
        &mut self,
        now: Instant,
        jr: u64,
        next_ref: &mut u64,
        app: &mut AppStats,
        shared: &Shared,
    ) -> Option<String> {
        match self.state {
            PressState::Idle(at) if at <= now => {
                let poll = self
                    .spec
                    .polls
                    .get((self.spec.index + self.slot as usize) % self.spec.polls.len().max(1))
                    .copied()
                    .unwrap_or(1);
                let pressed_at = now_us();
                *next_ref += 1;
                let msg_ref = *next_ref;
                self.state = PressState::Tracking {
                    msg_ref,
                    pressed_at,
                    sent: now,
                };
                app.tracks += 1;
                shared.holds_open.fetch_add(1, Ordering::Relaxed);
                Some(format!(
                    "[\"{jr}\",\"{msg_ref}\",\"realtime:{HOLD_CHANNEL}\",\"presence\",{{\"type\":\"presence\",\"event\":\"track\",\"payload\":{{\"user_id\":\"{}\",\"poll_id\":{poll},\"pressed_at\":{pressed_at}}}}}]",
                    self.spec.user_id
                ))
            }
            PressState::Holding { until, pressed_at } if until <= now => {
                *next_ref += 1;
                let msg_ref = *next_ref;
                app.untracks += 1;
                let win = shared.window();
                if pressed_at >= win.0 && pressed_at < win.1 {
                    app.untracks_window += 1;
                    let members = shared.presence_members.load(Ordering::Relaxed);
                    shared
                        .presence_expected
                        .fetch_add(members, Ordering::Relaxed);
                }
                shared.holds_open.fetch_sub(1, Ordering::Relaxed);
                self.next_press();
                Some(format!(
                    "[\"{jr}\",\"{msg_ref}\",\"realtime:{HOLD_CHANNEL}\",\"presence\",{{\"type\":\"presence\",\"event\":\"untrack\"}}]"
                ))
            }
            _ => None,
        }
    }
}

/// How late a press may be before the presser skips it rather than press late.
const MAX_BEHIND: Duration = Duration::from_millis(100);
