//! What the receivers count: the state the coordinator shares with every receiver (the
//! window, run-wide totals), and each receiver's own figures, merged at the end.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::hist::Histogram;
use crate::ts::{change_ts_us, find};

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
    pub(crate) writes_start: AtomicI64,
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
    pub(crate) fn on_diff(&mut self, frame: &[u8], now: i64, win: (i64, i64)) {
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
    pub(crate) fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    /// Account for one update of the `statistics` live topic received at `now` (µs).
    pub(crate) fn on_update(&mut self, frame: &[u8], now: i64, win: (i64, i64), writes_start: i64) {
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
