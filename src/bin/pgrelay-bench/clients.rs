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
//!
//! Here: the connection, the frames read and written, the client's life. What each client
//! joins is in `spec`, the press cycle in `press`, the counters in `stats`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::press::Presser;
use crate::spec::{ChannelSpec, ClientSpec, PressSchedule, HOLD_CHANNEL};
use crate::stats::{ClientStats, Shared};
use crate::ts::{find, now_us};
use crate::ws::{self, WsClient};

/// Supabase's client heartbeat interval.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(25);
/// How long one client may take to connect and be subscribed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

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
        if let Some(p) = self.presser.as_mut() {
            p.on_reply(msg_ref, ok, &mut self.stats.app, &self.shared);
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
        let Some(frame) = p.step(
            now,
            jr,
            &mut self.next_ref,
            &mut self.stats.app,
            &self.shared,
        ) else {
            return Ok(());
        };
        self.ws.send_text(&frame).await.map_err(End::Transport)
    }

    /// The schedule is known: the first press is due.
    fn start_pressing(&mut self, schedule: Option<PressSchedule>) {
        if let Some(p) = self.presser.as_mut() {
            p.start(schedule);
        }
    }

    fn press_due(&self) -> Option<Instant> {
        self.presser.as_ref().and_then(Presser::due)
    }

    fn waiting_for_schedule(&self) -> bool {
        self.presser.as_ref().is_some_and(Presser::waiting)
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
        presser: spec.presser.clone().map(Presser::new),
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
    use crate::stats::AppStats;

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
