//! One task per WebSocket client: read frames and act on them, write queued events in batches,
//! close the socket on heartbeat timeout, cut-off or shutdown.
//!
//! Replies to the client's own messages are written directly by this task, in the order the
//! messages came; fan-out events arrive through the bounded queue that the router fills with
//! `try_send`. A join's reply is written before its subscriptions exist, so no event can
//! overtake it.
//!
//! The loop is generic over `Sink`/`Stream` so tests can drive it with channels.

use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, instrument, warn, Instrument};

use crate::auth::{self, AuthError, Claims, Verifier};
use crate::config::Limits;
use crate::ingest::change::Catalog;
use crate::metrics::Metrics;
use crate::protocol::{self, truncate, Vsn, PHOENIX_TOPIC, TOPIC_PREFIX};
use crate::realtime::channel::{self, Access, Channels, JoinError, Joined};
use crate::realtime::holds::{HoldRequest, Holds};
use crate::route::live::{self, LiveQueries};
use crate::route::policy::{ChannelAction, Policies};
use crate::route::presence;
use crate::route::queue::{CutOff, Outbound, SocketHandle, SocketId, SocketShared};
use crate::route::router::Router;
use crate::route::topic::{Broadcast, Member, TopicKey};
use crate::shutdown::Shutdown;

/// A write that takes longer than this means the client stopped reading; the socket is closed
/// rather than holding its task (and queue memory) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a socket may spend writing its queue when the relay shuts down.
const FLUSH_DEADLINE: Duration = Duration::from_secs(3);
/// How long a cut-off socket is given to take its `system` message and close frame.
const GOODBYE_DEADLINE: Duration = Duration::from_secs(5);
/// How much of the queue one batch writes before flushing.
const WRITE_BATCH: usize = 256;

/// The reply to a push over `max_messages_per_second` (Supabase's text).
const TOO_MANY_MESSAGES: &str = "MessageRateLimitReached: Too many messages per second";

/// What a socket task needs from the relay.
#[derive(Debug, Clone)]
pub struct SocketContext {
    /// Live aggregate topics: a join gets the current value.
    pub live: Option<Arc<LiveQueries>>,
    /// Token verification; `None` when auth is off.
    pub auth: Option<Arc<Verifier>>,
    /// The identity the socket connected with (its `apikey`), when auth is on.
    pub claims: Option<Claims>,
    pub policies: Arc<Policies>,
    pub metrics: Arc<Metrics>,
    /// Relay-run holds, and the topic whose tracks start them.
    pub holds: Option<(Holds, Arc<str>)>,
    pub router: Arc<Router>,
    pub catalog: Arc<Catalog>,
    pub limits: Arc<Limits>,
    pub shutdown: Shutdown,
}

/// Why the loop ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    Transport(String),
    HeartbeatTimeout,
    CutOff(CutOff),
    Shutdown,
    /// A limit whose breach ends the socket (close code 1008, the reason).
    Limit(&'static str),
}

struct Socket<S> {
    ws: S,
    id: SocketId,
    vsn: Vsn,
    ctx: SocketContext,
    channels: Channels,
    /// Presence pushes allowed this second.
    presence_budget: RateWindow,
    /// Joins allowed this second.
    join_budget: RateWindow,
    /// Pushes (anything but heartbeats) allowed this second.
    message_budget: RateWindow,
    /// Set when a limit ends the socket once the current message is answered.
    close_after: Option<&'static str>,
}

/// A fixed one-second window counter: cheap, and exact enough for a per-socket limit.
#[derive(Debug)]
struct RateWindow {
    started: Instant,
    used: u32,
}

impl RateWindow {
    fn new() -> Self {
        RateWindow {
            started: Instant::now(),
            used: 0,
        }
    }

    /// Take one unit if fewer than `per_second` were taken in the current second.
    fn take(&mut self, per_second: u32) -> bool {
        if self.started.elapsed() >= Duration::from_secs(1) {
            self.started = Instant::now();
            self.used = 0;
        }
        if self.used >= per_second {
            return false;
        }
        self.used += 1;
        true
    }
}

/// Serve one client until it leaves or is closed.
#[instrument(name = "socket", skip_all, fields(socket_id, vsn = ?vsn))]
pub async fn run<S, E>(ws: S, vsn: Vsn, ctx: SocketContext)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    <S as Sink<Message>>::Error: Display,
    E: Display,
{
    let (tx, rx) = mpsc::channel(ctx.limits.socket_queue.max(1));
    let shared = Arc::new(SocketShared::default());
    let id = ctx.router.add_socket(SocketHandle {
        vsn,
        tx,
        shared: shared.clone(),
        max_queued_bytes: ctx.limits.socket_queue_bytes,
    });
    tracing::Span::current().record("socket_id", id);
    debug!("connected");
    let mut socket = Socket {
        ws,
        id,
        vsn,
        ctx,
        channels: Channels::default(),
        presence_budget: RateWindow::new(),
        join_budget: RateWindow::new(),
        message_budget: RateWindow::new(),
        close_after: None,
    };
    let mut rx = rx;
    let end = socket.serve(&mut rx, &shared).await;
    socket.ctx.router.remove_socket(id);
    socket.end_hold();
    if matches!(end, End::Shutdown) {
        socket.flush_queue(&mut rx, &shared).await;
    }
    socket.close(&end).await;
    match &end {
        End::ClientClosed | End::Shutdown => debug!(reason = ?end, "disconnected"),
        End::CutOff(c) => warn!(error_code = c.error_code, "cut off: {}", c.reason),
        End::Transport(cause) => debug!(%cause, "disconnected on transport error"),
        End::HeartbeatTimeout => info!("closed: no heartbeat within the timeout"),
        End::Limit(why) => info!(error_code = "ClientJoinRateLimitReached", "closed: {why}"),
    }
}

impl<S, E> Socket<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    <S as Sink<Message>>::Error: Display,
    E: Display,
{
    async fn serve(&mut self, rx: &mut mpsc::Receiver<Outbound>, shared: &SocketShared) -> End {
        let mut shutdown = self.ctx.shutdown.clone();
        let idle = self.ctx.limits.heartbeat_timeout;
        // Long-lived: a fresh shutdown waiter and heartbeat timer per loop turn would register
        // and deregister both on every wake, i.e. for every batch of frames written.
        let stop = shutdown.recv();
        tokio::pin!(stop);
        let heartbeat = tokio::time::sleep(idle);
        tokio::pin!(heartbeat);
        loop {
            let expiry = self.next_expiry();
            tokio::select! {
                biased;
                _ = &mut stop => return End::Shutdown,
                why = shared.cut() => return End::CutOff(why),
                frame = self.ws.next() => {
                    heartbeat.as_mut().reset(Instant::now() + idle);
                    let msg = match frame {
                        None => return End::ClientClosed,
                        Some(Err(e)) => return End::Transport(e.to_string()),
                        Some(Ok(msg)) => msg,
                    };
                    if msg.is_close() {
                        return End::ClientClosed;
                    }
                    // Boxed: answering a message (a join, presence, a broadcast) is by far
                    // the largest state of this loop (~4 KiB), and a socket waiting for its
                    // next frame should not carry it (idle memory per connection).
                    if let Err(e) = Box::pin(self.on_message(msg)).await {
                        return End::Transport(e);
                    }
                    if let Some(why) = self.close_after.take() {
                        return End::Limit(why);
                    }
                }
                Some(first) = rx.recv() => {
                    if let Err(e) = self.write_batch(first, rx, shared).await {
                        return End::Transport(e);
                    }
                }
                _ = &mut heartbeat => return End::HeartbeatTimeout,
                _ = sleep_until_opt(expiry) => {
                    if let Err(e) = self.expire_channels().await {
                        return End::Transport(e);
                    }
                }
            }
        }
    }

    /// Write one queued frame and whatever else is already queued, then flush once.
    async fn write_batch(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
        shared: &SocketShared,
    ) -> Result<(), String> {
        let mut bytes = 0;
        let write = async {
            let mut next = Some(first);
            let mut n = 0;
            while let Some(out) = next.take() {
                bytes += out.len();
                let msg = match out {
                    Outbound::Text(text) => Message::Text(text),
                    Outbound::Binary(b) => Message::Binary(b),
                };
                self.ws.feed(msg).await.map_err(|e| e.to_string())?;
                n += 1;
                if n < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.ws.flush().await.map_err(|e| e.to_string())
        };
        // A cut-off interrupts a write that the client is not reading, so the socket can
        // say why and close now rather than after the write timeout.
        let result = tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => r,
            _ = shared.cut() => Ok(Ok(())),
        };
        shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        match result {
            Ok(r) => r,
            Err(_) => Err(format!("write timed out after {WRITE_TIMEOUT:?}")),
        }
    }

    /// On shutdown: write what is already queued, within [`FLUSH_DEADLINE`], so changes the
    /// relay accepted before stopping still reach the client.
    async fn flush_queue(&mut self, rx: &mut mpsc::Receiver<Outbound>, shared: &SocketShared) {
        let flush = async {
            while let Ok(first) = rx.try_recv() {
                if self.write_batch(first, rx, shared).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(FLUSH_DEADLINE, flush).await;
    }

    /// Write a socket-local frame (a reply, a system message) now.
    async fn send(&mut self, text: String) -> Result<(), String> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(Message::text(text))).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("write timed out after {WRITE_TIMEOUT:?}")),
        }
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), String> {
        if let Message::Text(text) = &msg {
            let text = text.as_str();
            match protocol::decode_text(self.vsn, text) {
                Ok(m) => {
                    // Everything logged while handling a push names its channel.
                    let span = tracing::info_span!("channel", topic = %m.topic, event = %m.event);
                    self.dispatch(m).instrument(span).await
                }
                Err(e) => {
                    let (topic, msg_ref) = salvage(text);
                    debug!(error_code = e.code(), cause = %e, "bad frame");
                    let reason = format!("{}: {e}", e.code());
                    let topic = topic.unwrap_or_else(|| PHOENIX_TOPIC.into());
                    let reply =
                        protocol::reply_error(self.vsn, None, msg_ref.as_deref(), &topic, &reason);
                    self.send(reply).await
                }
            }
        } else if let Message::Binary(data) = &msg {
            match protocol::decode_binary(data) {
                Ok(push) => {
                    let (jr, r) = (push.join_ref.clone(), push.msg_ref.clone());
                    if !self
                        .message_budget
                        .take(self.ctx.limits.max_messages_per_second)
                    {
                        Metrics::inc(&self.ctx.metrics.rate_limited_total);
                        let reply = protocol::reply_error(
                            self.vsn,
                            jr.as_deref(),
                            r.as_deref(),
                            &push.topic,
                            TOO_MANY_MESSAGES,
                        );
                        return self.send(reply).await;
                    }
                    if !self.channels.by_topic.contains_key(push.topic.as_str()) {
                        let reply = protocol::reply_error(
                            self.vsn,
                            None,
                            r.as_deref(),
                            &push.topic,
                            "unmatched topic",
                        );
                        return self.send(reply).await;
                    }
                    let topic = push.topic.clone();
                    let result = self.broadcast_binary(push);
                    self.answer_broadcast(&topic, jr.as_deref(), r.as_deref(), result)
                        .await
                }
                Err(e) => {
                    debug!(error_code = e.code(), cause = %e, "bad binary frame");
                    let reason = format!("{}: {e}", e.code());
                    let reply = protocol::reply_error(self.vsn, None, None, PHOENIX_TOPIC, &reason);
                    self.send(reply).await
                }
            }
        } else {
            // Ping/pong are answered by the WebSocket layer.
            Ok(())
        }
    }

    async fn dispatch(&mut self, m: protocol::Message) -> Result<(), String> {
        let vsn = self.vsn;
        let (jr, r) = (m.join_ref.as_deref(), m.msg_ref.as_deref());
        if m.topic == PHOENIX_TOPIC && m.event == "heartbeat" {
            return self
                .send(protocol::reply_ok(vsn, jr, r, &m.topic, "{}"))
                .await;
        }
        if !self
            .message_budget
            .take(self.ctx.limits.max_messages_per_second)
        {
            Metrics::inc(&self.ctx.metrics.rate_limited_total);
            let reply = protocol::reply_error(vsn, jr, r, &m.topic, TOO_MANY_MESSAGES);
            return self.send(reply).await;
        }
        if m.event == "phx_join" {
            return self.join(m).await;
        }
        if !self.channels.by_topic.contains_key(m.topic.as_str()) {
            let reply = protocol::reply_error(vsn, None, r, &m.topic, "unmatched topic");
            return self.send(reply).await;
        }
        match m.event.as_str() {
            "phx_leave" => self.leave(&m).await,
            // Token refresh: auth is not enforced by this relay yet, and the client expects
            // no reply.
            "access_token" => self.refresh_token(&m).await,
            "presence" => {
                let result = self.presence(&m.topic, &m.payload).await;
                let reply = match result {
                    Ok(()) => protocol::reply_ok(vsn, jr, r, &m.topic, "{}"),
                    Err(reason) => protocol::reply_error(vsn, jr, r, &m.topic, &reason),
                };
                self.send(reply).await
            }
            "broadcast" => {
                let result = self.broadcast_json(&m.topic, &m.payload);
                self.answer_broadcast(&m.topic, jr, r, result).await
            }
            other => {
                let reason = format!("UnknownEvent: unknown event {:?}", truncate(other, 64));
                let reply = protocol::reply_error(vsn, jr, r, &m.topic, &reason);
                self.send(reply).await
            }
        }
    }

    async fn join(&mut self, m: protocol::Message) -> Result<(), String> {
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
        match token {
            Some(t) if !auth::is_project_key(t) => verifier.verify(t, auth::now()).map(Some),
            _ => self.ctx.claims.clone().map(Some).ok_or(AuthError::Missing),
        }
    }

    /// An `access_token` push (no reply expected): a valid token for the same identity
    /// extends the channel; anything else closes it with a `system` message.
    async fn refresh_token(&mut self, m: &protocol::Message) -> Result<(), String> {
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
    async fn close_channel(&mut self, topic: &str, why: &str) -> Result<(), String> {
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
    fn next_expiry(&self) -> Option<Instant> {
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
    async fn expire_channels(&mut self) -> Result<(), String> {
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

    /// The hold task, when `topic` is the hold channel.
    fn holds_for(&self, topic: &str) -> Option<&Holds> {
        self.ctx
            .holds
            .as_ref()
            .filter(|(_, hold_topic)| **hold_topic == *topic)
            .map(|(h, _)| h)
    }

    /// End the hold this socket runs, if any.
    fn end_hold(&self) {
        if let Some((holds, _)) = &self.ctx.holds {
            holds.end(self.id);
        }
    }

    /// `{"type":"presence","event":"track"|"untrack","payload":{…}}`.
    async fn presence(&mut self, topic: &str, payload: &Value) -> Result<(), String> {
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

    /// A JSON broadcast push: `{"type":"broadcast","event":…,"payload":…}`.
    fn broadcast_json(&self, topic: &str, payload: &Value) -> Result<(), String> {
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
        self.ctx
            .router
            .broadcast(&joined.key, Some(self.id), &Broadcast::Json(out));
        Ok(())
    }

    /// A binary (kind 3) broadcast push.
    fn broadcast_binary(&self, push: protocol::BinaryPush) -> Result<(), String> {
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
        self.ctx.router.broadcast(&joined.key, Some(self.id), &msg);
        Ok(())
    }

    /// On a private channel with auth on, a channel policy must grant sending.
    fn check_may_send(&self, joined: &Joined) -> Result<(), String> {
        self.check_private(
            joined.key.private,
            joined.claims.as_ref(),
            &joined.key.topic,
            ChannelAction::Send,
        )
    }

    /// On a private channel (with auth on: claims present), a channel policy must grant
    /// `action`; the refusal is Supabase's text.
    fn check_private(
        &self,
        private: bool,
        claims: Option<&Claims>,
        topic: &str,
        action: ChannelAction,
    ) -> Result<(), String> {
        match claims {
            Some(c) if private => {
                self.ctx
                    .policies
                    .check_channel(protocol::subtopic(topic), c, action)
            }
            _ => Ok(()),
        }
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
    async fn answer_broadcast(
        &mut self,
        topic: &str,
        jr: Option<&str>,
        r: Option<&str>,
        result: Result<(), String>,
    ) -> Result<(), String> {
        let ack = self
            .channels
            .by_topic
            .get(topic)
            .is_some_and(|j| j.broadcast_ack);
        let reply = match result {
            Ok(()) if ack => protocol::reply_ok(self.vsn, jr, r, topic, "{}"),
            Ok(()) => return Ok(()),
            Err(reason) => protocol::reply_error(self.vsn, jr, r, topic, &reason),
        };
        self.send(reply).await
    }

    fn check_join(&self, topic: &str, payload: &Value) -> Result<channel::JoinRequest, JoinError> {
        let name = topic
            .strip_prefix(TOPIC_PREFIX)
            .ok_or(JoinError::TopicNameRequired)?;
        if name.is_empty() {
            return Err(JoinError::TopicNameRequired);
        }
        if self.channels.by_topic.len() >= self.ctx.limits.max_channels_per_client {
            return Err(JoinError::TooManyChannels);
        }
        channel::parse_join(payload, self.ctx.limits.max_bindings_per_channel)
    }

    async fn leave(&mut self, m: &protocol::Message) -> Result<(), String> {
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

    /// Say goodbye the way the reason calls for; best effort, bounded in time.
    async fn close(&mut self, end: &End) {
        let frame = match end {
            End::ClientClosed => None,
            // A WebSocket protocol violation from the client: say which, with its code.
            End::Transport(cause) => ws_error_close(cause),
            End::Shutdown => Some((1001, "server shutting down".to_owned())),
            End::Limit(why) => Some((1008, (*why).to_owned())),
            End::HeartbeatTimeout => Some((1000, "heartbeat timeout".to_owned())),
            End::CutOff(why) => {
                let vsn = self.vsn;
                let notes: Vec<String> = self
                    .channels
                    .by_topic
                    .iter()
                    .map(|(topic, j)| {
                        protocol::system(
                            vsn,
                            j.join_ref.as_deref(),
                            topic,
                            "system",
                            "error",
                            why.reason,
                        )
                    })
                    .collect();
                let goodbye = async {
                    for n in notes {
                        self.ws.feed(Message::text(n)).await?;
                    }
                    self.ws.flush().await
                };
                // A slow client may still be reading its backlog: give it time to get this.
                let _ = tokio::time::timeout(GOODBYE_DEADLINE, goodbye).await;
                Some((why.code, why.reason.to_owned()))
            }
        };
        if let Some((code, reason)) = frame {
            let _ = tokio::time::timeout(
                GOODBYE_DEADLINE,
                self.ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                }))),
            )
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close()).await;
    }
}

/// The close frame for a transport error the client caused (RFC 6455 codes), if any.
fn ws_error_close(cause: &str) -> Option<(u16, String)> {
    let lower = cause.to_ascii_lowercase();
    if lower.contains("message too long")
        || lower.contains("space limit")
        || lower.contains("too big")
    {
        Some((1009, "message too big".into()))
    } else if lower.contains("utf-8") || lower.contains("utf8") {
        Some((1007, "invalid UTF-8".into()))
    } else if lower.contains("protocol") {
        Some((1002, "protocol error".into()))
    } else {
        None
    }
}

/// Sleep until `at`, or for ever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// From a frame that failed to decode, recover the topic and ref if they are there, so the
/// error reply can be matched by the client.
fn salvage(text: &str) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return (None, None);
    };
    let s = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(|s| truncate(s, 256).to_owned())
    };
    match &v {
        Value::Array(a) => (s(a.get(2)), s(a.get(1))),
        Value::Object(o) => (s(o.get("topic")), s(o.get("ref"))),
        _ => (None, None),
    }
}
