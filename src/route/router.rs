//! The subscription index and fan-out: which (socket, channel, binding ids) a [`Change`] goes
//! to, and putting the frames on those sockets' queues.
//!
//! Bindings are deduplicated: sockets that subscribe with the same (schema, table, event,
//! filter) share one entry, so its filter runs once per change however many sockets hold it.
//! Bindings that are a single `column=eq.value` are found by hash lookup on the row's value,
//! so 10,000 per-row subscriptions cost what the matching ones cost, not a scan.
//! Delivery never waits on a client: frames go onto each socket's bounded queue with
//! `try_send`, and a socket whose queue is full is cut off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify};

use crate::ingest::change::{Change, Op, Row};
use crate::metrics::Metrics;
use crate::protocol::{self, Vsn};
use crate::route::filter::{self, BoundFilter, IndexKey};
use crate::route::presence::TopicPresence;

pub type SocketId = u64;

/// Text frame bytes, shared: cloning one for another socket is a reference count, and the
/// socket hands the same bytes to the WebSocket without copying them.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// A frame waiting in a socket's queue. Text is shared by every socket that gets the same
/// (topic, ids) group: it is serialized once.
#[derive(Debug, Clone)]
pub enum Outbound {
    Text(Frame),
    /// A binary broadcast (kind 4), for vsn 2.0.0 sockets.
    Binary(bytes::Bytes),
}

impl Outbound {
    pub fn len(&self) -> usize {
        match self {
            Outbound::Text(t) => t.len(),
            Outbound::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why the relay closed a socket on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutOff {
    /// WebSocket close code.
    pub code: u16,
    /// Stable PascalCase code (ERROR_CODES.md).
    pub error_code: &'static str,
    /// Human-readable reason, sent in the `system` message and the close frame.
    pub reason: &'static str,
}

pub const SLOW_CONSUMER: CutOff = CutOff {
    code: 1008,
    error_code: "SlowConsumer",
    reason: "Client is too slow: its outbound queue is full",
};

/// State shared between the router (producer) and one socket task (consumer).
#[derive(Debug, Default)]
pub struct SocketShared {
    /// Bytes sitting in the queue; the router adds, the socket subtracts after writing.
    pub queued_bytes: AtomicUsize,
    cutoff: Mutex<Option<CutOff>>,
    cutoff_notify: Notify,
}

impl SocketShared {
    /// Ask the socket task to close with `why`. The first reason wins.
    pub fn cut_off(&self, why: CutOff) {
        {
            let mut slot = self.cutoff.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() {
                return;
            }
            *slot = Some(why);
        }
        // notify_one stores a permit if the socket is not waiting right now.
        self.cutoff_notify.notify_one();
    }

    /// Completes when the socket has been cut off; returns why.
    pub async fn cut(&self) -> CutOff {
        loop {
            if let Some(why) = *self.cutoff.lock().unwrap_or_else(|p| p.into_inner()) {
                return why;
            }
            self.cutoff_notify.notified().await;
        }
    }
}

/// The router's view of a socket.
#[derive(Debug)]
pub struct SocketHandle {
    pub vsn: Vsn,
    pub tx: mpsc::Sender<Outbound>,
    pub shared: Arc<SocketShared>,
    pub max_queued_bytes: usize,
}

/// Which rows a binding wants, once validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Table {
        schema: String,
        table: String,
    },
    /// `table: "*"`: every published table of a schema (`None`: of every schema).
    Wildcard {
        schema: Option<String>,
    },
}

/// Columns a subscriber may not see (read policies), sorted; empty for most.
pub type Hidden = Arc<[String]>;

/// A validated `postgres_changes` binding ready to index.
#[derive(Debug)]
pub struct NewBinding {
    pub scope: Scope,
    /// `None` for `*`.
    pub event: Option<Op>,
    /// Canonical filter text: the dedup key, together with scope and event.
    pub filter_text: String,
    pub filter: Option<BoundFilter>,
    /// Typename of the column of a single `eq` filter, when it is indexable.
    pub eq_type: Option<String>,
    /// Columns removed from the events this binding delivers (part of its identity).
    pub hidden: Hidden,
    /// Id echoed in the join reply and carried in events.
    pub id: u32,
}

impl NewBinding {
    /// Whether this binding wants `change` (for readers outside the router: server-sent
    /// events).
    pub fn matches(&self, change: &Change) -> bool {
        let in_scope = match &self.scope {
            Scope::Table { schema, table } => *schema == change.schema && *table == change.table,
            Scope::Wildcard { schema } => schema.as_ref().is_none_or(|s| *s == change.schema),
        };
        in_scope
            && self.event.is_none_or(|e| e == change.op)
            && matches(self.filter.as_ref(), change)
    }

    /// The event's `data` as this binding's subscriber may see it.
    pub fn data<'c>(&self, change: &'c Change) -> std::borrow::Cow<'c, str> {
        if self.hidden.is_empty() {
            std::borrow::Cow::Borrowed(&change.data)
        } else {
            std::borrow::Cow::Owned(change.data_hiding(&self.hidden))
        }
    }
}

type BindingId = u64;
type SubKey = (SocketId, Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BindingKey {
    scope: Scope,
    event: Option<Op>,
    filter_text: String,
    hidden: Hidden,
}

#[derive(Debug)]
struct Binding {
    key: BindingKey,
    filter: Option<BoundFilter>,
    /// Where it sits in the table index, for removal.
    eq: Option<(String, IndexKey)>,
    /// Channels holding it, with their ids (several when bindings differ only in `select`).
    subs: HashMap<SubKey, Vec<u32>>,
}

#[derive(Debug, Default)]
struct TableIndex {
    /// Bindings evaluated against every change of the table.
    scan: Vec<BindingId>,
    /// column → (typname, value → bindings): single-`eq` bindings found by lookup.
    eq: HashMap<String, (String, HashMap<IndexKey, Vec<BindingId>>)>,
}

#[derive(Debug, Default)]
struct SocketEntry {
    handle: Option<SocketHandle>,
    /// topic → bindings this channel holds.
    channels: HashMap<Arc<str>, Vec<BindingId>>,
    /// Topic keys this socket is a member of (broadcast, presence).
    topics: Vec<TopicKey>,
}

/// Identifies a topic for broadcast and presence: a private and a public channel of the same
/// name are different topics (as in Supabase), so they never see each other's messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub private: bool,
    /// The wire topic, `realtime:<name>`.
    pub topic: Arc<str>,
}

/// A channel's membership in its topic.
#[derive(Debug, Clone)]
pub struct Member {
    /// Receives presence diffs (presence enabled, or tracked).
    pub presence: bool,
    /// Receives its own broadcasts (`config.broadcast.self`).
    pub broadcast_self: bool,
}

#[derive(Debug, Default)]
struct Topic {
    members: HashMap<SocketId, Member>,
    presence: TopicPresence,
}

/// A broadcast to fan out.
#[derive(Debug)]
pub enum Broadcast {
    /// `{"type":"broadcast","event":…,"payload":…}` as JSON text, for every member.
    Json(String),
    /// A raw binary payload: kind 4 to vsn 2.0.0 members; vsn 1.0.0 cannot carry it.
    Binary {
        event: String,
        payload: bytes::Bytes,
    },
}

#[derive(Debug, Default)]
struct State {
    sockets: HashMap<SocketId, SocketEntry>,
    topics: HashMap<TopicKey, Topic>,
    keys: HashMap<BindingKey, BindingId>,
    bindings: HashMap<BindingId, Binding>,
    tables: HashMap<(String, String), TableIndex>,
    wildcards: Vec<BindingId>,
    next_binding: BindingId,
}

/// The subscription index. One per relay; shared by the dispatcher and every socket task.
#[derive(Debug)]
pub struct Router {
    state: Mutex<State>,
    next_socket: AtomicU64,
    metrics: Arc<Metrics>,
}

/// What makes two deliveries of one change the same frame: serializer, topic, binding ids and
/// the columns hidden from the subscriber.
type FrameKey<'a> = (Vsn, &'a str, Vec<u32>, &'a [String]);

/// One planned delivery: a frame for one socket.
struct Delivery {
    socket: SocketId,
    frame: Frame,
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Router {
            state: Mutex::default(),
            next_socket: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
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
                st.unsubscribe_ids(socket, &topic, ids);
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
                st.fan_out_diff(key, &diff, &self.metrics, &mut cut);
            }
            if empty {
                st.topics.remove(key);
            }
        }
        self.cut_off_all(cut);
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
                st.fan_out_diff(key, &diff, &self.metrics, &mut cut);
            }
        }
        self.cut_off_all(cut);
    }

    /// Untrack a channel's presence.
    pub fn untrack(&self, socket: SocketId, key: &TopicKey) {
        let mut cut = Vec::new();
        {
            let mut st = self.lock();
            let Some(topic) = st.topics.get_mut(key) else {
                return;
            };
            if let Some(diff) = topic.presence.untrack(socket) {
                st.fan_out_diff(key, &diff, &self.metrics, &mut cut);
            }
        }
        self.cut_off_all(cut);
    }

    /// Send a broadcast to every member of a topic (the sender only if it asked for `self`).
    /// Returns how many sockets it was queued for.
    pub fn broadcast(&self, key: &TopicKey, sender: Option<SocketId>, msg: &Broadcast) -> usize {
        let mut cut = Vec::new();
        let mut sent = 0;
        {
            let st = self.lock();
            let Some(topic) = st.topics.get(key) else {
                return 0;
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
                if try_queue(handle, frame.clone(), &self.metrics) {
                    sent += 1;
                } else {
                    cut.push(handle.shared.clone());
                }
            }
        }
        self.cut_off_all(cut);
        sent
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
            st.unsubscribe_ids(socket, topic, old);
        }
        if !st.sockets.contains_key(&socket) {
            return;
        }
        let mut held = Vec::with_capacity(bindings.len());
        for b in bindings {
            let sub_id = b.id;
            let id = st.binding_for(b);
            if let Some(binding) = st.bindings.get_mut(&id) {
                binding
                    .subs
                    .entry((socket, topic.clone()))
                    .or_default()
                    .push(sub_id);
            }
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
            st.unsubscribe_ids(socket, topic, held);
        }
    }

    /// Route one change and queue its frames. Never waits: a full queue cuts its socket off.
    pub fn deliver(&self, change: &Change) {
        let mut cut = Vec::new();
        let mut delivered = 0u64;
        {
            let st = self.lock();
            for d in st.plan(change) {
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

    fn cut_off_all(&self, cut: Vec<Arc<SocketShared>>) {
        for shared in cut {
            Metrics::inc(&self.metrics.cutoffs_total);
            shared.cut_off(SLOW_CONSUMER);
        }
    }
}

/// Queue a frame without waiting. False when the socket's queue (messages or bytes) is full.
fn try_queue(handle: &SocketHandle, out: Outbound, metrics: &Metrics) -> bool {
    let len = out.len();
    let before = handle.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
    if before + len > handle.max_queued_bytes || handle.tx.try_send(out).is_err() {
        handle.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        return false;
    }
    let queued = handle.tx.max_capacity() - handle.tx.capacity();
    metrics
        .queue_high_water
        .fetch_max(queued as u64, Ordering::Relaxed);
    true
}

impl State {
    /// Queue a presence diff to every presence member of a topic.
    fn fan_out_diff(
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

    fn binding_for(&mut self, b: NewBinding) -> BindingId {
        let NewBinding {
            scope,
            event,
            filter_text,
            filter,
            eq_type,
            hidden,
            ..
        } = b;
        let key = BindingKey {
            scope,
            event,
            filter_text,
            hidden,
        };
        if let Some(&id) = self.keys.get(&key) {
            return id;
        }
        self.next_binding += 1;
        let id = self.next_binding;
        let eq = match (&filter, &eq_type) {
            (Some(f), Some(_)) => f.eq_index().map(|(col, k)| (col.to_owned(), k.clone())),
            _ => None,
        };
        match &key.scope {
            Scope::Table { schema, table } => {
                let index = self
                    .tables
                    .entry((schema.clone(), table.clone()))
                    .or_default();
                match (&eq, eq_type) {
                    (Some((col, k)), Some(typ)) => index
                        .eq
                        .entry(col.clone())
                        .or_insert_with(|| (typ, HashMap::new()))
                        .1
                        .entry(k.clone())
                        .or_default()
                        .push(id),
                    _ => index.scan.push(id),
                }
            }
            Scope::Wildcard { .. } => self.wildcards.push(id),
        }
        self.keys.insert(key.clone(), id);
        self.bindings.insert(
            id,
            Binding {
                key,
                filter,
                eq,
                subs: HashMap::new(),
            },
        );
        id
    }

    fn unsubscribe_ids(&mut self, socket: SocketId, topic: &str, held: Vec<BindingId>) {
        for id in held {
            let empty = match self.bindings.get_mut(&id) {
                Some(b) => {
                    b.subs.remove(&(socket, Arc::<str>::from(topic)));
                    b.subs.is_empty()
                }
                None => false,
            };
            if empty {
                self.drop_binding(id);
            }
        }
    }

    fn drop_binding(&mut self, id: BindingId) {
        let Some(b) = self.bindings.remove(&id) else {
            return;
        };
        self.keys.remove(&b.key);
        match &b.key.scope {
            Scope::Table { schema, table } => {
                let tkey = (schema.clone(), table.clone());
                if let Some(index) = self.tables.get_mut(&tkey) {
                    match &b.eq {
                        Some((col, k)) => {
                            if let Some((_, by_value)) = index.eq.get_mut(col) {
                                if let Some(ids) = by_value.get_mut(k) {
                                    ids.retain(|&x| x != id);
                                    if ids.is_empty() {
                                        by_value.remove(k);
                                    }
                                }
                                if by_value.is_empty() {
                                    index.eq.remove(col);
                                }
                            }
                        }
                        None => index.scan.retain(|&x| x != id),
                    }
                    if index.scan.is_empty() && index.eq.is_empty() {
                        self.tables.remove(&tkey);
                    }
                }
            }
            Scope::Wildcard { .. } => self.wildcards.retain(|&x| x != id),
        }
    }

    /// Bindings that match a change, then one frame per (vsn, topic, ids) group.
    fn plan(&self, change: &Change) -> Vec<Delivery> {
        let mut candidates: Vec<BindingId> = Vec::new();
        if let Some(index) = self
            .tables
            .get(&(change.schema.clone(), change.table.clone()))
        {
            candidates.extend_from_slice(&index.scan);
            for (col, (typ, by_value)) in &index.eq {
                let mut push_row = |row: Option<&Row>| {
                    let key = row
                        .and_then(|r| r.get(col))
                        .and_then(|v| filter::index_key(typ, v));
                    if let Some(ids) = key.and_then(|k| by_value.get(&k)) {
                        candidates.extend_from_slice(ids);
                    }
                };
                push_row(change.record.as_ref());
                push_row(change.old_record.as_ref());
            }
        }
        for &id in &self.wildcards {
            if let Some(b) = self.bindings.get(&id) {
                if let Scope::Wildcard { schema } = &b.key.scope {
                    if schema.as_ref().is_none_or(|s| *s == change.schema) {
                        candidates.push(id);
                    }
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();

        // (socket, topic, id, hidden columns) for every subscription of every matching binding.
        let mut hits: Vec<(SocketId, &Arc<str>, u32, &Hidden)> = Vec::new();
        for id in candidates {
            let Some(b) = self.bindings.get(&id) else {
                continue;
            };
            if b.key.event.is_some_and(|e| e != change.op) {
                continue;
            }
            // Indexed bindings were found by their value: no need to evaluate them again.
            if b.eq.is_none() && !matches(b.filter.as_ref(), change) {
                continue;
            }
            for ((socket, topic), ids) in &b.subs {
                for &sub_id in ids {
                    hits.push((*socket, topic, sub_id, &b.key.hidden));
                }
            }
        }
        if hits.is_empty() {
            return Vec::new();
        }
        hits.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        hits.dedup_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2));

        // A channel's bindings on one table share its subscriber's hidden columns (wildcards
        // are refused where policies apply), so a group's first hit speaks for the group.
        let mut redacted: Vec<(&Hidden, String)> = Vec::new();
        let mut frames: HashMap<FrameKey<'_>, Frame> = HashMap::new();
        let mut out = Vec::new();
        let mut i = 0;
        while i < hits.len() {
            let (socket, topic, _, hidden) = hits[i];
            let mut ids = Vec::new();
            while i < hits.len() && hits[i].0 == socket && hits[i].1 == topic {
                ids.push(hits[i].2);
                i += 1;
            }
            let Some(vsn) = self
                .sockets
                .get(&socket)
                .and_then(|e| e.handle.as_ref())
                .map(|h| h.vsn)
            else {
                continue;
            };
            let data: &str = if hidden.is_empty() {
                &change.data
            } else {
                let at = match redacted.iter().position(|(h, _)| *h == hidden) {
                    Some(at) => at,
                    None => {
                        redacted.push((hidden, change.data_hiding(hidden)));
                        redacted.len() - 1
                    }
                };
                &redacted[at].1
            };
            let frame = frames
                .entry((vsn, topic.as_ref(), ids, hidden))
                .or_insert_with_key(|(vsn, topic, ids, _)| {
                    protocol::postgres_changes(*vsn, topic, ids, data).into()
                })
                .clone();
            out.push(Delivery { socket, frame });
        }
        out
    }
}

/// INSERT matches on the new row, DELETE on the full old row, UPDATE on either: a row that
/// leaves a filter is delivered, so the subscriber learns it left.
fn matches(filter: Option<&BoundFilter>, change: &Change) -> bool {
    let Some(f) = filter else { return true };
    let hit = |row: Option<&Row>| row.is_some_and(|r| f.matches(r));
    match change.op {
        Op::Insert => hit(change.record.as_ref()),
        Op::Delete => hit(change.old_record.as_ref()),
        Op::Update => hit(change.record.as_ref()) || hit(change.old_record.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: serde_json::Value) -> Row {
        match v {
            serde_json::Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn change(op: Op, record: Option<serde_json::Value>, old: Option<serde_json::Value>) -> Change {
        Change {
            seq: 1,
            schema: "public".into(),
            table: "polls".into(),
            op,
            commit_timestamp: "t".into(),
            record: record.map(row),
            old_record: old.map(row),
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

    fn binding(filter: &str, event: Option<Op>, id: u32) -> NewBinding {
        let types = |c: &str| match c {
            "id" => Some("int8"),
            "status" => Some("text"),
            _ => None,
        };
        let bound = filter::parse(filter)
            .unwrap()
            .map(|f| f.bind(types).unwrap());
        let eq_type = bound
            .as_ref()
            .and_then(|b| b.eq_index())
            .and_then(|(c, _)| types(c))
            .map(str::to_owned);
        NewBinding {
            scope: Scope::Table {
                schema: "public".into(),
                table: "polls".into(),
            },
            event,
            filter_text: filter.into(),
            filter: bound,
            eq_type,
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
    fn eq_bindings_are_indexed_and_match_new_or_old_row() {
        let router = Router::new(Arc::default());
        let (s, mut rx, _) = socket(&router, 16);
        let topic: Arc<str> = "realtime:t".into();
        router.subscribe(
            s,
            &topic,
            vec![
                binding("id=eq.7", None, 11),
                binding("status=eq.active", Some(Op::Update), 12),
            ],
        );
        {
            let st = router.lock();
            let index = &st.tables[&("public".to_owned(), "polls".to_owned())];
            assert!(index.scan.is_empty(), "both bindings are eq-indexed");
            assert_eq!(index.eq.len(), 2);
        }
        router.deliver(&change(
            Op::Insert,
            Some(json!({"id": 7, "status": "draft"})),
            None,
        ));
        assert_eq!(
            drain(&mut rx),
            [r#"[null,null,"realtime:t","postgres_changes",{"ids":[11],"data":{"d":1}}]"#]
        );
        // Leaving the filter: old row matches, new does not -> delivered, with both ids.
        router.deliver(&change(
            Op::Update,
            Some(json!({"id": 7, "status": "closed"})),
            Some(json!({"id": 7, "status": "active"})),
        ));
        assert_eq!(
            drain(&mut rx),
            [r#"[null,null,"realtime:t","postgres_changes",{"ids":[11,12],"data":{"d":1}}]"#]
        );
        router.deliver(&change(
            Op::Insert,
            Some(json!({"id": 8, "status": "active"})),
            None,
        ));
        assert!(
            drain(&mut rx).is_empty(),
            "INSERT does not match the UPDATE binding"
        );
    }

    #[test]
    fn shared_bindings_are_removed_with_their_last_subscriber() {
        let router = Router::new(Arc::default());
        let (a, mut rx_a, _) = socket(&router, 16);
        let (b, mut rx_b, _) = socket(&router, 16);
        let topic: Arc<str> = "realtime:x".into();
        router.subscribe(a, &topic, vec![binding("", None, 1)]);
        router.subscribe(b, &topic, vec![binding("", None, 1)]);
        assert_eq!(router.lock().bindings.len(), 1, "deduplicated");
        router.deliver(&change(Op::Insert, Some(json!({"id": 1})), None));
        assert_eq!(drain(&mut rx_a).len(), 1);
        assert_eq!(drain(&mut rx_b).len(), 1);
        router.unsubscribe(a, &topic);
        assert_eq!(router.lock().bindings.len(), 1);
        router.remove_socket(b);
        let st = router.lock();
        assert!(st.bindings.is_empty() && st.keys.is_empty() && st.tables.is_empty());
    }

    #[test]
    fn full_queue_cuts_the_socket_off_without_blocking() {
        let router = Router::new(Arc::default());
        let (slow, _rx_slow, slow_shared) = socket(&router, 2);
        let (fast, mut rx_fast, fast_shared) = socket(&router, 64);
        let topic: Arc<str> = "realtime:x".into();
        router.subscribe(slow, &topic, vec![binding("", None, 1)]);
        router.subscribe(fast, &topic, vec![binding("", None, 1)]);
        for i in 0..10 {
            router.deliver(&change(Op::Insert, Some(json!({"id": i})), None));
        }
        assert_eq!(drain(&mut rx_fast).len(), 10);
        assert_eq!(*slow_shared.cutoff.lock().unwrap(), Some(SLOW_CONSUMER));
        assert_eq!(*fast_shared.cutoff.lock().unwrap(), None);
        assert!(router.metrics.cutoffs_total.load(Ordering::Relaxed) >= 1);
    }
}
