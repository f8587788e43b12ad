//! Presence pushes (track, untrack), and on the hold channel the relay-run holds that a
//! track starts and an untrack, a leave or the socket's end stops.

use std::fmt::Display;

use futures_util::{Sink, Stream};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::realtime::holds::{HoldRequest, Holds};
use crate::realtime::socket::Socket;
use crate::route::policy::ChannelAction;

impl<S, E> Socket<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    <S as Sink<Message>>::Error: Display,
    E: Display,
{
    /// The hold task, when `topic` is the hold channel.
    pub(super) fn holds_for(&self, topic: &str) -> Option<&Holds> {
        self.ctx
            .holds
            .as_ref()
            .filter(|(_, hold_topic)| **hold_topic == *topic)
            .map(|(h, _)| h)
    }

    /// End the hold this socket runs, if any.
    pub(super) fn end_hold(&self) {
        if let Some((holds, _)) = &self.ctx.holds {
            holds.end(self.id);
        }
    }

    /// `{"type":"presence","event":"track"|"untrack","payload":{…}}`.
    pub(super) async fn presence(&mut self, topic: &str, payload: &Value) -> Result<(), String> {
        let limits = &self.ctx.limits;
        if !self
            .presence_budget
            .take(limits.max_presence_events_per_second)
        {
            return Err("PresenceRateLimitReached: Too many presence messages per second".into());
        }
        let Some(joined) = self.channels.by_topic.get(topic) else {
            return Err("unmatched topic".into());
        };
        match payload.get("event").and_then(Value::as_str) {
            Some("track") => {
                let Some(Value::Object(meta)) = payload.get("payload") else {
                    return Err("Presence track payload must be a map".into());
                };
                let size = Value::Object(meta.clone()).to_string().len();
                if size > limits.max_presence_payload_bytes {
                    return Err(format!(
                        "PresencePayloadTooLarge: Track message size exceeded ({size} bytes, maximum {})",
                        limits.max_presence_payload_bytes
                    ));
                }
                self.check_private(
                    joined.key.private,
                    joined.claims.as_ref(),
                    topic,
                    ChannelAction::Track,
                )?;
                let (key, presence_key) = (joined.key.clone(), joined.presence_key.clone());
                self.ctx
                    .router
                    .presence_room(self.id, &key, limits.max_presence_per_topic)?;
                if let Some(holds) = self.holds_for(topic) {
                    // On the hold channel a track with a user starts a relay-run hold; the
                    // presence shows only once the row exists.
                    // With auth on, the holder is the token's user, never the payload's.
                    let request = match &joined.claims {
                        Some(claims) => {
                            let user_id = claims
                                .sub
                                .clone()
                                .ok_or("HoldRefused: a hold needs a token with a sub claim")?;
                            let poll_id = HoldRequest::from_payload(meta)
                                .ok()
                                .flatten()
                                .and_then(|r| r.poll_id)
                                .or_else(|| meta.get("poll_id").and_then(Value::as_i64));
                            Some(HoldRequest { user_id, poll_id })
                        }
                        None => HoldRequest::from_payload(meta)?,
                    };
                    if let Some(request) = request {
                        holds.start(self.id, request).await?;
                    }
                }
                self.ctx
                    .router
                    .track(self.id, &key, &presence_key, meta.clone());
                Ok(())
            }
            Some("untrack") => {
                self.ctx.router.untrack(self.id, &joined.key);
                if self.holds_for(topic).is_some() {
                    self.end_hold();
                }
                Ok(())
            }
            _ => Err("MalformedMessage: presence event must be track or untrack".into()),
        }
    }
}
