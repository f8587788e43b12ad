//! Load-generating WebSocket clients speaking vsn 2.0.0, and what they count.
//!
//! A client joins its channels, waits for each join reply and each `Subscribed to PostgreSQL`,
//! reports ready, then reads until told to stop. Per change frame it only checks the event name,
//! finds the record's timestamp and records the latency; `presence_diff` frames and updates of
//! the `statistics` live topic are counted the same way, by byte search; any other frame is
//! parsed as JSON and checked for errors.
//!
//! In `mixed`, some clients also press and release the hold button: a presence `track` of
//! `{user_id, poll_id, pressed_at}` on `button-presence` (the relay starts a `button_holds` row),
//! then an `untrack` after the hold time (the relay ends it), on a fixed schedule.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::hist::Histogram;
use crate::ts::{change_ts_us, find, now_us};
use crate::ws::{self, WsClient};

/// Supabase's client heartbeat interval.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(25);
/// How long one client may take to connect and be subscribed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// State shared by the coordinator and every receiver.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The measured window, by the change's own timestamp (µs since the epoch); `i64::MAX`
    /// until the coordinator sets it, before the first write.
    window_start: AtomicI64,
    window_end: AtomicI64,
    /// Change frames received so far for changes inside the window (all receivers).
    pub(crate) window_frames: AtomicU64,
    /// Record keys holding the send timestamp, first match wins.
    pub(crate) keys: &'static [&'static [u8]],
    /// When the first write is due (µs since the epoch; `i64::MAX` until set): a `statistics`
    /// update received before it is the value sent on join.
    writes_start: AtomicI64,
    /// Clients receiving presence diffs on the hold channel (the ready clients of `mixed`).
    pub(crate) presence_members: AtomicU64,
    /// Presence diffs owed for presses inside the window, all clients: members × (tracks
    /// accepted + untracks sent).
    pub(crate) presence_expected: AtomicU64,
    /// Presence diffs received about presses inside the window (all clients).
    pub(crate) presence_window: AtomicU64,
    /// Holds pressed and not yet released (or refused): the drain waits for 0.
    pub(crate) holds_open: AtomicI64,
}

impl Shared {
    pub(crate) fn new(keys: &'static [&'static [u8]]) -> Shared {
        Shared {
            window_start: AtomicI64::new(i64::MAX),
            window_end: AtomicI64::new(i64::MAX),
            window_frames: AtomicU64::new(0),
            keys,
            writes_start: AtomicI64::new(i64::MAX),
            presence_members: AtomicU64::new(0),
            presence_expected: AtomicU64::new(0),
            presence_window: AtomicU64::new(0),
            holds_open: AtomicI64::new(0),
        }
    }

    pub(crate) fn set_writes_start(&self, us: i64) {
        self.writes_start.store(us, Ordering::Release);
    }

    pub(crate) fn set_window(&self, start_us: i64, end_us: i64) {
        self.window_end.store(end_us, Ordering::Release);
        self.window_start.store(start_us, Ordering::Release);
    }

    pub(crate) fn window(&self) -> (i64, i64) {
        (
            self.window_start.load(Ordering::Acquire),
            self.window_end.load(Ordering::Acquire),
        )
    }
}

/// What one receiver (WebSocket client or the baseline's LISTEN session) saw.
#[derive(Debug, Default)]
pub(crate) struct RecvStats {
    /// Change frames received, whatever their time.
    pub(crate) frames: u64,
    /// Change frames of changes inside the window: compared with what was committed.
    pub(crate) window: u64,
    /// Change frames received while the window was open (by receive time): the delivery rate.
    pub(crate) during_window: u64,
    /// Change frames without a readable timestamp.
    pub(crate) no_timestamp: u64,
    /// Latency of in-window changes, µs.
    pub(crate) hist: Histogram,
}

impl RecvStats {
    /// Account for one change frame received at `now` (µs).
    pub(crate) fn on_change(&mut self, frame: &[u8], now: i64, win: (i64, i64), keys: &[&[u8]]) {
        self.frames += 1;
        if now >= win.0 && now < win.1 {
            self.during_window += 1;
        }
        match change_ts_us(frame, keys) {
            Some(ts) if ts >= win.0 && ts < win.1 => {
                self.window += 1;
                self.hist.record(u64::try_from(now - ts).unwrap_or(0));
            }
            Some(_) => {}
            None => self.no_timestamp += 1,
        }
    }

    pub(crate) fn merge(&mut self, o: &RecvStats) {
        self.frames += o.frames;
        self.window += o.window;
        self.during_window += o.during_window;
        self.no_timestamp += o.no_timestamp;
        self.hist.merge(&o.hist);
    }
}

/// What one `mixed` client saw of presence and of the `statistics` live topic, and what it did
/// as a presser.
#[derive(Debug, Default)]
pub(crate) struct AppStats {
    /// `presence_diff` frames received, whatever their time.
    pub(crate) diffs: u64,
    /// …received while the window was open (the delivery rate).
    pub(crate) diffs_during_window: u64,
    /// …about presses inside the window (by the track's send time, `pressed_at`): compared
    /// with what was owed.
    pub(crate) diffs_window: u64,
    /// `presence_diff` frames without a readable `pressed_at`.
    pub(crate) diffs_no_timestamp: u64,
    /// Track sent → the diff that shows the holder, for in-window presses, µs.
    pub(crate) diff_hist: Histogram,
    /// `statistics` updates received, the value sent on join included.
    pub(crate) updates: u64,
    /// …received while the window was open.
    pub(crate) updates_during_window: u64,
    /// Clients that got the current value right after joining `statistics` (0 or 1 here).
    pub(crate) initial: u64,
    /// Presses (tracks sent).
    pub(crate) tracks: u64,
    /// Tracks the relay accepted (hold row started).
    pub(crate) tracks_ok: u64,
    /// …of which pressed inside the window.
    pub(crate) tracks_window: u64,
    /// Tracks refused with an error reply.
    pub(crate) track_errors: u64,
    /// Releases (untracks sent).
    pub(crate) untracks: u64,
    /// …of presses inside the window.
    pub(crate) untracks_window: u64,
    /// Track sent → its ok reply (the relay replies once the hold row exists), µs.
    pub(crate) track_hist: Histogram,
}

impl AppStats {
    /// Account for one `presence_diff` frame received at `now` (µs).
    fn on_diff(&mut self, frame: &[u8], now: i64, win: (i64, i64)) {
        self.diffs += 1;
        if now >= win.0 && now < win.1 {
            self.diffs_during_window += 1;
        }
        // A release is a diff with no join; a press has the holder in `joins`.
        let join = find(frame, b"\"joins\":{}").is_none();
        match find(frame, PRESSED_AT).and_then(|p| parse_int(&frame[p + PRESSED_AT.len()..])) {
            Some(ts) if ts >= win.0 && ts < win.1 => {
                self.diffs_window += 1;
                if join {
                    self.diff_hist.record(u64::try_from(now - ts).unwrap_or(0));
                }
            }
            Some(_) => {}
            None => self.diffs_no_timestamp += 1,
        }
    }

    pub(crate) fn merge(&mut self, o: &AppStats) {
        self.diffs += o.diffs;
        self.diffs_during_window += o.diffs_during_window;
        self.diffs_window += o.diffs_window;
        self.diffs_no_timestamp += o.diffs_no_timestamp;
        self.diff_hist.merge(&o.diff_hist);
        self.updates += o.updates;
        self.updates_during_window += o.updates_during_window;
        self.initial += o.initial;
        self.tracks += o.tracks;
        self.tracks_ok += o.tracks_ok;
        self.tracks_window += o.tracks_window;
        self.track_errors += o.track_errors;
        self.untracks += o.untracks;
        self.untracks_window += o.untracks_window;
        self.track_hist.merge(&o.track_hist);
    }
}

/// The key of the press time in a track payload (and so in the metas of its diffs).
const PRESSED_AT: &[u8] = b"\"pressed_at\":";

/// A non-negative decimal integer at the start of `s`.
fn parse_int(s: &[u8]) -> Option<i64> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 18 {
        return None;
    }
    std::str::from_utf8(&s[..n]).ok()?.parse().ok()
}

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
    fn has_bindings(&self) -> bool {
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

/// Everything a client reports at the end.
#[derive(Debug, Default)]
pub(crate) struct ClientStats {
    pub(crate) ready: bool,
    pub(crate) recv: RecvStats,
    /// Presence and live-topic figures (`mixed`).
    pub(crate) app: AppStats,
    /// The last `statistics` update received (the whole frame): every client should end with
    /// the same.
    pub(crate) last_update: Option<Vec<u8>>,
    /// Error replies, `system` errors, `phx_error`/`phx_close`, unreadable frames.
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Close code if the relay closed the connection (or 1006 for a bare EOF) before the end.
    pub(crate) closed: Option<u16>,
    pub(crate) transport_error: Option<String>,
}

impl ClientStats {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    /// Account for one update of the `statistics` live topic received at `now` (µs).
    fn on_update(&mut self, frame: &[u8], now: i64, win: (i64, i64), writes_start: i64) {
        if find(frame, b"\"event\":\"update\"").is_none() || find(frame, b"\"rows\"").is_none() {
            self.error(format!(
                "unexpected frame on statistics: {}",
                String::from_utf8_lossy(&frame[..frame.len().min(200)])
            ));
            return;
        }
        // Nothing that the statistics depend on is written before the writers start.
        if self.app.updates == 0 && now < writes_start {
            self.app.initial += 1;
        }
        self.app.updates += 1;
        if now >= win.0 && now < win.1 {
            self.app.updates_during_window += 1;
        }
        let last = self.last_update.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(frame);
    }
}

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

#[derive(Debug)]
struct Presser {
    spec: PresserSpec,
    schedule: Option<PressSchedule>,
    state: PressState,
    /// The schedule slot of the next press.
    slot: u64,
}

impl Presser {
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
    fn due(&self) -> Option<Instant> {
        match self.state {
            PressState::Idle(at) => Some(at),
            PressState::Holding { until, .. } => Some(until),
            _ => None,
        }
    }
}

/// How late a press may be before the presser skips it rather than press late.
const MAX_BEHIND: Duration = Duration::from_millis(100);

/// Why a connection ended early.
enum End {
    Closed(u16),
    Transport(String),
}

struct Client {
    ws: WsClient,
    shared: Arc<Shared>,
    stats: ClientStats,
    /// `Subscribed to PostgreSQL` seen, per joined channel.
    subscribed: usize,
    /// Join refs are 1..=joins; ok replies to them seen.
    joins: u64,
    joined: usize,
    /// The join ref of the hold channel, if joined.
    hold_join_ref: Option<u64>,
    presser: Option<Presser>,
    /// A message split over continuation frames.
    fragment: Option<(u8, Vec<u8>)>,
    pong: Option<Vec<u8>>,
    next_ref: u64,
}

impl Client {
    /// Handle every complete frame in the buffer. `window_added` counts in-window changes.
    fn drain_frames(&mut self, now: i64, win: (i64, i64)) -> Result<u64, End> {
        let before = self.stats.recv.window;
        while let Some(f) = self.ws.next_frame().map_err(End::Transport)? {
            match f.opcode {
                ws::OP_TEXT | ws::OP_BINARY if f.fin => {
                    let payload = self.ws.payload(&f);
                    // Borrow juggling: classify on the buffer, then account.
                    if is_change(payload) {
                        self.stats
                            .recv
                            .on_change(payload, now, win, self.shared.keys);
                    } else if is_diff(payload) {
                        self.stats.app.on_diff(payload, now, win);
                    } else if is_update(payload) {
                        let writes_start = self.shared.writes_start.load(Ordering::Acquire);
                        self.stats.on_update(payload, now, win, writes_start);
                    } else if f.opcode == ws::OP_TEXT {
                        let v = serde_json::from_slice::<Value>(payload);
                        self.on_control(v);
                    }
                }
                ws::OP_TEXT | ws::OP_BINARY => {
                    self.fragment = Some((f.opcode, self.ws.payload(&f).to_vec()));
                }
                ws::OP_CONT => {
                    let Some((op, mut data)) = self.fragment.take() else {
                        return Err(End::Transport("continuation without a start".into()));
                    };
                    data.extend_from_slice(self.ws.payload(&f));
                    if !f.fin {
                        self.fragment = Some((op, data));
                    } else if is_change(&data) {
                        self.stats.recv.on_change(&data, now, win, self.shared.keys);
                    } else if is_diff(&data) {
                        self.stats.app.on_diff(&data, now, win);
                    } else if is_update(&data) {
                        let writes_start = self.shared.writes_start.load(Ordering::Acquire);
                        self.stats.on_update(&data, now, win, writes_start);
                    } else if op == ws::OP_TEXT {
                        self.on_control(serde_json::from_slice::<Value>(&data));
                    }
                }
                ws::OP_CLOSE => {
                    return Err(End::Closed(
                        ws::close_code(self.ws.payload(&f)).unwrap_or(1005),
                    ));
                }
                ws::OP_PING => self.pong = Some(self.ws.payload(&f).to_vec()),
                ws::OP_PONG => {}
                op => return Err(End::Transport(format!("unknown opcode {op}"))),
            }
        }
        Ok(self.stats.recv.window - before)
    }

    /// A frame that is not a change: replies, `system` messages, closes.
    fn on_control(&mut self, v: Result<Value, serde_json::Error>) {
        let Ok(Value::Array(a)) = v else {
            self.stats.error("unreadable frame".into());
            return;
        };
        let event = a.get(3).and_then(Value::as_str).unwrap_or("");
        let payload = a.get(4).unwrap_or(&Value::Null);
        let status = payload.get("status").and_then(Value::as_str);
        let msg_ref = a
            .get(1)
            .and_then(Value::as_str)
            .and_then(|r| r.parse::<u64>().ok());
        if event == "phx_reply" {
            if let Some(r) = msg_ref {
                if (1..=self.joins).contains(&r) && status == Some("ok") {
                    self.joined += 1;
                }
                self.on_track_reply(r, status == Some("ok"));
            }
        }
        match event {
            "phx_reply" if status == Some("ok") => {}
            "phx_reply" => {
                let reason = payload
                    .pointer("/response/reason")
                    .map_or_else(|| payload.to_string(), Value::to_string);
                self.stats.error(format!("error reply: {reason}"));
            }
            "system"
                if status == Some("ok")
                    && payload.get("extension").and_then(Value::as_str)
                        == Some("postgres_changes") =>
            {
                self.subscribed += 1;
            }
            "system" if status == Some("ok") => {}
            "system" => {
                let msg = payload
                    .get("message")
                    .map_or_else(|| payload.to_string(), Value::to_string);
                self.stats.error(format!("system error: {msg}"));
            }
            "phx_close" | "phx_error" => self.stats.error(format!("{event} from the relay")),
            _ => {}
        }
    }

    /// A reply to the presser's pending track, if `msg_ref` is its ref.
    fn on_track_reply(&mut self, msg_ref: u64, ok: bool) {
        let Some(p) = self.presser.as_mut() else {
            return;
        };
        let PressState::Tracking {
            msg_ref: pending,
            pressed_at,
            sent,
        } = p.state
        else {
            return;
        };
        if pending != msg_ref {
            return;
        }
        let app = &mut self.stats.app;
        if ok {
            app.tracks_ok += 1;
            app.track_hist
                .record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
            let win = self.shared.window();
            if pressed_at >= win.0 && pressed_at < win.1 {
                app.tracks_window += 1;
                let members = self.shared.presence_members.load(Ordering::Relaxed);
                self.shared
                    .presence_expected
                    .fetch_add(members, Ordering::Relaxed);
            }
            p.state = PressState::Holding {
                until: sent + p.spec.hold,
                pressed_at,
            };
        } else {
            // The error itself is counted by the caller, as every error reply.
            app.track_errors += 1;
            self.shared.holds_open.fetch_sub(1, Ordering::Relaxed);
            p.next_press();
        }
    }

    /// Press or release if due.
    async fn press_step(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let Some(jr) = self.hold_join_ref else {
            return Ok(());
        };
        let Some(p) = self.presser.as_mut() else {
            return Ok(());
        };
        let frame = match p.state {
            PressState::Idle(at) if at <= now => {
                let poll = p
                    .spec
                    .polls
                    .get((p.spec.index + p.slot as usize) % p.spec.polls.len().max(1))
                    .copied()
                    .unwrap_or(1);
                let pressed_at = now_us();
                self.next_ref += 1;
                let msg_ref = self.next_ref;
                p.state = PressState::Tracking {
                    msg_ref,
                    pressed_at,
                    sent: now,
                };
                self.stats.app.tracks += 1;
                self.shared.holds_open.fetch_add(1, Ordering::Relaxed);
                format!(
                    "[\"{jr}\",\"{msg_ref}\",\"realtime:{HOLD_CHANNEL}\",\"presence\",{{\"type\":\"presence\",\"event\":\"track\",\"payload\":{{\"user_id\":\"{}\",\"poll_id\":{poll},\"pressed_at\":{pressed_at}}}}}]",
                    p.spec.user_id
                )
            }
            PressState::Holding { until, pressed_at } if until <= now => {
                self.next_ref += 1;
                let msg_ref = self.next_ref;
                let app = &mut self.stats.app;
                app.untracks += 1;
                let win = self.shared.window();
                if pressed_at >= win.0 && pressed_at < win.1 {
                    app.untracks_window += 1;
                    let members = self.shared.presence_members.load(Ordering::Relaxed);
                    self.shared
                        .presence_expected
                        .fetch_add(members, Ordering::Relaxed);
                }
                self.shared.holds_open.fetch_sub(1, Ordering::Relaxed);
                p.next_press();
                format!(
                    "[\"{jr}\",\"{msg_ref}\",\"realtime:{HOLD_CHANNEL}\",\"presence\",{{\"type\":\"presence\",\"event\":\"untrack\"}}]"
                )
            }
            _ => return Ok(()),
        };
        self.ws.send_text(&frame).await.map_err(End::Transport)
    }

    /// The schedule is known: the first press is due.
    fn start_pressing(&mut self, schedule: Option<PressSchedule>) {
        let Some(p) = self.presser.as_mut() else {
            return;
        };
        match schedule {
            Some(s) => {
                p.schedule = Some(s);
                let first = p.slot_at(0).unwrap_or(s.stop);
                p.state = if first < s.stop {
                    PressState::Idle(first)
                } else {
                    PressState::Done
                };
            }
            None => p.state = PressState::Done,
        }
    }

    fn press_due(&self) -> Option<Instant> {
        self.presser.as_ref().and_then(Presser::due)
    }

    fn waiting_for_schedule(&self) -> bool {
        self.presser
            .as_ref()
            .is_some_and(|p| matches!(p.state, PressState::Waiting))
    }

    async fn flush_pong(&mut self) -> Result<(), End> {
        if let Some(p) = self.pong.take() {
            self.ws
                .send(ws::OP_PONG, &p)
                .await
                .map_err(End::Transport)?;
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), End> {
        self.next_ref += 1;
        let hb = format!(
            "[null,\"{}\",\"phoenix\",\"heartbeat\",{{}}]",
            self.next_ref
        );
        self.ws.send_text(&hb).await.map_err(End::Transport)
    }
}

/// Is this vsn-2 frame a `postgres_changes` event?
pub(crate) fn is_change(frame: &[u8]) -> bool {
    let head = &frame[..frame.len().min(256)];
    frame.first() == Some(&b'[') && find(head, b"\",\"postgres_changes\",{").is_some()
}

/// Is this vsn-2 frame a `presence_diff`?
pub(crate) fn is_diff(frame: &[u8]) -> bool {
    let head = &frame[..frame.len().min(256)];
    frame.first() == Some(&b'[') && find(head, b"\",\"presence_diff\",{").is_some()
}

/// Is this vsn-2 frame a broadcast on the `statistics` live topic?
pub(crate) fn is_update(frame: &[u8]) -> bool {
    let head = &frame[..frame.len().min(256)];
    frame.first() == Some(&b'[') && find(head, b"\"realtime:statistics\",\"broadcast\",{").is_some()
}

/// The `phx_join` frame for a channel (vsn 2.0.0), as supabase-js sends it.
pub(crate) fn join_frame(channel: &ChannelSpec, join_ref: u64) -> String {
    let (key, enabled) = match &channel.presence_key {
        Some(k) => (k.as_str(), true),
        None => ("", false),
    };
    format!(
        "[\"{join_ref}\",\"{join_ref}\",\"realtime:{}\",\"phx_join\",{{\"config\":{{\"broadcast\":{{\"ack\":false,\"self\":false}},\"presence\":{{\"key\":{},\"enabled\":{enabled}}},\"postgres_changes\":{},\"private\":false}}}}]",
        channel.name,
        serde_json::Value::String(key.to_owned()),
        channel.bindings
    )
}

/// Connection setup: connect, join, wait for every subscription.
async fn setup(
    addr: SocketAddr,
    seed: u32,
    spec: &ClientSpec,
    shared: &Arc<Shared>,
) -> Result<Client, String> {
    let ws = WsClient::connect(addr, "/realtime/v1/websocket?apikey=bench&vsn=2.0.0", seed).await?;
    let mut c = Client {
        ws,
        shared: shared.clone(),
        stats: ClientStats::default(),
        subscribed: 0,
        joins: spec.channels.len() as u64,
        joined: 0,
        hold_join_ref: None,
        presser: spec.presser.clone().map(|spec| Presser {
            spec,
            schedule: None,
            state: PressState::Waiting,
            slot: 0,
        }),
        fragment: None,
        pong: None,
        next_ref: 0,
    };
    for ch in &spec.channels {
        c.next_ref += 1;
        if ch.name == HOLD_CHANNEL {
            c.hold_join_ref = Some(c.next_ref);
        }
        let frame = join_frame(ch, c.next_ref);
        c.ws.send_text(&frame).await?;
    }
    let with_bindings = spec.channels.iter().filter(|c| c.has_bindings()).count();
    let wait = async {
        loop {
            c.drain_frames(now_us(), shared.window())
                .map_err(describe)?;
            if let Some(e) = &c.stats.first_error {
                return Err(e.clone());
            }
            if c.joined >= spec.channels.len() && c.subscribed >= with_bindings {
                return Ok(());
            }
            c.flush_pong().await.map_err(describe)?;
            if c.ws.read_more().await? == 0 {
                return Err("connection closed while joining".into());
            }
        }
    };
    tokio::time::timeout(JOIN_TIMEOUT, wait)
        .await
        .map_err(|_| format!("not subscribed within {JOIN_TIMEOUT:?}"))??;
    Ok(c)
}

fn describe(e: End) -> String {
    match e {
        End::Closed(code) => format!("closed by the relay ({code})"),
        End::Transport(e) => e,
    }
}

/// One client's whole life. Sends `Ok` or the setup error on `ready` once, then reads until
/// `stop` turns true.
pub(crate) async fn run_client(
    addr: SocketAddr,
    seed: u32,
    spec: ClientSpec,
    shared: Arc<Shared>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> ClientStats {
    let mut c = match setup(addr, seed, &spec, &shared).await {
        Ok(c) => c,
        Err(e) => {
            // Reported through `ready`; the stats stay not-ready.
            let _ = ready.send(Err(e));
            return ClientStats::default();
        }
    };
    drop(permit);
    c.stats.ready = true;
    let _ = ready.send(Ok(()));
    let mut schedule = spec.presser.as_ref().map(|p| p.schedule.clone());
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let end: Option<End> = loop {
        let press_due = c.press_due();
        let waiting = c.waiting_for_schedule();
        tokio::select! {
            biased;
            () = async { let _ = stop.wait_for(|s| *s).await; } => break None,
            _ = heartbeat.tick() => {
                if let Err(e) = c.heartbeat().await {
                    break Some(e);
                }
            }
            s = wait_schedule(&mut schedule), if waiting => c.start_pressing(s),
            () = sleep_until_opt(press_due) => {
                if let Err(e) = c.press_step().await {
                    break Some(e);
                }
            }
            n = c.ws.read_more() => {
                match n {
                    Ok(0) => break Some(End::Closed(1006)),
                    Ok(_) => {}
                    Err(e) => break Some(End::Transport(e)),
                }
                let win = shared.window();
                let diffs_before = c.stats.app.diffs_window;
                match c.drain_frames(now_us(), win) {
                    Ok(0) => {}
                    Ok(n) => {
                        shared.window_frames.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => break Some(e),
                }
                let diffs = c.stats.app.diffs_window - diffs_before;
                if diffs > 0 {
                    shared.presence_window.fetch_add(diffs, Ordering::Relaxed);
                }
                if let Err(e) = c.flush_pong().await {
                    break Some(e);
                }
            }
        }
    };
    match end {
        None => c.ws.close().await,
        Some(End::Closed(code)) => c.stats.closed = Some(code),
        Some(End::Transport(e)) => c.stats.transport_error = Some(e),
    }
    c.stats
}

/// The press schedule, once published; `None` when there is none (or never will be).
async fn wait_schedule(
    rx: &mut Option<watch::Receiver<Option<PressSchedule>>>,
) -> Option<PressSchedule> {
    let Some(rx) = rx.as_mut() else {
        return std::future::pending().await;
    };
    match rx.wait_for(Option::is_some).await {
        Ok(s) => *s,
        Err(_) => None,
    }
}

/// Sleep until `at`, or for ever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_change_frames() {
        assert!(is_change(
            br#"[null,null,"realtime:bench","postgres_changes",{"ids":[1],"data":{}}]"#
        ));
        assert!(!is_change(
            br#"["1",null,"realtime:bench","system",{"channel":"bench","extension":"postgres_changes","message":"Subscribed to PostgreSQL","status":"ok"}]"#
        ));
        assert!(!is_change(
            br#"["1","1","realtime:bench","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]"#
        ));
    }

    #[test]
    fn join_frame_is_valid_json() {
        let ch = ChannelSpec {
            name: "bench".into(),
            bindings: r#"[{"event":"INSERT","schema":"public","table":"button_holds"}]"#.into(),
            presence_key: None,
        };
        let v: Value = serde_json::from_str(&join_frame(&ch, 3)).unwrap_or(Value::Null);
        assert_eq!(v[2], "realtime:bench");
        assert_eq!(
            v[4]["config"]["postgres_changes"][0]["table"],
            "button_holds"
        );
        assert_eq!(v[4]["config"]["presence"]["enabled"], false);
        let ch = ChannelSpec {
            name: HOLD_CHANNEL.into(),
            bindings: "[]".into(),
            presence_key: Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        };
        assert!(!ch.has_bindings());
        let v: Value = serde_json::from_str(&join_frame(&ch, 4)).unwrap_or(Value::Null);
        assert_eq!(v[4]["config"]["presence"]["enabled"], true);
        assert_eq!(
            v[4]["config"]["presence"]["key"],
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
    }

    #[test]
    fn counts_presence_diffs_and_statistics_updates() {
        let win = (1_000, 2_000);
        let mut app = AppStats::default();
        let join = br#"[null,null,"realtime:button-presence","presence_diff",{"joins":{"u1":{"metas":[{"phx_ref":"F1","poll_id":3,"pressed_at":1500,"user_id":"u1"}]}},"leaves":{}}]"#;
        let leave = br#"[null,null,"realtime:button-presence","presence_diff",{"joins":{},"leaves":{"u1":{"metas":[{"phx_ref":"F1","poll_id":3,"pressed_at":1500,"user_id":"u1"}]}}}]"#;
        assert!(is_diff(join) && is_diff(leave) && !is_change(join) && !is_update(join));
        app.on_diff(join, 1_700, win);
        app.on_diff(leave, 2_500, win);
        assert_eq!(
            (app.diffs, app.diffs_window, app.diffs_during_window),
            (2, 2, 1)
        );
        // Only the press (join) has a latency: 1700 − 1500 µs.
        assert_eq!(app.diff_hist.count(), 1);
        assert_eq!(app.diff_hist.max(), 200);
        let outside = br#"[null,null,"realtime:button-presence","presence_diff",{"joins":{},"leaves":{"u1":{"metas":[{"pressed_at":900}]}}}]"#;
        app.on_diff(outside, 1_500, win);
        assert_eq!((app.diffs, app.diffs_window), (3, 2));

        let update = br#"[null,null,"realtime:statistics","broadcast",{"type":"broadcast","event":"update","payload":{"name" : "statistics", "rows" : [{"votes":1}]}}]"#;
        assert!(is_update(update) && !is_diff(update));
        let mut stats = ClientStats::default();
        stats.on_update(update, 500, win, 800);
        stats.on_update(update, 1_500, win, 800);
        assert_eq!(
            (
                stats.app.updates,
                stats.app.initial,
                stats.app.updates_during_window
            ),
            (2, 1, 1)
        );
        assert_eq!(stats.last_update.as_deref(), Some(&update[..]));
        assert_eq!(stats.errors, 0);
    }
}
