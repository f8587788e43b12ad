//! The broadcast scenario's sockets: receivers that check every message and time it, and
//! senders that broadcast at a fixed rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{HEARTBEAT, TOPIC};
use crate::hist::Histogram;
use crate::ts::{find, now_us};
use crate::ws::{close_code, WsClient, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// A sequence number above this is not ours (it would make the seen-set huge).
const MAX_SEQ: u64 = 1 << 24;

/// One client's deliveries.
#[derive(Debug, Default)]
pub(super) struct Received {
    pub(super) same: Histogram,
    pub(super) cross: Histogram,
    pub(super) unique: u64,
    pub(super) duplicates: u64,
    pub(super) out_of_order: u64,
    pub(super) error: Option<String>,
}

/// `"bench":[relay,sender,seq,sent_us]` in a broadcast frame.
pub(super) fn parse_bench(frame: &[u8]) -> Option<[i64; 4]> {
    let p = find(frame, b"\"bench\":[")? + 9;
    let mut parts = frame.get(p..)?.split(|&b| b == b',' || b == b']');
    let mut out = [0i64; 4];
    for slot in &mut out {
        let s = std::str::from_utf8(parts.next()?).ok()?;
        *slot = s.trim().parse().ok()?;
    }
    Some(out)
}

/// Set bit `n`; false if it was already set.
pub(super) fn mark(seen: &mut Vec<u64>, n: u64) -> bool {
    let (word, bit) = ((n / 64) as usize, n % 64);
    if seen.len() <= word {
        seen.resize(word + 1, 0);
    }
    let fresh = seen[word] & (1 << bit) == 0;
    seen[word] |= 1 << bit;
    fresh
}

/// Read one client's frames until told to stop.
pub(super) async fn receive(
    mut ws: WsClient,
    relay: usize,
    senders: usize,
    window_start: &AtomicU64,
    stop: &AtomicBool,
    total: &AtomicU64,
) -> Received {
    let mut out = Received::default();
    let mut highest: Vec<Option<u64>> = vec![None; senders];
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); senders];
    let mut beat = Instant::now();
    let mut pong: Option<Vec<u8>> = None;
    'read: loop {
        let now = now_us();
        loop {
            let f = match ws.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    break 'read;
                }
            };
            match f.opcode {
                OP_TEXT => {
                    let Some([r, s, n, t]) = parse_bench(ws.payload(&f)) else {
                        continue;
                    };
                    let (Ok(s), Ok(n)) = (usize::try_from(s), u64::try_from(n)) else {
                        continue;
                    };
                    if s >= senders || n > MAX_SEQ {
                        continue;
                    }
                    if !mark(&mut seen[s], n) {
                        out.duplicates += 1;
                        continue;
                    }
                    out.unique += 1;
                    total.fetch_add(1, Ordering::Relaxed);
                    if highest[s].is_some_and(|h| n < h) {
                        out.out_of_order += 1;
                    } else {
                        highest[s] = Some(n);
                    }
                    if t >= 0 && t as u64 >= window_start.load(Ordering::Relaxed) {
                        let lat = u64::try_from(now - t).unwrap_or(0);
                        if r == relay as i64 {
                            out.same.record(lat);
                        } else {
                            out.cross.record(lat);
                        }
                    }
                }
                OP_PING => pong = Some(ws.payload(&f).to_vec()),
                OP_CLOSE => {
                    let code = close_code(ws.payload(&f)).unwrap_or(1005);
                    out.error = Some(format!("closed by the relay ({code})"));
                    return out;
                }
                _ => {}
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let io = async {
            if let Some(p) = pong.take() {
                ws.send(OP_PONG, &p).await?;
            }
            if beat.elapsed() >= HEARTBEAT {
                beat = Instant::now();
                ws.send_text(HEARTBEAT_FRAME).await?;
            }
            Ok::<_, String>(())
        };
        if let Err(e) = io.await {
            out.error = Some(e);
            return out;
        }
        match tokio::time::timeout(Duration::from_millis(200), ws.read_more()).await {
            Ok(Ok(0)) => {
                out.error = Some("connection closed by the relay".into());
                return out;
            }
            Ok(Err(e)) => {
                out.error = Some(e);
                return out;
            }
            _ => {}
        }
    }
    ws.close().await;
    out
}

pub(super) const HEARTBEAT_FRAME: &str =
    r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"hb"}"#;

/// Send `count` broadcasts at `rate`/s from `first`, draining what the socket receives; then
/// keep draining until `stop`. Returns the number sent and the first error.
pub(super) async fn send(
    mut ws: WsClient,
    relay: usize,
    sender: usize,
    rate: f64,
    first: Instant,
    count: u64,
    stop: Arc<AtomicBool>,
) -> (u64, Option<String>) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut k = 0u64;
    let mut beat = Instant::now();
    let result: Result<(), String> = async {
        while k < count {
            let due = first + period.mul_f64(k as f64);
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(due) => {
                    let frame = format!(
                        "{{\"topic\":\"realtime:{TOPIC}\",\"event\":\"broadcast\",\"payload\":{{\"type\":\"broadcast\",\"event\":\"b\",\"payload\":{{\"bench\":[{relay},{sender},{k},{}]}}}},\"ref\":\"{}\",\"join_ref\":\"1\"}}",
                        now_us(),
                        k + 2
                    );
                    ws.send_text(&frame).await?;
                    k += 1;
                    if beat.elapsed() >= HEARTBEAT {
                        beat = Instant::now();
                        ws.send_text(HEARTBEAT_FRAME).await?;
                    }
                }
                n = ws.read_more() => discard(&mut ws, n).await?,
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        return (k, Some(e));
    }
    // Keep reading, or the relay would cut this socket as a slow consumer.
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), ws.read_more()).await {
                Ok(n) => {
                    if discard(&mut ws, n).await.is_err() {
                        return;
                    }
                }
                Err(_) => continue,
            }
        }
        ws.close().await;
    });
    (k, None)
}

/// Skip every frame read, answering pings.
pub(super) async fn discard(ws: &mut WsClient, n: Result<usize, String>) -> Result<(), String> {
    if n? == 0 {
        return Err("connection closed by the relay".into());
    }
    while let Some(f) = ws.next_frame()? {
        ws.answer_control(&f).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bench_tuple() {
        let f = br#"{"event":"broadcast","join_ref":null,"payload":{"event":"b","payload":{"bench":[1,7,42,1764500000000000]},"type":"broadcast"},"ref":null,"topic":"realtime:bench-cluster"}"#;
        assert_eq!(parse_bench(f), Some([1, 7, 42, 1_764_500_000_000_000]));
        assert_eq!(parse_bench(br#"{"bench":[1,2]}"#), None);
        assert_eq!(parse_bench(br#"{"event":"phx_reply"}"#), None);
    }

    #[test]
    fn marks_each_number_once() {
        let mut seen = Vec::new();
        assert!(mark(&mut seen, 130));
        assert!(!mark(&mut seen, 130));
        assert!(mark(&mut seen, 0));
        assert_eq!(seen.len(), 3);
    }
}
