//! The tasks of a relay sharing Redis: the writer (the only one that writes this relay's
//! state: broadcasts and presence diffs in order, and the periodic refresh), the subscriber
//! (broadcasts and presence diffs from the other relays) and the reconciler (the other
//! relays' full presence state, and which of them are alive).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::cluster::wire::{self, Names, PresenceMsg, SEQ_FIELD};
use crate::metrics::{ClusterGauges, Metrics};
use crate::route::outbox::{self, Inbox, Outgoing};
use crate::route::presence::random_key;
use crate::route::remote::NodePresences;
use crate::route::router::Router;
use crate::route::topic::TopicKey;
use crate::shutdown::Shutdown;

/// How long a relay's presences outlive its last refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);
/// How often a relay refreshes its entry and reads the others'.
pub const REFRESH: Duration = Duration::from_secs(3);
/// How often an unreachable Redis is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// The longest any Redis call may take before Redis counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Most queued items written in one round trip.
const MAX_BATCH: usize = 512;
/// Items waiting for Redis before broadcasts are dropped (and presence rewritten later).
const QUEUE: usize = 16_384;
/// The hash field that says a relay's hash holds its whole state (written by a rewrite, so a
/// hash recreated by a lone diff after Redis lost its data is not mistaken for the state).
const FULL_FIELD: &str = "_full";

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A relay's membership of the cluster.
#[derive(Debug)]
pub struct Cluster {
    /// This relay's id among the others: random, new at each start.
    pub node: Arc<str>,
    names: Names,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    client: redis::Client,
    conn: ConnectionManager,
    state: AtomicU8,
    down_since: Mutex<Option<Instant>>,
    /// The other relays whose presences are mirrored, with the last diff number applied.
    peers: Mutex<HashMap<Arc<str>, u64>>,
    live_peers: AtomicUsize,
    /// This relay's diff counter.
    seq: AtomicU64,
    /// Set when this relay's hash must be written whole.
    resync: Arc<AtomicBool>,
    reconcile_now: Notify,
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Join the relays sharing `url`: attach the router's outbox and return the tasks to run.
///
/// # Errors
/// The URL is not a Redis URL. Redis being down is not an error: the relay starts as a single
/// node and joins when Redis answers.
pub fn start(
    url: &str,
    prefix: &str,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
) -> Result<(Arc<Cluster>, Vec<Task>), String> {
    let client = redis::Client::open(url).map_err(|e| format!("PGRELAY_REDIS_URL: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_max_delay(Duration::from_secs(1));
    let conn = client
        .get_connection_manager_lazy(config)
        .map_err(|e| format!("PGRELAY_REDIS_URL: {e}"))?;
    let (outbox, inbox) = outbox::channel(QUEUE);
    let node: Arc<str> = random_key().replace('-', "")[..12].into();
    let cluster = Arc::new(Cluster {
        node,
        names: Names::new(prefix),
        router: router.clone(),
        metrics,
        client,
        conn,
        state: AtomicU8::new(UNKNOWN),
        down_since: Mutex::new(Some(Instant::now())),
        peers: Mutex::default(),
        live_peers: AtomicUsize::new(0),
        seq: AtomicU64::new(0),
        resync: inbox.resync.clone(),
        reconcile_now: Notify::new(),
    });
    router.attach_outbox(outbox);
    info!(
        node = %cluster.node,
        redis = %redacted(url),
        prefix,
        "sharing broadcasts and presence with the other relays through Redis"
    );
    let tasks: Vec<Task> = vec![
        Box::pin(cluster.clone().writer(inbox, shutdown.clone())),
        Box::pin(cluster.clone().subscriber(shutdown.clone())),
        Box::pin(cluster.clone().reconciler(shutdown.clone())),
    ];
    Ok((cluster, tasks))
}

/// A Redis URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// True while Redis answers.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// For `/metrics`.
    pub fn gauges(&self) -> ClusterGauges {
        ClusterGauges {
            peers: self.live_peers.load(Ordering::Relaxed),
            remote_presences: self.router.remote_presence_count(),
        }
    }

    /// For `/ready`'s body.
    pub fn describe(&self) -> String {
        if self.is_up() {
            format!(
                "redis: up, {} other relay(s)",
                self.live_peers.load(Ordering::Relaxed)
            )
        } else {
            "redis: unreachable, serving this relay's clients only".to_owned()
        }
    }

    fn mark_down(&self, cause: &str) {
        let before = self.state.swap(DOWN, Ordering::AcqRel);
        if before == DOWN {
            debug!(cause, "Redis still unreachable");
            return;
        }
        warn!(
            cause,
            "Redis unreachable: serving this relay's clients only until it returns; \
             broadcasts to other relays are dropped and counted (pgrelay_cluster_broadcasts_dropped_total)"
        );
        Metrics::inc(&self.metrics.cluster_outages_total);
        self.metrics.cluster_up.store(0, Ordering::Relaxed);
        *lock(&self.down_since) = Some(Instant::now());
        self.resync.store(true, Ordering::Release);
    }

    fn mark_up(&self) {
        let before = self.state.swap(UP, Ordering::AcqRel);
        if before == UP {
            return;
        }
        if before == DOWN {
            info!("Redis reachable again: rejoining the other relays");
        } else {
            info!(node = %self.node, "Redis connected");
        }
        self.metrics.cluster_up.store(1, Ordering::Relaxed);
        *lock(&self.down_since) = None;
        self.resync.store(true, Ordering::Release);
        self.reconcile_now.notify_one();
    }

    /// Run one Redis call with the call timeout.
    async fn call<T>(
        &self,
        what: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match timeout(CALL_TIMEOUT, what).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        }
    }

    // ----- the writer -----

    async fn writer(self: Arc<Self>, mut inbox: Inbox, mut shutdown: Shutdown) {
        let mut next_refresh = Instant::now();
        loop {
            tokio::select! {
                item = inbox.rx.recv() => {
                    let Some(item) = item else { break };
                    let mut batch = vec![item];
                    while batch.len() < MAX_BATCH {
                        match inbox.rx.try_recv() {
                            Ok(item) => batch.push(item),
                            Err(_) => break,
                        }
                    }
                    self.write(batch).await;
                }
                () = tokio::time::sleep_until(next_refresh) => {
                    self.refresh().await;
                    // While Redis is away, look for it every second.
                    next_refresh = Instant::now() + if self.is_up() { REFRESH } else { RETRY };
                }
                () = shutdown.recv() => break,
            }
        }
        self.leave().await;
    }

    /// Write a batch in one atomic round trip, in queue order.
    async fn write(&self, batch: Vec<Outgoing>) {
        let mut acks = Vec::new();
        let (mut broadcasts, mut presence) = (0u64, false);
        let hash = self.names.presence_hash(&self.node);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for item in batch {
            match item {
                Outgoing::Broadcast { key, msg, ack } => {
                    let bytes = wire::encode_broadcast(&self.node, &key, &msg);
                    pipe.cmd("PUBLISH")
                        .arg(&self.names.broadcast)
                        .arg(bytes)
                        .ignore();
                    broadcasts += 1;
                    acks.extend(ack);
                }
                Outgoing::Presence { key, joins, leaves } => {
                    presence = true;
                    self.add_diff(&mut pipe, &hash, &key, joins, leaves);
                }
            }
        }
        let ok = if self.is_up() {
            let mut conn = self.conn.clone();
            match self.call::<()>(pipe.query_async(&mut conn)).await {
                Ok(()) => true,
                Err(e) => {
                    self.mark_down(&e);
                    false
                }
            }
        } else {
            false
        };
        if ok {
            self.metrics
                .cluster_broadcasts_sent_total
                .fetch_add(broadcasts, Ordering::Relaxed);
        } else {
            self.metrics
                .cluster_broadcasts_dropped_total
                .fetch_add(broadcasts, Ordering::Relaxed);
            if presence {
                self.resync.store(true, Ordering::Release);
            }
        }
        for ack in acks {
            let _ = ack.send(ok);
        }
    }

    fn add_diff(
        &self,
        pipe: &mut redis::Pipeline,
        hash: &str,
        key: &TopicKey,
        joins: Vec<(String, serde_json::Value)>,
        leaves: Vec<(String, serde_json::Value)>,
    ) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        for (_, meta) in &leaves {
            if let Some(r) = wire::ref_of(meta) {
                pipe.cmd("HDEL").arg(hash).arg(r).ignore();
            }
        }
        for (presence_key, meta) in &joins {
            if let Some((field, value)) = wire::hash_entry(key, presence_key, meta) {
                pipe.cmd("HSET").arg(hash).arg(field).arg(value).ignore();
            }
        }
        pipe.cmd("HSET").arg(hash).arg(SEQ_FIELD).arg(seq).ignore();
        pipe.cmd("PEXPIRE")
            .arg(hash)
            .arg(PRESENCE_TTL.as_millis() as u64)
            .ignore();
        let msg = PresenceMsg::Diff {
            node: self.node.to_string(),
            seq,
            private: key.private,
            topic: key.topic.to_string(),
            joins,
            leaves,
        };
        pipe.cmd("PUBLISH")
            .arg(&self.names.presence)
            .arg(msg.encode())
            .ignore();
    }

    /// Say this relay is alive, and write its whole state when Redis lost it, came back, or
    /// a diff could not be written.
    async fn refresh(&self) {
        let hash = self.names.presence_hash(&self.node);
        let mut conn = self.conn.clone();
        let whole: bool = match self
            .call(
                redis::cmd("HEXISTS")
                    .arg(&hash)
                    .arg(FULL_FIELD)
                    .query_async(&mut conn),
            )
            .await
        {
            Ok(v) => v,
            Err(e) => return self.mark_down(&e),
        };
        self.mark_up();
        let rewrite = self.resync.swap(false, Ordering::AcqRel) || !whole;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if rewrite {
            self.add_rewrite(&mut pipe, &hash);
        }
        let now = now_ms();
        pipe.cmd("PEXPIRE")
            .arg(&hash)
            .arg(PRESENCE_TTL.as_millis() as u64)
            .ignore();
        pipe.cmd("ZADD")
            .arg(&self.names.nodes)
            .arg(now)
            .arg(&*self.node)
            .ignore();
        // Relays long gone (their hashes expired long ago) leave the set.
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&self.names.nodes)
            .arg("-inf")
            .arg(now - 10 * PRESENCE_TTL.as_millis() as i64)
            .ignore();
        if let Err(e) = self.call::<()>(pipe.query_async(&mut conn)).await {
            if rewrite {
                self.resync.store(true, Ordering::Release);
            }
            self.mark_down(&e);
        }
    }

    fn add_rewrite(&self, pipe: &mut redis::Pipeline, hash: &str) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        pipe.cmd("DEL").arg(hash).ignore();
        let mut hset = redis::cmd("HSET");
        hset.arg(hash)
            .arg(SEQ_FIELD)
            .arg(seq)
            .arg(FULL_FIELD)
            .arg(1);
        for (key, entries) in self.router.local_presences() {
            for (presence_key, meta) in entries {
                if let Some((field, value)) = wire::hash_entry(&key, &presence_key, &meta) {
                    hset.arg(field).arg(value);
                }
            }
        }
        pipe.add_command(hset).ignore();
    }

    /// On shutdown: this relay's presences leave everywhere now rather than at expiry.
    async fn leave(&self) {
        if !self.is_up() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.names.presence_hash(&self.node))
            .ignore()
            .cmd("ZREM")
            .arg(&self.names.nodes)
            .arg(&*self.node)
            .ignore()
            .cmd("PUBLISH")
            .arg(&self.names.presence)
            .arg(
                PresenceMsg::Bye {
                    node: self.node.to_string(),
                }
                .encode(),
            )
            .ignore();
        if let Err(e) = self.call::<()>(pipe.query_async(&mut conn)).await {
            debug!(cause = %e, "could not say goodbye to the other relays");
        }
    }

    // ----- the subscriber -----

    async fn subscriber(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            match self.subscribe().await {
                Ok((mut sink, mut stream)) => {
                    debug!("subscribed to the other relays' broadcasts and presence");
                    // Anything missed while not subscribed is in the hashes.
                    self.reconcile_now.notify_one();
                    // A connection Redis dropped does not always end the stream: a ping
                    // that goes unanswered does.
                    let mut ping = tokio::time::interval(REFRESH);
                    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => self.on_message(&msg),
                                None => break,
                            },
                            _ = ping.tick() => {
                                if let Err(e) = self.call::<()>(sink.ping()).await {
                                    debug!(cause = %e, "Redis subscription lost");
                                    break;
                                }
                            }
                            () = shutdown.recv() => return,
                        }
                    }
                }
                Err(e) => debug!(cause = %e, "cannot subscribe to Redis"),
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.recv() => return,
            }
        }
    }

    async fn subscribe(
        &self,
    ) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), String> {
        let pubsub = self.call(self.client.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        self.call(sink.subscribe(&[&self.names.broadcast, &self.names.presence]))
            .await?;
        Ok((sink, stream))
    }

    fn on_message(&self, msg: &redis::Msg) {
        let bytes = msg.get_payload_bytes();
        if msg.get_channel_name() == self.names.broadcast {
            let Some((node, key, broadcast)) = wire::decode_broadcast(bytes) else {
                debug!("skipping a malformed broadcast from Redis");
                return;
            };
            if *node != *self.node {
                // From outside this relay, which cannot slow the sender down: a subscriber
                // whose queue is half full skips it rather than being cut off.
                self.router.broadcast_shedding(&key, &broadcast);
                Metrics::inc(&self.metrics.cluster_broadcasts_received_total);
            }
            return;
        }
        match PresenceMsg::decode(bytes) {
            Some(PresenceMsg::Diff {
                node,
                seq,
                private,
                topic,
                joins,
                leaves,
            }) if *node != *self.node => {
                let node: Arc<str> = node.into();
                let mut peers = lock(&self.peers);
                if peers.get(&node).is_some_and(|&known| seq <= known) {
                    return;
                }
                peers.insert(node.clone(), seq);
                let key = TopicKey {
                    private,
                    topic: topic.into(),
                };
                self.router
                    .apply_remote_presence(&node, &key, joins, leaves);
            }
            Some(PresenceMsg::Bye { node }) if *node != *self.node => {
                let node: Arc<str> = node.into();
                let mut peers = lock(&self.peers);
                peers.remove(&node);
                self.router.replace_remote_node(&node, NodePresences::new());
            }
            Some(_) => {}
            None => debug!("skipping a malformed presence message from Redis"),
        }
    }

    // ----- the reconciler -----

    async fn reconciler(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.reconcile_now.notified() => {}
                () = shutdown.recv() => return,
            }
            if let Err(e) = self.reconcile().await {
                debug!(cause = %e, "cannot read the other relays' presence");
                let long_down =
                    lock(&self.down_since).is_some_and(|since| since.elapsed() >= PRESENCE_TTL);
                if long_down {
                    // Nobody can say the others are alive: serve as a single node.
                    self.forget_peers(&HashSet::new());
                }
            }
        }
    }

    /// Mirror every live relay's whole presence state; the members of relays no longer
    /// alive leave.
    async fn reconcile(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let since = now_ms() - PRESENCE_TTL.as_millis() as i64;
        let live: Vec<String> = self
            .call(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&self.names.nodes)
                    .arg(since)
                    .arg("+inf")
                    .query_async(&mut conn),
            )
            .await?;
        let live: HashSet<Arc<str>> = live
            .into_iter()
            .filter(|n| **n != *self.node)
            .map(Arc::from)
            .collect();
        for node in &live {
            let fields: HashMap<String, Vec<u8>> = self
                .call(
                    redis::cmd("HGETALL")
                        .arg(self.names.presence_hash(node))
                        .query_async(&mut conn),
                )
                .await?;
            if !fields.contains_key(FULL_FIELD) {
                // Not written whole yet (just started, or Redis lost it): next time.
                debug!(node = %node, "a relay's presences are not written whole yet");
                continue;
            }
            let (seq, state) = wire::decode_hash(fields.into_iter().collect());
            let mut peers = lock(&self.peers);
            if peers.get(node).is_some_and(|&known| seq < known) {
                continue;
            }
            debug!(node = %node, seq, topics = state.len(), "mirroring a relay's presences");
            peers.insert(node.clone(), seq);
            self.router.replace_remote_node(node, state);
        }
        self.forget_peers(&live);
        self.live_peers.store(live.len(), Ordering::Relaxed);
        Ok(())
    }

    /// The members of mirrored relays not in `live` leave.
    fn forget_peers(&self, live: &HashSet<Arc<str>>) {
        let mut peers = lock(&self.peers);
        let gone: Vec<Arc<str>> = peers
            .keys()
            .filter(|n| !live.contains(*n))
            .cloned()
            .collect();
        for node in gone {
            peers.remove(&node);
            info!(node = %node, "relay gone: its members leave");
            self.router.replace_remote_node(&node, NodePresences::new());
        }
        if live.is_empty() {
            self.live_peers.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_logs() {
        assert_eq!(
            redacted("redis://user:secret@host:6379/0"),
            "redis://…@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
    }
}
