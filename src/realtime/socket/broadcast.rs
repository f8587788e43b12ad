//! Broadcast pushes from the client, JSON or binary: checked (joined, allowed to send, size)
//! and fanned out to the topic's other members, on every relay when several share Redis;
//! acknowledged only when the channel asked, and then once Redis has taken the message.

use std::fmt::Display;
use std::time::Duration;

use futures_util::{Sink, Stream};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol;
use crate::realtime::channel::Joined;
use crate::realtime::socket::Socket;
use crate::route::live::LiveQueries;
use crate::route::policy::ChannelAction;
use crate::route::topic::Broadcast;

/// Learns whether the other relays' Redis took a broadcast (`None`: nothing to wait for).
pub(super) type Sent = Option<oneshot::Receiver<bool>>;

/// How long an acknowledged broadcast waits for Redis before the ack is sent anyway (the
/// message reached this relay's members).
const ACK_WAIT: Duration = Duration::from_secs(3);

impl<S, E> Socket<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    <S as Sink<Message>>::Error: Display,
    E: Display,
{
    /// A JSON broadcast push: `{"type":"broadcast","event":…,"payload":…}`.
    pub(super) fn broadcast_json(&self, topic: &str, payload: &Value) -> Result<Sent, String> {
        let Some(joined) = self.channels.by_topic.get(topic) else {
            return Err("unmatched topic".into());
        };
        self.check_may_send(joined)?;
        let Some(event) = payload.get("event").and_then(Value::as_str) else {
            return Err("MalformedMessage: broadcast needs a string `event`".into());
        };
        let body = payload.get("payload").cloned().unwrap_or(Value::Null);
        let out =
            serde_json::json!({"type": "broadcast", "event": event, "payload": body}).to_string();
        self.check_broadcast_size(out.len())?;
        Ok(self.ctx.router.publish(
            &joined.key,
            Some(self.id),
            Broadcast::Json(out),
            joined.broadcast_ack,
        ))
    }

    /// A binary (kind 3) broadcast push.
    pub(super) fn broadcast_binary(&self, push: protocol::BinaryPush) -> Result<Sent, String> {
        let Some(joined) = self.channels.by_topic.get(push.topic.as_str()) else {
            return Err("unmatched topic".into());
        };
        self.check_may_send(joined)?;
        self.check_broadcast_size(push.payload.len())?;
        let msg = if push.json {
            let body: Value = serde_json::from_slice(&push.payload)
                .map_err(|e| format!("MalformedMessage: broadcast payload is not JSON: {e}"))?;
            let out =
                serde_json::json!({"type": "broadcast", "event": push.event, "payload": body});
            Broadcast::Json(out.to_string())
        } else {
            Broadcast::Binary {
                event: push.event,
                payload: push.payload,
            }
        };
        Ok(self
            .ctx
            .router
            .publish(&joined.key, Some(self.id), msg, joined.broadcast_ack))
    }

    /// Never on a topic the relay publishes; on a private channel with auth on, a channel
    /// policy must grant sending.
    fn check_may_send(&self, joined: &Joined) -> Result<(), String> {
        if self
            .ctx
            .live
            .as_ref()
            .is_some_and(|live| live.publishes(&joined.key))
        {
            return Err(LiveQueries::refusal(&joined.key));
        }
        self.check_private(
            joined.key.private,
            joined.claims.as_ref(),
            &joined.key.topic,
            ChannelAction::Send,
        )
    }
    fn check_broadcast_size(&self, size: usize) -> Result<(), String> {
        let max = self.ctx.limits.max_broadcast_payload_bytes;
        if size > max {
            return Err(format!(
                "PayloadTooLarge: broadcast payload is {size} bytes, maximum {max}"
            ));
        }
        Ok(())
    }

    /// Reply to a broadcast push: errors always, success only when the channel asked for acks.
    pub(super) async fn answer_broadcast(
        &mut self,
        topic: &str,
        jr: Option<&str>,
        r: Option<&str>,
        result: Result<Sent, String>,
    ) -> Result<(), String> {
        let ack = self
            .channels
            .by_topic
            .get(topic)
            .is_some_and(|j| j.broadcast_ack);
        let reply = match result {
            Ok(sent) if ack => {
                if let Some(sent) = sent {
                    // Delivered here already; with Redis down the ack still says ok (this
                    // relay's members have it) and the metrics count what did not cross.
                    let _ = tokio::time::timeout(ACK_WAIT, sent).await;
                }
                protocol::reply_ok(self.vsn, jr, r, topic, "{}")
            }
            Ok(_) => return Ok(()),
            Err(reason) => protocol::reply_error(self.vsn, jr, r, topic, &reason),
        };
        self.send(reply).await
    }
}
