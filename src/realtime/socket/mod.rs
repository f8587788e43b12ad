//! One task per WebSocket client: read frames and act on them, write queued events in batches,
//! close the socket on heartbeat timeout, cut-off or shutdown.
//!
//! Replies to the client's own messages are written directly by this task, in the order the
//! messages came; fan-out events arrive through the bounded queue that the router fills with
//! `try_send`. A join's reply is written before its subscriptions exist, so no event can
//! overtake it.
//!
//! The loop is generic over `Sink`/`Stream` so tests can drive it with channels.
//!
//! - this file: the socket task ([`run`]) and its loop, which reads a frame and hands each
//!   push to its handler, answers heartbeats, and ends the socket on heartbeat timeout,
//!   cut-off, shutdown or a breached limit; the private-channel check the handlers share.
//! - `join`: joining and leaving channels, and each channel's token (refreshed, expired).
//! - `presence`: presence tracks and untracks, and the relay-run holds they start.
//! - `broadcast`: broadcast pushes, JSON and binary.
//! - `write`: everything written to the WebSocket: replies, queued frames in batches, the
//!   flush on shutdown and the goodbye.

mod broadcast;
mod join;
mod presence;
mod write;

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, instrument, warn, Instrument};

use crate::auth::{Claims, Verifier};
use crate::config::Limits;
use crate::ingest::change::Catalog;
use crate::metrics::Metrics;
use crate::protocol::{self, truncate, Vsn, PHOENIX_TOPIC};
use crate::realtime::channel::Channels;
use crate::realtime::holds::Holds;
use crate::route::live::LiveQueries;
use crate::route::policy::{ChannelAction, Policies};
use crate::route::queue::{CutOff, Outbound, SocketHandle, SocketId, SocketShared};
use crate::route::router::Router;
use crate::shutdown::Shutdown;

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
