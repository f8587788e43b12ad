//! Load-generating WebSocket clients speaking vsn 2.0.0, and what they count.
//!
//! A client joins its channels, waits for each `Subscribed to PostgreSQL`, reports ready, then
//! reads until told to stop. Per change frame it only checks the event name, finds the record's
//! timestamp and records the latency; any other frame is parsed as JSON and checked for errors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

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
}

impl Shared {
    pub(crate) fn new(keys: &'static [&'static [u8]]) -> Shared {
        Shared {
            window_start: AtomicI64::new(i64::MAX),
            window_end: AtomicI64::new(i64::MAX),
            window_frames: AtomicU64::new(0),
            keys,
        }
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

/// One channel to join: its name and its `postgres_changes` bindings (a JSON array).
#[derive(Debug, Clone)]
pub(crate) struct ChannelSpec {
    pub(crate) name: String,
    pub(crate) bindings: String,
}

#[derive(Debug, Clone)]
pub(crate) struct ClientSpec {
    pub(crate) channels: Vec<ChannelSpec>,
    pub(crate) interest: Interest,
}

/// Everything a client reports at the end.
#[derive(Debug, Default)]
pub(crate) struct ClientStats {
    pub(crate) ready: bool,
    pub(crate) recv: RecvStats,
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
}

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

/// The `phx_join` frame for a channel (vsn 2.0.0), as supabase-js sends it.
pub(crate) fn join_frame(channel: &ChannelSpec, join_ref: u64) -> String {
    format!(
        "[\"{join_ref}\",\"{join_ref}\",\"realtime:{}\",\"phx_join\",{{\"config\":{{\"broadcast\":{{\"ack\":false,\"self\":false}},\"presence\":{{\"key\":\"\",\"enabled\":false}},\"postgres_changes\":{},\"private\":false}}}}]",
        channel.name, channel.bindings
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
        fragment: None,
        pong: None,
        next_ref: 0,
    };
    for ch in &spec.channels {
        c.next_ref += 1;
        let frame = join_frame(ch, c.next_ref);
        c.ws.send_text(&frame).await?;
    }
    let wait = async {
        loop {
            c.drain_frames(now_us(), shared.window())
                .map_err(describe)?;
            if let Some(e) = &c.stats.first_error {
                return Err(e.clone());
            }
            if c.subscribed >= spec.channels.len() {
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
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let end: Option<End> = loop {
        tokio::select! {
            biased;
            () = async { let _ = stop.wait_for(|s| *s).await; } => break None,
            _ = heartbeat.tick() => {
                if let Err(e) = c.heartbeat().await {
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
                match c.drain_frames(now_us(), win) {
                    Ok(0) => {}
                    Ok(n) => {
                        shared.window_frames.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => break Some(e),
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
        };
        let v: Value = serde_json::from_str(&join_frame(&ch, 3)).unwrap_or(Value::Null);
        assert_eq!(v[2], "realtime:bench");
        assert_eq!(
            v[4]["config"]["postgres_changes"][0]["table"],
            "button_holds"
        );
    }
}
