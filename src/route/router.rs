//! The registry of sockets and topics, and the fan-out onto the sockets' queues: a change to
//! the channels whose `postgres_changes` bindings match it (found by the
//! [`bindings`](crate::route::bindings) index), a broadcast or a presence diff to the members
//! of its topic.
//!
//! Delivery never waits on a client: frames go onto each socket's bounded queue with
//! `try_send`, and a socket whose queue is full is cut off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::ingest::change::Change;
use crate::metrics::Metrics;
use crate::protocol::{self, Vsn};
use crate::route::bindings::{BindingId, Bindings, NewBinding};
use crate::route::outbox::Outbox;
use crate::route::presence::Diff;
use crate::route::queue::{
    half_full, try_queue, Frame, Outbound, SocketHandle, SocketId, SocketShared, SLOW_CONSUMER,
};
use crate::route::topic::{Broadcast, Member, Topic, TopicKey};

#[derive(Debug, Default)]
struct SocketEntry {
    handle: Option<SocketHandle>,
    /// topic → bindings this channel holds.
    channels: HashMap<Arc<str>, Vec<BindingId>>,
    /// Topic keys this socket is a member of (broadcast, presence).
    topics: Vec<TopicKey>,
}

/// Everything behind the router's lock.
#[derive(Debug, Default)]
pub(super) struct State {
    sockets: HashMap<SocketId, SocketEntry>,
    pub(super) topics: HashMap<TopicKey, Topic>,
    /// Every channel's `postgres_changes` bindings.
    bindings: Bindings,
}

/// The subscription index. One per relay; shared by the routing loop and every socket task.
#[derive(Debug)]
pub struct Router {
    state: Mutex<State>,
    next_socket: AtomicU64,
    pub(super) metrics: Arc<Metrics>,
    /// Where broadcasts and presence changes go to reach other relays (Redis); unset: this
    /// relay is the only one.
    outbox: OnceLock<Outbox>,
    /// Presence diff batching: the router itself (to flush later) and the window.
    batching: OnceLock<(std::sync::Weak<Router>, Duration)>,
}

/// Topics whose held-back presence diffs must go out after a delay.
pub(super) type Flushes = Vec<(TopicKey, Duration)>;

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Router {
            state: Mutex::default(),
            next_socket: AtomicU64::new(0),
            metrics,
            outbox: OnceLock::new(),
            batching: OnceLock::new(),
        }
    }

    /// Batch presence diffs: a topic's diffs within `window` of the previous one go out
    /// together at the end of the window, one frame per member instead of one per change. A
    /// lone change still goes out at once. Needs a tokio runtime from now on.
    pub fn batch_presence_diffs(self: &Arc<Self>, window: Duration) {
        let _ = self.batching.set((Arc::downgrade(self), window));
    }

    pub(super) fn batch_window(&self) -> Option<Duration> {
        self.batching.get().map(|(_, w)| *w)
    }

    /// Send held-back diffs when their window ends.
    pub(super) fn schedule_flushes(&self, flushes: Flushes) {
        let Some((router, _)) = self.batching.get() else {
            return;
        };
        for (key, wait) in flushes {
            let router = router.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(router) = router.upgrade() {
                    router.flush_presence(&key);
                }
            });
        }
    }

    fn flush_presence(&self, key: &TopicKey) {
        let mut cut = Vec::new();
        {
            let mut st = self.lock();
            let Some(topic) = st.topics.get_mut(key) else {
                return;
            };
            let Some(diff) = topic.pending_diff.take() else {
                return;
            };
            topic.last_diff = Some(Instant::now());
            st.fan_out_diff(key, &diff, &self.metrics, &mut cut);
        }
        self.cut_off_all(cut);
    }

    /// Whether `socket` may track on `key` without the topic going over `max` presences.
    ///
    /// # Errors
    /// The refusal's text (`PresenceLimitReached`).
    pub fn presence_room(
        &self,
        socket: SocketId,
        key: &TopicKey,
        max: usize,
    ) -> Result<(), String> {
        let st = self.lock();
        let Some(topic) = st.topics.get(key) else {
            return Ok(());
        };
        if topic.presence.len() >= max && topic.presence.key_of(socket).is_none() {
            return Err(format!(
                "PresenceLimitReached: Too many presences in this channel (maximum {max})"
            ));
        }
        Ok(())
    }

    /// Hand broadcasts and presence changes to other relays from now on.
    pub fn attach_outbox(&self, outbox: Outbox) {
        let _ = self.outbox.set(outbox);
    }

    /// A presence change of this relay's channels: to the topic's members here (batched),
    /// and to the other relays.
    fn emit_local(
        &self,
        st: &mut State,
        key: &TopicKey,
        diff: Diff,
        cut: &mut Vec<Arc<SocketShared>>,
        flushes: &mut Flushes,
    ) {
        self.emit(st, key, &diff, cut, flushes);
        self.export(key, diff);
    }

    /// A presence diff to the topic's members here, batched when batching is on.
    pub(super) fn emit(
        &self,
        st: &mut State,
        key: &TopicKey,
        diff: &Diff,
        cut: &mut Vec<Arc<SocketShared>>,
        flushes: &mut Flushes,
    ) {
        st.emit_diff(key, diff, &self.metrics, cut, self.batch_window(), flushes);
    }

    /// Tell the other relays about a presence change of this relay's channels.
    fn export(&self, key: &TopicKey, diff: Diff) {
        if let Some(outbox) = self.outbox.get() {
            let (joins, leaves) = diff.into_parts();
            outbox.presence(key, joins, leaves);
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation below keeps the state consistent before it can panic (it cannot on
        // input), so taking over a poisoned lock is safe and keeps other clients served.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a socket; returns its id.
    pub fn add_socket(&self, handle: SocketHandle) -> SocketId {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().sockets.insert(
            id,
            SocketEntry {
                handle: Some(handle),
                channels: HashMap::new(),
                topics: Vec::new(),
            },
        );
        id
    }

    /// Forget a socket and every subscription, membership and presence it held.
    pub fn remove_socket(&self, socket: SocketId) {
        let topics = {
            let mut st = self.lock();
            let Some(entry) = st.sockets.remove(&socket) else {
                return;
            };
            for (topic, ids) in entry.channels {
                st.bindings.unsubscribe(socket, &topic, ids);
            }
            entry.topics
        };
        for key in topics {
            self.leave_topic(socket, &key);
        }
    }

    /// Make a channel a member of its topic. Returns the topic's `presence_state` when the
    /// member receives presence.
    pub fn join_topic(&self, socket: SocketId, key: &TopicKey, member: Member) -> Option<String> {
        let mut st = self.lock();
        let entry = st.sockets.get_mut(&socket)?;
        if !entry.topics.contains(key) {
            entry.topics.push(key.clone());
        }
        let presence = member.presence;
        let topic = st.topics.entry(key.clone()).or_default();
        topic.members.insert(socket, member);
        presence.then(|| topic.presence.state_json())
    }

    /// Remove a channel from its topic; its presence, if any, leaves (and others are told).
    pub fn leave_topic(&self, socket: SocketId, key: &TopicKey) {
        let mut cut = Vec::new();
        let mut flushes = Flushes::new();
        {
            let mut st = self.lock();
            if let Some(entry) = st.sockets.get_mut(&socket) {
                entry.topics.retain(|k| k != key);
            }
            let Some(topic) = st.topics.get_mut(key) else {
                return;
            };
            topic.members.remove(&socket);
            let diff = topic.presence.untrack(socket);
            let empty = topic.members.is_empty() && topic.presence.is_empty();
            if let Some(diff) = diff {
                self.emit_local(&mut st, key, diff, &mut cut, &mut flushes);
            }
            if empty {
                st.topics.remove(key);
            }
        }
        self.cut_off_all(cut);
        self.schedule_flushes(flushes);
    }

    /// Track a presence for a channel and tell the topic's presence members.
    pub fn track(
        &self,
        socket: SocketId,
        key: &TopicKey,
        presence_key: &str,
        payload: serde_json::Map<String, serde_json::Value>,
    ) {
        let mut cut = Vec::new();
        let mut flushes = Flushes::new();
        {
            let mut st = self.lock();
            let Some(topic) = st.topics.get_mut(key) else {
                return;
            };
            // Tracking turns presence on for the tracker.
            if let Some(m) = topic.members.get_mut(&socket) {
                m.presence = true;
            }
            if let Some(diff) = topic.presence.track(socket, presence_key, payload) {
                self.emit_local(&mut st, key, diff, &mut cut, &mut flushes);
            }
        }
        self.cut_off_all(cut);
        self.schedule_flushes(flushes);
    }

    /// Untrack a channel's presence.
    pub fn untrack(&self, socket: SocketId, key: &TopicKey) {
        let mut cut = Vec::new();
        let mut flushes = Flushes::new();
        {
            let mut st = self.lock();
            let Some(topic) = st.topics.get_mut(key) else {
                return;
            };
            if let Some(diff) = topic.presence.untrack(socket) {
                self.emit_local(&mut st, key, diff, &mut cut, &mut flushes);
            }
        }
        self.cut_off_all(cut);
        self.schedule_flushes(flushes);
    }

    /// A client's broadcast: to this relay's members, and to the other relays' when several
    /// share Redis. With `ack`, the receiver learns whether Redis took it (`None`: this relay
    /// is the only one, or the message could not be queued for the others).
    pub fn publish(
        &self,
        key: &TopicKey,
        sender: Option<SocketId>,
        msg: Broadcast,
        ack: bool,
    ) -> Option<oneshot::Receiver<bool>> {
        self.broadcast(key, sender, &msg);
        self.forward(key, msg, ack)
    }

    /// A broadcast from outside any socket (the REST endpoints), shedding as
    /// [`Router::broadcast_shedding`] does, and to the other relays when several share Redis.
    pub fn publish_shedding(&self, key: &TopicKey, msg: Broadcast) {
        self.broadcast_shedding(key, &msg);
        self.forward(key, msg, false);
    }

    /// Queue a broadcast for the other relays, if there are any.
    fn forward(
        &self,
        key: &TopicKey,
        msg: Broadcast,
        ack: bool,
    ) -> Option<oneshot::Receiver<bool>> {
        let outbox = self.outbox.get()?;
        let (tx, rx) = if ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if !outbox.broadcast(key, msg, tx) {
            Metrics::inc(&self.metrics.cluster_broadcasts_dropped_total);
            return None;
        }
        rx
    }

    /// Send a broadcast to this relay's members of a topic (the sender only if it asked for
    /// `self`). Returns how many sockets it was queued for.
    pub fn broadcast(&self, key: &TopicKey, sender: Option<SocketId>, msg: &Broadcast) -> usize {
        self.fan_out(key, sender, msg, false).0
    }

    /// A broadcast from outside any socket (the REST endpoints): a subscriber whose queue is
    /// half full or more skips the message instead of being cut off, so a flood of requests
    /// costs the flood, never a healthy subscriber. Returns (queued, shed).
    pub fn broadcast_shedding(&self, key: &TopicKey, msg: &Broadcast) -> (usize, usize) {
        let (sent, shed) = self.fan_out(key, None, msg, true);
        self.metrics
            .broadcasts_shed_total
            .fetch_add(shed as u64, Ordering::Relaxed);
        (sent, shed)
    }

    fn fan_out(
        &self,
        key: &TopicKey,
        sender: Option<SocketId>,
        msg: &Broadcast,
        shedding: bool,
    ) -> (usize, usize) {
        let mut cut = Vec::new();
        let mut sent = 0;
        let mut shed = 0;
        {
            let st = self.lock();
            let Some(topic) = st.topics.get(key) else {
                return (0, 0);
            };
            let mut frames: HashMap<Vsn, Outbound> = HashMap::new();
            for (socket, member) in &topic.members {
                if Some(*socket) == sender && !member.broadcast_self {
                    continue;
                }
                let Some(handle) = st.sockets.get(socket).and_then(|e| e.handle.as_ref()) else {
                    continue;
                };
                let frame = frames.entry(handle.vsn).or_insert_with(|| match msg {
                    Broadcast::Json(payload) => Outbound::Text(
                        protocol::encode(handle.vsn, None, None, &key.topic, "broadcast", payload)
                            .into(),
                    ),
                    Broadcast::Binary { event, payload } => {
                        match protocol::binary_broadcast(&key.topic, event, payload) {
                            Some(b) if handle.vsn == Vsn::V2 => Outbound::Binary(b),
                            // vsn 1.0.0 has no binary frames; an over-long topic or event
                            // cannot be framed: nothing to send.
                            _ => Outbound::Text(Frame::default()),
                        }
                    }
                });
                if frame.is_empty() {
                    continue;
                }
                if shedding && half_full(handle) {
                    shed += 1;
                } else if try_queue(handle, frame.clone(), &self.metrics) {
                    sent += 1;
                } else {
                    cut.push(handle.shared.clone());
                }
            }
        }
        self.cut_off_all(cut);
        (sent, shed)
    }

    pub fn socket_count(&self) -> usize {
        self.lock().sockets.len()
    }

    /// How full the fullest socket queue is, 0.0 to 1.0 (frames or bytes, whichever is more).
    pub fn queue_pressure(&self) -> f64 {
        let st = self.lock();
        st.sockets
            .values()
            .filter_map(|e| e.handle.as_ref())
            .map(|h| {
                let frames = (h.tx.max_capacity() - h.tx.capacity()) as f64
                    / h.tx.max_capacity().max(1) as f64;
                let bytes = h.shared.queued_bytes.load(Ordering::Relaxed) as f64
                    / h.max_queued_bytes.max(1) as f64;
                frames.max(bytes)
            })
            .fold(0.0, f64::max)
    }

    /// Connections, channels holding bindings, and distinct bindings, for `/metrics`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.lock();
        let channels = st
            .sockets
            .values()
            .map(|e| e.channels.values().filter(|b| !b.is_empty()).count())
            .sum();
        (st.sockets.len(), channels, st.bindings.len())
    }

    /// Attach bindings to a channel (replacing what the channel held).
    pub fn subscribe(&self, socket: SocketId, topic: &Arc<str>, bindings: Vec<NewBinding>) {
        let mut st = self.lock();
        let old = st
            .sockets
            .get_mut(&socket)
            .and_then(|e| e.channels.remove(topic));
        if let Some(old) = old {
            st.bindings.unsubscribe(socket, topic, old);
        }
        if !st.sockets.contains_key(&socket) {
            return;
        }
        let mut held = Vec::with_capacity(bindings.len());
        for b in bindings {
            let id = st.bindings.subscribe(socket, topic, b);
            if !held.contains(&id) {
                held.push(id);
            }
        }
        if let Some(entry) = st.sockets.get_mut(&socket) {
            entry.channels.insert(topic.clone(), held);
        }
    }

    /// Detach every binding of a channel.
    pub fn unsubscribe(&self, socket: SocketId, topic: &str) {
        let mut st = self.lock();
        let held = st
            .sockets
            .get_mut(&socket)
            .and_then(|e| e.channels.remove(topic));
        if let Some(held) = held {
            st.bindings.unsubscribe(socket, topic, held);
        }
    }

    /// Route one change and queue its frames. Never waits: a full queue cuts its socket off.
    pub fn deliver(&self, change: &Change) {
        let mut cut = Vec::new();
        let mut delivered = 0u64;
        {
            let st = self.lock();
            let vsn_of = |socket| {
                st.sockets
                    .get(&socket)
                    .and_then(|e| e.handle.as_ref())
                    .map(|h| h.vsn)
            };
            for d in st.bindings.plan(change, vsn_of) {
                let Some(handle) = st.sockets.get(&d.socket).and_then(|e| e.handle.as_ref()) else {
                    continue;
                };
                if try_queue(handle, Outbound::Text(d.frame), &self.metrics) {
                    delivered += 1;
                } else {
                    cut.push(handle.shared.clone());
                }
            }
        }
        self.metrics
            .deliveries_total
            .fetch_add(delivered, Ordering::Relaxed);
        self.cut_off_all(cut);
    }

    /// Send a `system` message to every channel that holds `postgres_changes` bindings (used
    /// when changes may have been missed).
    pub fn notify_pg_channels(&self, status: &str, message: &str) {
        let mut cut = Vec::new();
        {
            let st = self.lock();
            for entry in st.sockets.values() {
                let Some(handle) = &entry.handle else {
                    continue;
                };
                for (topic, held) in &entry.channels {
                    if held.is_empty() {
                        continue;
                    }
                    let frame = protocol::system(
                        handle.vsn,
                        None,
                        topic,
                        "postgres_changes",
                        status,
                        message,
                    );
                    if !try_queue(handle, Outbound::Text(frame.into()), &self.metrics) {
                        cut.push(handle.shared.clone());
                    }
                }
            }
        }
        self.cut_off_all(cut);
    }

    pub(super) fn cut_off_all(&self, cut: Vec<Arc<SocketShared>>) {
        for shared in cut {
            // Counted once per socket, however many changes found its queue full.
            if shared.cut_off(SLOW_CONSUMER) {
                Metrics::inc(&self.metrics.cutoffs_total);
            }
        }
    }
}

impl State {
    /// Send a presence diff, or hold it back when the topic sent one less than `window` ago
    /// (then `flushes` says when to send what was held).
    pub(super) fn emit_diff(
        &mut self,
        key: &TopicKey,
        diff: &crate::route::presence::Diff,
        metrics: &Metrics,
        cut: &mut Vec<Arc<SocketShared>>,
        window: Option<Duration>,
        flushes: &mut Flushes,
    ) {
        let Some(window) = window else {
            return self.fan_out_diff(key, diff, metrics, cut);
        };
        let Some(topic) = self.topics.get_mut(key) else {
            return;
        };
        if let Some(pending) = &mut topic.pending_diff {
            pending.merge(diff.clone());
            return;
        }
        let now = Instant::now();
        match topic.last_diff {
            Some(last) if now.duration_since(last) < window => {
                topic.pending_diff = Some(diff.clone());
                flushes.push((key.clone(), window - now.duration_since(last)));
            }
            _ => {
                topic.last_diff = Some(now);
                self.fan_out_diff(key, diff, metrics, cut);
            }
        }
    }

    /// Queue a presence diff to every presence member of a topic.
    pub(super) fn fan_out_diff(
        &self,
        key: &TopicKey,
        diff: &crate::route::presence::Diff,
        metrics: &Metrics,
        cut: &mut Vec<Arc<SocketShared>>,
    ) {
        let Some(topic) = self.topics.get(key) else {
            return;
        };
        let payload = diff.to_json();
        let mut frames: HashMap<Vsn, Frame> = HashMap::new();
        for (socket, member) in &topic.members {
            if !member.presence {
                continue;
            }
            let Some(handle) = self.sockets.get(socket).and_then(|e| e.handle.as_ref()) else {
                continue;
            };
            let frame = frames
                .entry(handle.vsn)
                .or_insert_with(|| {
                    protocol::encode(
                        handle.vsn,
                        None,
                        None,
                        &key.topic,
                        "presence_diff",
                        &payload,
                    )
                    .into()
                })
                .clone();
            if !try_queue(handle, Outbound::Text(frame), metrics) {
                cut.push(handle.shared.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::change::Op;
    use crate::route::bindings::{Hidden, Scope};
    use futures_util::FutureExt;
    use serde_json::json;
    use tokio::sync::mpsc;

    /// An INSERT into `public.polls`.
    fn insert(record: serde_json::Value) -> Change {
        let serde_json::Value::Object(record) = record else {
            panic!("not an object");
        };
        Change {
            seq: 1,
            schema: "public".into(),
            table: "polls".into(),
            op: Op::Insert,
            commit_timestamp: "t".into(),
            changed_at: std::time::SystemTime::UNIX_EPOCH,
            record: Some(record),
            old_record: None,
            data: "{\"d\":1}".into(),
            info: None,
        }
    }

    fn socket(
        router: &Router,
        queue: usize,
    ) -> (SocketId, mpsc::Receiver<Outbound>, Arc<SocketShared>) {
        let (tx, rx) = mpsc::channel(queue);
        let shared = Arc::new(SocketShared::default());
        let id = router.add_socket(SocketHandle {
            vsn: Vsn::V2,
            tx,
            shared: shared.clone(),
            max_queued_bytes: 1 << 20,
        });
        (id, rx, shared)
    }

    /// A binding to every change of `public.polls`.
    fn whole_table(id: u32) -> NewBinding {
        NewBinding {
            scope: Scope::Table {
                schema: "public".into(),
                table: "polls".into(),
            },
            event: None,
            filter_text: String::new(),
            filter: None,
            eq_type: None,
            hidden: Hidden::default(),
            id,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Outbound::Text(t)) = rx.try_recv() {
            out.push(t.to_string());
        }
        out
    }

    #[test]
    fn shared_bindings_are_removed_with_their_last_subscriber() {
        let router = Router::new(Arc::default());
        let (a, mut rx_a, _) = socket(&router, 16);
        let (b, mut rx_b, _) = socket(&router, 16);
        let topic: Arc<str> = "realtime:x".into();
        router.subscribe(a, &topic, vec![whole_table(1)]);
        router.subscribe(b, &topic, vec![whole_table(1)]);
        assert_eq!(router.counts(), (2, 2, 1), "deduplicated");
        router.deliver(&insert(json!({"id": 1})));
        assert_eq!(drain(&mut rx_a).len(), 1);
        assert_eq!(drain(&mut rx_b).len(), 1);
        router.unsubscribe(a, &topic);
        assert_eq!(router.counts(), (2, 1, 1));
        router.remove_socket(b);
        assert_eq!(router.counts(), (1, 0, 0));
    }

    #[test]
    fn full_queue_cuts_the_socket_off_without_blocking() {
        let router = Router::new(Arc::default());
        let (slow, _rx_slow, slow_shared) = socket(&router, 2);
        let (fast, mut rx_fast, fast_shared) = socket(&router, 64);
        let topic: Arc<str> = "realtime:x".into();
        router.subscribe(slow, &topic, vec![whole_table(1)]);
        router.subscribe(fast, &topic, vec![whole_table(1)]);
        for i in 0..10 {
            router.deliver(&insert(json!({"id": i})));
        }
        assert_eq!(drain(&mut rx_fast).len(), 10);
        assert_eq!(slow_shared.cut().now_or_never(), Some(SLOW_CONSUMER));
        assert_eq!(fast_shared.cut().now_or_never(), None);
        // 8 changes found the slow queue full; one socket was cut off, once.
        assert_eq!(router.metrics.cutoffs_total.load(Ordering::Relaxed), 1);
    }
}
