//! Presence convergence across relays, seen from a quiet observer on relay B.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::clients::HEARTBEAT_FRAME;
use super::{Run, HEARTBEAT, LOG, PRESENCE_TOPIC, WAIT};
use crate::relay::Relay;
use crate::ws::{WsClient, OP_TEXT};

/// A vsn 1.0.0 socket joined to `topic` (with presence under `key`, if given).
pub(super) async fn join(
    addr: std::net::SocketAddr,
    topic: &str,
    key: Option<&str>,
    seed: u32,
) -> Result<WsClient, String> {
    let mut ws =
        WsClient::connect(addr, "/realtime/v1/websocket?apikey=bench&vsn=1.0.0", seed).await?;
    let presence = match key {
        Some(k) => json!({"key": k, "enabled": true}),
        None => json!({"key": "", "enabled": false}),
    };
    let frame = json!({
        "topic": format!("realtime:{topic}"), "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"broadcast": {"ack": false, "self": false},
                               "presence": presence, "private": false}},
    });
    ws.send_text(&frame.to_string()).await?;
    let mut beat = Instant::now();
    let (reply, _) = wait_for(&mut ws, &mut beat, |v| {
        v["event"] == "phx_reply" && v["ref"] == "1"
    })
    .await?;
    if reply["payload"]["status"] != "ok" {
        return Err(format!("join refused: {}", reply["payload"]));
    }
    Ok(ws)
}

/// Read until a text frame satisfies `pred` (within [`WAIT`]); returns it and when it was read.
/// `beat` is when the socket last sent a heartbeat; one goes every [`HEARTBEAT`] while waiting.
pub(super) async fn wait_for(
    ws: &mut WsClient,
    beat: &mut Instant,
    mut pred: impl FnMut(&Value) -> bool,
) -> Result<(Value, Instant), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let at = Instant::now();
        while let Some(f) = ws.next_frame()? {
            match f.opcode {
                OP_TEXT => {
                    if let Ok(v) = serde_json::from_slice::<Value>(ws.payload(&f)) {
                        if pred(&v) {
                            return Ok((v, at));
                        }
                    }
                }
                _ => ws.answer_control(&f).await?,
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("the awaited frame did not come within {WAIT:?}"));
        }
        if now.duration_since(*beat) >= HEARTBEAT {
            *beat = now;
            ws.send_text(HEARTBEAT_FRAME).await?;
        }
        let wait = (deadline - now).min(Duration::from_secs(1));
        match tokio::time::timeout(wait, ws.read_more()).await {
            Ok(Ok(0)) => return Err("connection closed by the relay".into()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
}

/// Is `v` a `presence_diff` with `key` among its `side` (`joins` or `leaves`)?
pub(super) fn diff_has(v: &Value, side: &str, key: &str) -> bool {
    v["event"] == "presence_diff" && v["payload"][side].get(key).is_some()
}

pub(super) fn presence_push(event: &str, n: usize) -> String {
    json!({
        "topic": format!("realtime:{PRESENCE_TOPIC}"), "event": "presence",
        "payload": {"type": "presence", "event": event, "payload": {"n": n}},
        "ref": format!("p{n}{event}"), "join_ref": "1",
    })
    .to_string()
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) async fn presence(
    bin: &Path,
    db_url: &str,
    args: &[String],
    reps: usize,
    a: &Relay,
    b: &Relay,
    run: &mut Run,
) -> Result<(), String> {
    let mut observer = join(b.addr, PRESENCE_TOPIC, Some("observer"), 7).await?;
    // The observer lives through every repetition: its heartbeats must span the calls.
    let mut beat = Instant::now();
    let mut tracker = join(a.addr, PRESENCE_TOPIC, Some("on-a"), 8).await?;
    for i in 0..reps {
        let t0 = Instant::now();
        tracker.send_text(&presence_push("track", i)).await?;
        let (_, at) = wait_for(&mut observer, &mut beat, |v| diff_has(v, "joins", "on-a")).await?;
        run.join_ms.push(ms(at.duration_since(t0)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        tracker.send_text(&presence_push("untrack", i)).await?;
        let (_, at) = wait_for(&mut observer, &mut beat, |v| diff_has(v, "leaves", "on-a")).await?;
        run.leave_ms.push(ms(at.duration_since(t0)));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracker.close().await;
    for i in 0..reps {
        // Each repetition starts right after B's 3 s check saw the last leave: without a
        // pause, every C would start at the same point of B's cycle (0, 1.1, 2.2, 0.3 … s).
        tokio::time::sleep(Duration::from_millis(1100 * i as u64 % 3000)).await;
        let c = Relay::start(bin, db_url, LOG, args).await?;
        let key = format!("on-c-{i}");
        let mut client = join(c.addr, PRESENCE_TOPIC, Some(&key), 100 + i as u32).await?;
        let t0 = Instant::now();
        client.send_text(&presence_push("track", i)).await?;
        let (_, at) = wait_for(&mut observer, &mut beat, |v| diff_has(v, "joins", &key)).await?;
        run.fresh_join_ms.push(ms(at.duration_since(t0)));
        // Kill at a different point of C's refresh cycle, and of B's look at Redis, each time:
        // with steps that are a multiple of 3 s, every kill would land at the same point.
        tokio::time::sleep(Duration::from_millis(1300 * (i as u64 % 5))).await;
        let killed = Instant::now();
        c.kill().await?;
        let (_, at) = wait_for(&mut observer, &mut beat, |v| diff_has(v, "leaves", &key)).await?;
        run.kill_ms.push(ms(at.duration_since(killed)));
        drop(client);
        eprintln!(
            "cluster: relay C killed, its member left B after {:.0} ms",
            ms(at.duration_since(killed))
        );
    }
    observer.close().await;
    Ok(())
}
