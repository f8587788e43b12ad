//! Presence per topic: who is tracked under which key, and the diffs that tracking and
//! untracking produce (Phoenix Presence semantics, docs/protocol.md).
//!
//! Pure state: the router owns one [`TopicPresence`] per topic and fans the diffs out. Each
//! channel (one per socket and topic) holds at most one meta; re-tracking replaces it, with the
//! new meta in `joins` and the old one in `leaves`, as Phoenix does.
//!
//! With several relays sharing Redis, a topic also holds the presences tracked on the other
//! relays ([`RemoteMeta`]), as those relays announced them; they show in `presence_state` and
//! their diffs are fanned out like local ones.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use crate::route::queue::SocketId;

/// One tracked presence: the client's payload plus its unique `phx_ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub phx_ref: String,
    pub owner: SocketId,
    pub payload: Map<String, Value>,
}

impl Meta {
    fn to_json(&self, prev: Option<&str>) -> Value {
        let mut m = self.payload.clone();
        m.insert("phx_ref".into(), Value::String(self.phx_ref.clone()));
        if let Some(prev) = prev {
            m.insert("phx_ref_prev".into(), Value::String(prev.to_owned()));
        }
        Value::Object(m)
    }
}

/// A presence tracked on another relay: its key and its meta (the client's payload with
/// `phx_ref`) as that relay announced them.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteMeta {
    pub node: Arc<str>,
    pub key: String,
    pub meta: Value,
}

/// `(key, meta)` pairs, each meta carrying its `phx_ref`.
pub type Metas = Vec<(String, Value)>;

/// A change to a topic's presence, ready to send as `presence_diff`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    joins: Vec<(String, Value)>,
    leaves: Vec<(String, Value)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The joins and the leaves.
    pub fn into_parts(self) -> (Metas, Metas) {
        (self.joins, self.leaves)
    }

    /// Append a later diff: one `presence_diff` saying both. Clients apply joins before
    /// leaves, and refs are never reused, so a presence that came and went inside the batch
    /// ends up absent, as it should.
    pub fn merge(&mut self, later: Diff) {
        self.joins.extend(later.joins);
        self.leaves.extend(later.leaves);
    }

    /// `{"joins":{key:{"metas":[…]}},"leaves":{…}}`
    pub fn to_json(&self) -> String {
        let group = |items: &[(String, Value)]| {
            let mut by_key: Map<String, Value> = Map::new();
            for (key, meta) in items {
                let entry = by_key
                    .entry(key.clone())
                    .or_insert_with(|| serde_json::json!({"metas": []}));
                if let Some(Value::Array(metas)) = entry.get_mut("metas") {
                    metas.push(meta.clone());
                }
            }
            Value::Object(by_key)
        };
        serde_json::json!({"joins": group(&self.joins), "leaves": group(&self.leaves)}).to_string()
    }
}

/// The presences of one topic.
#[derive(Debug, Default)]
pub struct TopicPresence {
    by_key: BTreeMap<String, Vec<Meta>>,
    /// Presences on other relays, by `phx_ref` (unique across relays).
    remote: BTreeMap<String, RemoteMeta>,
}

/// The `phx_ref` of a meta.
fn ref_of(meta: &Value) -> Option<&str> {
    meta.get("phx_ref").and_then(Value::as_str)
}

impl TopicPresence {
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty() && self.remote.is_empty()
    }

    /// Presences held, on this relay and mirrored from others.
    pub fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum::<usize>() + self.remote.len()
    }

    /// This relay's presences as `(key, meta)`, for another relay to mirror.
    pub fn local_entries(&self) -> Vec<(String, Value)> {
        self.by_key
            .iter()
            .flat_map(|(key, metas)| metas.iter().map(|m| (key.clone(), m.to_json(None))))
            .collect()
    }

    /// How many presences of other relays this topic mirrors.
    pub fn remote_len(&self) -> usize {
        self.remote.len()
    }

    /// Apply a diff announced by relay `node`: leaves of presences it does not hold, and joins
    /// already known, are ignored. Returns what changed here.
    pub fn apply_remote(
        &mut self,
        node: &Arc<str>,
        joins: Vec<(String, Value)>,
        leaves: Vec<(String, Value)>,
    ) -> Diff {
        let mut diff = Diff::default();
        for (_, meta) in leaves {
            let Some(r) = ref_of(&meta) else { continue };
            if self.remote.get(r).is_some_and(|old| old.node == *node) {
                if let Some(old) = self.remote.remove(r) {
                    diff.leaves.push((old.key, old.meta));
                }
            }
        }
        for (key, meta) in joins {
            self.remote_join(node, key, meta, &mut diff);
        }
        diff
    }

    fn remote_join(&mut self, node: &Arc<str>, key: String, mut meta: Value, diff: &mut Diff) {
        let Some(r) = ref_of(&meta).map(str::to_owned) else {
            return;
        };
        // The state keeps a meta as it stands, without the diff-only `phx_ref_prev`.
        let announced = meta.clone();
        if let Value::Object(m) = &mut meta {
            m.remove("phx_ref_prev");
        }
        match self.remote.get(&r) {
            Some(old) if old.key == key && old.meta == meta => return,
            Some(old) if old.node != *node => return,
            Some(_) => {
                if let Some(old) = self.remote.remove(&r) {
                    diff.leaves.push((old.key, old.meta));
                }
            }
            None => {}
        }
        diff.joins.push((key.clone(), announced));
        self.remote.insert(
            r,
            RemoteMeta {
                node: node.clone(),
                key,
                meta,
            },
        );
    }

    /// Make relay `node`'s presences exactly `entries` (its full state, read from Redis).
    pub fn replace_remote(&mut self, node: &Arc<str>, entries: Vec<(String, Value)>) -> Diff {
        let keep: std::collections::HashSet<&str> =
            entries.iter().filter_map(|(_, m)| ref_of(m)).collect();
        let gone: Vec<String> = self
            .remote
            .iter()
            .filter(|(r, m)| m.node == *node && !keep.contains(r.as_str()))
            .map(|(r, _)| r.clone())
            .collect();
        let mut diff = Diff::default();
        for r in gone {
            if let Some(old) = self.remote.remove(&r) {
                diff.leaves.push((old.key, old.meta));
            }
        }
        for (key, meta) in entries {
            self.remote_join(node, key, meta, &mut diff);
        }
        diff
    }

    /// Track `payload` under `key` for `owner`'s channel. `None` when nothing changed (the same
    /// payload tracked again).
    pub fn track(
        &mut self,
        owner: SocketId,
        key: &str,
        payload: Map<String, Value>,
    ) -> Option<Diff> {
        let mut diff = Diff::default();
        let mut prev_ref = None;
        if let Some((old_key, old)) = self.take(owner) {
            if old_key == key && old.payload == payload {
                self.by_key.entry(old_key).or_default().push(old);
                return None;
            }
            prev_ref = Some(old.phx_ref.clone());
            diff.leaves.push((old_key, old.to_json(None)));
        }
        let meta = Meta {
            phx_ref: next_ref(),
            owner,
            payload,
        };
        diff.joins
            .push((key.to_owned(), meta.to_json(prev_ref.as_deref())));
        self.by_key.entry(key.to_owned()).or_default().push(meta);
        Some(diff)
    }

    /// Remove `owner`'s presence, if any.
    pub fn untrack(&mut self, owner: SocketId) -> Option<Diff> {
        let (key, old) = self.take(owner)?;
        Some(Diff {
            joins: Vec::new(),
            leaves: vec![(key, old.to_json(None))],
        })
    }

    /// The key `owner` is tracked under.
    pub fn key_of(&self, owner: SocketId) -> Option<&str> {
        self.by_key
            .iter()
            .find(|(_, metas)| metas.iter().any(|m| m.owner == owner))
            .map(|(k, _)| k.as_str())
    }

    fn take(&mut self, owner: SocketId) -> Option<(String, Meta)> {
        let key = self.key_of(owner)?.to_owned();
        let metas = self.by_key.get_mut(&key)?;
        let i = metas.iter().position(|m| m.owner == owner)?;
        let meta = metas.remove(i);
        if metas.is_empty() {
            self.by_key.remove(&key);
        }
        Some((key, meta))
    }

    /// `presence_state`: `{key: {"metas": […]}}`, this relay's presences and then the other
    /// relays'.
    pub fn state_json(&self) -> String {
        let mut out: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for (key, metas) in &self.by_key {
            out.entry(key)
                .or_default()
                .extend(metas.iter().map(|m| m.to_json(None)));
        }
        for m in self.remote.values() {
            out.entry(&m.key).or_default().push(m.meta.clone());
        }
        let out: Map<String, Value> = out
            .into_iter()
            .map(|(k, metas)| (k.to_owned(), serde_json::json!({ "metas": metas })))
            .collect();
        Value::Object(out).to_string()
    }
}

static NEXT_REF: AtomicU64 = AtomicU64::new(1);

/// A `phx_ref` unique among relays (Phoenix uses opaque strings too): a random prefix drawn
/// once per process, then a counter.
fn next_ref() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| random_key()[..8].to_owned());
    format!("F{prefix}.{:x}", NEXT_REF.fetch_add(1, Ordering::Relaxed))
}

/// A random version-4 UUID, for channels that join with an empty presence key.
pub fn random_key() -> String {
    let word = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let (a, b) = (word(), word());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn track_update_untrack() {
        let mut p = TopicPresence::default();
        let d = p.track(1, "alice", map(json!({"online_at": 1}))).unwrap();
        let v: Value = serde_json::from_str(&d.to_json()).unwrap();
        let r1 = v["joins"]["alice"]["metas"][0]["phx_ref"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(v["joins"]["alice"]["metas"][0]["online_at"], 1);
        assert_eq!(v["leaves"], json!({}));
        // Same payload again: nothing.
        assert!(p.track(1, "alice", map(json!({"online_at": 1}))).is_none());
        // A new payload: new meta in joins (with phx_ref_prev), old one in leaves.
        let d = p.track(1, "alice", map(json!({"online_at": 2}))).unwrap();
        let v: Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(v["leaves"]["alice"]["metas"][0]["phx_ref"], r1.as_str());
        assert_eq!(v["joins"]["alice"]["metas"][0]["phx_ref_prev"], r1.as_str());
        assert_ne!(v["joins"]["alice"]["metas"][0]["phx_ref"], r1.as_str());
        // Two owners, same key: two metas.
        p.track(2, "alice", map(json!({"tab": 2}))).unwrap();
        let state: Value = serde_json::from_str(&p.state_json()).unwrap();
        assert_eq!(state["alice"]["metas"].as_array().unwrap().len(), 2);
        let d = p.untrack(1).unwrap();
        let v: Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(v["leaves"]["alice"]["metas"][0]["online_at"], 2);
        assert!(p.untrack(1).is_none());
        p.untrack(2).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.state_json(), "{}");
    }

    #[test]
    fn remote_presences_join_leave_and_are_replaced() {
        let a: Arc<str> = "node-a".into();
        let b: Arc<str> = "node-b".into();
        let mut p = TopicPresence::default();
        p.track(1, "local", map(json!({"x": 0}))).unwrap();
        let m1 = json!({"phx_ref": "Ra.1", "user": 1});
        let d = p.apply_remote(&a, vec![("alice".into(), m1.clone())], vec![]);
        let v: Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(v["joins"]["alice"]["metas"][0], m1);
        // Known already: nothing.
        assert!(p
            .apply_remote(&a, vec![("alice".into(), m1.clone())], vec![])
            .is_empty());
        // Another relay cannot take it away.
        assert!(p
            .apply_remote(&b, vec![], vec![("alice".into(), m1.clone())])
            .is_empty());
        let state: Value = serde_json::from_str(&p.state_json()).unwrap();
        assert_eq!(state["alice"]["metas"][0], m1);
        assert_eq!(state["local"]["metas"][0]["x"], 0);
        // The full state of node a no longer has alice but has bob: one leave, one join.
        let m2 = json!({"phx_ref": "Ra.2", "user": 2});
        let d = p.replace_remote(&a, vec![("bob".into(), m2.clone())]);
        let v: Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(v["leaves"]["alice"]["metas"][0], m1);
        assert_eq!(v["joins"]["bob"]["metas"][0], m2);
        assert_eq!(p.remote_len(), 1);
        let d = p.replace_remote(&a, vec![]);
        assert_eq!(d.into_parts().1.len(), 1);
        p.untrack(1).unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn refs_are_unique_across_processes_by_prefix() {
        let r = next_ref();
        assert!(r.starts_with('F') && r.contains('.'), "{r}");
        assert_ne!(next_ref(), r);
    }

    #[test]
    fn random_keys_look_like_uuids() {
        let k = random_key();
        assert_eq!(k.len(), 36);
        assert_eq!(&k[14..15], "4");
        assert_ne!(random_key(), k);
    }
}
