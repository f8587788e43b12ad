//! Joining and leaving channels, and each channel's token: a refresh for the same identity
//! extends the channel; a refused or expired token, or another identity, closes it.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, Stream};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::auth::{self, AuthError, Claims};
use crate::metrics::Metrics;
use crate::protocol::{self, TOPIC_PREFIX};
use crate::realtime::channel::{self, Access, JoinError, Joined};
use crate::realtime::socket::Socket;
use crate::route::live;
use crate::route::policy::ChannelAction;
use crate::route::presence;
use crate::route::topic::{Member, TopicKey};

impl<S, E> Socket<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    <S as Sink<Message>>::Error: Display,
    E: Display,
{
    pub(super) async fn join(&mut self, m: protocol::Message) -> Result<(), String> {
        let vsn = self.vsn;
        let (jr, r) = (m.join_ref.as_deref(), m.msg_ref.as_deref());
        let topic: Arc<str> = m.topic.as_str().into();

        // Phoenix semantics: a second join of a joined topic closes the old channel first.
        if let Some(old) = self.channels.by_topic.remove(&topic) {
            self.ctx.router.unsubscribe(self.id, &topic);
            self.ctx.router.leave_topic(self.id, &old.key);
            if self.holds_for(&topic).is_some() {
                self.end_hold();
            }
            let old_ref = old.join_ref.as_deref();
            let close = protocol::encode(vsn, old_ref, old_ref, &topic, "phx_close", "{}");
            self.send(close).await?;
        }

        if !self.join_budget.take(self.ctx.limits.max_joins_per_second) {
            // As Supabase: refuse, then disconnect the socket.
            Metrics::inc(&self.ctx.metrics.rate_limited_total);
            self.close_after = Some("Too many joins per second");
            let reason = "ClientJoinRateLimitReached: Too many joins per second";
            return self
                .send(protocol::reply_error(vsn, jr, r, &topic, reason))
                .await;
        }

        let request = match self.check_join(&topic, &m.payload) {
            Ok(req) => req,
            Err(e) => {
                debug!(topic = %topic, error_code = e.code(), "join refused");
                let reply = protocol::reply_error(vsn, jr, r, &topic, &e.to_string());
                return self.send(reply).await;
            }
        };

        let claims = match self.join_claims(&m.payload) {
            Ok(c) => c,
            Err(e) => {
                debug!(topic = %topic, error_code = e.code(), "join refused: {e}");
                let reply = protocol::reply_error(vsn, jr, r, &topic, &e.reason());
                return self.send(reply).await;
            }
        };

        // A private channel is open only to what a channel policy grants (with auth on).
        if let Err(reason) = self.check_private(
            request.private,
            claims.as_ref(),
            &topic,
            ChannelAction::Read,
        ) {
            debug!(topic = %topic, "private join refused");
            return self
                .send(protocol::reply_error(vsn, jr, r, &topic, &reason))
                .await;
        }

        let (echo, ids) = channel::reply_bindings(&request.bindings);
        let mut response = Map::new();
        response.insert("postgres_changes".into(), echo);
        let response = Value::Object(response).to_string();
        self.send(protocol::reply_ok(vsn, jr, r, &topic, &response))
            .await?;
        Metrics::inc(&self.ctx.metrics.joins_total);
        let key = TopicKey {
            private: request.private,
            topic: topic.clone(),
        };
        let state = self.ctx.router.join_topic(
            self.id,
            &key,
            Member {
                presence: request.presence_enabled,
                broadcast_self: request.broadcast_self,
            },
        );
        self.channels.by_topic.insert(
            topic.clone(),
            Joined {
                join_ref: m.join_ref.clone(),
                has_bindings: !request.bindings.is_empty(),
                key,
                presence_key: request
                    .presence_key
                    .clone()
                    .unwrap_or_else(presence::random_key),
                broadcast_ack: request.broadcast_ack,
                claims: claims.clone(),
            },
        );
        if let Some(state) = state {
            // The client buffers presence diffs until it has a state: always send one.
            let state = protocol::encode(vsn, jr, None, &topic, "presence_state", &state);
            self.send(state).await?;
        }
        if let Some(value) = self.ctx.live.as_ref().and_then(|l| l.current(&topic)) {
            let update = live::update(&value);
            self.send(protocol::encode(
                vsn,
                None,
                None,
                &topic,
                "broadcast",
                &update,
            ))
            .await?;
        }
        if request.bindings.is_empty() {
            return Ok(());
        }
        let access = claims.as_ref().map(|claims| Access {
            policies: &self.ctx.policies,
            claims,
        });
        let system =
            match channel::validate(&self.ctx.catalog, &request.bindings, &ids, access).await {
                Ok(bindings) => {
                    self.ctx.router.subscribe(self.id, &topic, bindings);
                    protocol::system(
                        vsn,
                        jr,
                        &topic,
                        "postgres_changes",
                        "ok",
                        "Subscribed to PostgreSQL",
                    )
                }
                Err(reason) => {
                    debug!(topic = %topic, %reason, "postgres_changes subscription refused");
                    protocol::system(vsn, jr, &topic, "postgres_changes", "error", &reason)
                }
            };
        self.send(system).await
    }

    /// The identity a join acts with: its `access_token` when it brings one (other than a
    /// project key), else the socket's connect-time identity. `None` when auth is off.
    fn join_claims(&self, payload: &Value) -> Result<Option<Claims>, AuthError> {
        let Some(verifier) = &self.ctx.auth else {
            return Ok(None);
        };
        let token = payload
            .get("access_token")
            .or_else(|| payload.get("user_token"))
            .and_then(Value::as_str);
        let now = auth::now();
        match token {
            Some(t) if !auth::is_project_key(t) => verifier.verify(t, now).map(Some),
            // The connect-time identity, if it is still valid now: a socket outliving its
            // apikey's expiry gets no new channel, not even briefly.
            _ => {
                let claims = self.ctx.claims.clone().ok_or(AuthError::Missing)?;
                match claims.expired_for(now) {
                    Some(ago) => Err(AuthError::Expired(ago)),
                    None => Ok(Some(claims)),
                }
            }
        }
    }

    /// An `access_token` push (no reply expected): a valid token for the same identity
    /// extends the channel; anything else closes it with a `system` message.
    pub(super) async fn refresh_token(&mut self, m: &protocol::Message) -> Result<(), String> {
        let Some(verifier) = self.ctx.auth.clone() else {
            return Ok(());
        };
        let Some(token) = m.payload.get("access_token").and_then(Value::as_str) else {
            return Ok(());
        };
        if auth::is_project_key(token) {
            return Ok(());
        }
        let verdict = verifier.verify(token, auth::now());
        let Some(joined) = self.channels.by_topic.get_mut(m.topic.as_str()) else {
            return Ok(());
        };
        match verdict {
            Ok(new) => {
                let same = joined
                    .claims
                    .as_ref()
                    .is_none_or(|old| old.sub == new.sub && old.role == new.role);
                if same {
                    joined.claims = Some(new);
                    return Ok(());
                }
                let why = format!(
                    "You no longer have permission to read from this Channel topic: {}",
                    protocol::subtopic(&m.topic)
                );
                self.close_channel(&m.topic, &why).await
            }
            Err(e) => self.close_channel(&m.topic, &e.to_string()).await,
        }
    }

    /// Close a channel on the relay's initiative: a `system` error saying why, then
    /// `phx_close` (the client does not rejoin).
    pub(super) async fn close_channel(&mut self, topic: &str, why: &str) -> Result<(), String> {
        let Some(joined) = self.channels.by_topic.remove(topic) else {
            return Ok(());
        };
        self.ctx.router.unsubscribe(self.id, topic);
        self.ctx.router.leave_topic(self.id, &joined.key);
        if self.holds_for(topic).is_some() {
            self.end_hold();
        }
        let jr = joined.join_ref.as_deref();
        self.send(protocol::system(
            self.vsn, jr, topic, "system", "error", why,
        ))
        .await?;
        self.send(protocol::encode(self.vsn, jr, jr, topic, "phx_close", "{}"))
            .await
    }

    /// When the first channel token expires (`None` if none will).
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        // Called on every turn of the socket loop: with auth off no channel can expire.
        self.ctx.auth.as_ref()?;
        let exp = self
            .channels
            .by_topic
            .values()
            .filter_map(|j| j.claims.as_ref().map(|c| c.exp))
            .min()?;
        let secs = u64::try_from(exp.saturating_sub(auth::now())).unwrap_or(0);
        Some(Instant::now() + Duration::from_secs(secs))
    }

    /// Close every channel whose token has expired, as Supabase does.
    pub(super) async fn expire_channels(&mut self) -> Result<(), String> {
        let now = auth::now();
        let expired: Vec<(Arc<str>, i64)> = self
            .channels
            .by_topic
            .iter()
            .filter_map(|(t, j)| {
                let ago = j.claims.as_ref()?.expired_for(now)?;
                Some((t.clone(), ago))
            })
            .collect();
        for (topic, ago) in expired {
            let why = AuthError::Expired(ago).to_string();
            self.close_channel(&topic, &why).await?;
        }
        Ok(())
    }

    fn check_join(&self, topic: &str, payload: &Value) -> Result<channel::JoinRequest, JoinError> {
        let name = topic
            .strip_prefix(TOPIC_PREFIX)
            .ok_or(JoinError::TopicNameRequired)?;
        if name.is_empty() {
            return Err(JoinError::TopicNameRequired);
        }
        if name.len() > channel::MAX_TOPIC_BYTES {
            return Err(JoinError::TopicNameTooLong);
        }
        if self.channels.by_topic.len() >= self.ctx.limits.max_channels_per_client {
            return Err(JoinError::TooManyChannels);
        }
        channel::parse_join(payload, self.ctx.limits.max_bindings_per_channel)
    }

    pub(super) async fn leave(&mut self, m: &protocol::Message) -> Result<(), String> {
        let vsn = self.vsn;
        let Some(joined) = self.channels.by_topic.remove(m.topic.as_str()) else {
            return Ok(());
        };
        self.ctx.router.unsubscribe(self.id, &m.topic);
        self.ctx.router.leave_topic(self.id, &joined.key);
        if self.holds_for(&m.topic).is_some() {
            self.end_hold();
        }
        let jr = joined.join_ref.as_deref();
        self.send(protocol::reply_ok(
            vsn,
            jr,
            m.msg_ref.as_deref(),
            &m.topic,
            "{}",
        ))
        .await?;
        self.send(protocol::encode(vsn, jr, jr, &m.topic, "phx_close", "{}"))
            .await
    }
}
