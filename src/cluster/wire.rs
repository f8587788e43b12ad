//! What relays write to Redis and to each other through it, and how it is read back.
//!
//! - Broadcasts go on channel `<prefix>:broadcast` as one line of JSON (the sender relay, the
//!   topic, and for a binary payload its event) then the payload's bytes as they are.
//! - Presence diffs go on channel `<prefix>:presence` as JSON, numbered per relay (`seq`).
//! - Each relay's presences are a hash `<prefix>:presence:<node>`: one field per presence
//!   (its `phx_ref`) holding the topic, key and meta, and a field `_seq`, the number of the
//!   last diff the hash includes. It expires unless its relay refreshes it.
//! - Sorted set `<prefix>:nodes` scores each relay by its last refresh (ms since the epoch).
//!
//! Everything read from Redis is decoded without trusting it: a malformed entry is skipped.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::route::remote::NodePresences;
use crate::route::topic::{Broadcast, TopicKey};

/// The hash field holding the number of the last diff a relay's hash includes.
pub const SEQ_FIELD: &str = "_seq";

/// Redis key and channel names under one prefix (`PGRELAY_REDIS_PREFIX`).
#[derive(Debug, Clone)]
pub struct Names {
    pub broadcast: String,
    pub presence: String,
    pub nodes: String,
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            broadcast: format!("{prefix}:broadcast"),
            presence: format!("{prefix}:presence"),
            nodes: format!("{prefix}:nodes"),
            prefix: prefix.to_owned(),
        }
    }

    /// The hash of one relay's presences.
    pub fn presence_hash(&self, node: &str) -> String {
        format!("{}:presence:{node}", self.prefix)
    }
}

#[derive(Serialize, Deserialize)]
struct BroadcastHeader<'a> {
    #[serde(borrow)]
    node: Cow<'a, str>,
    private: bool,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    /// Set for a binary payload (its event); a JSON broadcast carries its event in the body.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    event: Option<Cow<'a, str>>,
}

/// A broadcast for the other relays.
pub fn encode_broadcast(node: &str, key: &TopicKey, msg: &Broadcast) -> Vec<u8> {
    let (event, body): (Option<&str>, &[u8]) = match msg {
        Broadcast::Json(text) => (None, text.as_bytes()),
        Broadcast::Binary { event, payload } => (Some(event), payload),
    };
    let header = BroadcastHeader {
        node: node.into(),
        private: key.private,
        topic: Cow::Borrowed(&key.topic),
        event: event.map(Cow::Borrowed),
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// A broadcast from relay `node`, or `None` when the bytes are not one.
pub fn decode_broadcast(bytes: &[u8]) -> Option<(String, TopicKey, Broadcast)> {
    let split = bytes.iter().position(|&b| b == b'\n')?;
    let header: BroadcastHeader = serde_json::from_slice(&bytes[..split]).ok()?;
    let body = &bytes[split + 1..];
    let msg = match header.event {
        None => Broadcast::Json(std::str::from_utf8(body).ok()?.to_owned()),
        Some(event) => Broadcast::Binary {
            event: event.into_owned(),
            payload: bytes::Bytes::copy_from_slice(body),
        },
    };
    let key = TopicKey {
        private: header.private,
        topic: header.topic.as_ref().into(),
    };
    Some((header.node.into_owned(), key, msg))
}

/// A message on the presence channel.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PresenceMsg {
    /// A diff of relay `node`'s presences on one topic.
    Diff {
        node: String,
        seq: u64,
        private: bool,
        topic: String,
        joins: Vec<(String, Value)>,
        leaves: Vec<(String, Value)>,
    },
    /// Relay `node` is stopping: its presences leave now.
    Bye { node: String },
}

impl PresenceMsg {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<PresenceMsg> {
        serde_json::from_slice(bytes).ok()
    }
}

/// One presence in a relay's hash.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    private: bool,
    topic: String,
    key: String,
    meta: Value,
}

/// The hash fields of one presence: its `phx_ref` and the entry.
pub fn hash_entry(key: &TopicKey, presence_key: &str, meta: &Value) -> Option<(String, String)> {
    let phx_ref = meta.get("phx_ref")?.as_str()?.to_owned();
    let mut meta = meta.clone();
    if let Value::Object(m) = &mut meta {
        m.remove("phx_ref_prev");
    }
    let entry = Entry {
        private: key.private,
        topic: key.topic.to_string(),
        key: presence_key.to_owned(),
        meta,
    };
    Some((phx_ref, serde_json::to_string(&entry).ok()?))
}

/// The `phx_ref` of a meta in a diff.
pub fn ref_of(meta: &Value) -> Option<&str> {
    meta.get("phx_ref").and_then(Value::as_str)
}

/// A relay's hash, read back: its `_seq` and its presences by topic. Malformed fields are
/// skipped.
pub fn decode_hash(fields: Vec<(String, Vec<u8>)>) -> (u64, NodePresences) {
    let mut seq = 0;
    let mut out = NodePresences::new();
    for (field, value) in fields {
        if field == SEQ_FIELD {
            seq = std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            continue;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(&value) else {
            continue;
        };
        if ref_of(&entry.meta) != Some(field.as_str()) {
            continue;
        }
        let key = TopicKey {
            private: entry.private,
            topic: Arc::from(entry.topic),
        };
        out.entry(key).or_default().push((entry.key, entry.meta));
    }
    (seq, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(private: bool) -> TopicKey {
        TopicKey {
            private,
            topic: "realtime:room\nwith newline".into(),
        }
    }

    #[test]
    fn broadcasts_round_trip_json_and_binary() {
        let json_msg =
            Broadcast::Json(r#"{"type":"broadcast","event":"e","payload":{"a":"\n"}}"#.into());
        let bytes = encode_broadcast("n1", &key(true), &json_msg);
        let (node, k, msg) = decode_broadcast(&bytes).unwrap();
        assert_eq!(node, "n1");
        assert_eq!(k, key(true));
        match msg {
            Broadcast::Json(t) => assert_eq!(
                t,
                r#"{"type":"broadcast","event":"e","payload":{"a":"\n"}}"#
            ),
            Broadcast::Binary { .. } => panic!("json expected"),
        }
        let bin = Broadcast::Binary {
            event: "ev".into(),
            payload: bytes::Bytes::from_static(b"\x00\n\xff"),
        };
        let (_, k, msg) = decode_broadcast(&encode_broadcast("n2", &key(false), &bin)).unwrap();
        assert!(!k.private);
        match msg {
            Broadcast::Binary { event, payload } => {
                assert_eq!(event, "ev");
                assert_eq!(&payload[..], b"\x00\n\xff");
            }
            Broadcast::Json(_) => panic!("binary expected"),
        }
        assert!(decode_broadcast(b"no header").is_none());
        assert!(decode_broadcast(b"{\"node\":1}\nx").is_none());
    }

    #[test]
    fn hash_round_trips_and_skips_garbage() {
        let meta = json!({"phx_ref": "Fab.1", "phx_ref_prev": "Fab.0", "user": 7});
        let (field, value) = hash_entry(&key(false), "alice", &meta).unwrap();
        assert_eq!(field, "Fab.1");
        let fields = vec![
            (SEQ_FIELD.to_owned(), b"42".to_vec()),
            (field, value.into_bytes()),
            ("Fab.2".to_owned(), b"not json".to_vec()),
            // A field whose entry names another ref is not trusted.
            (
                "Fzz.9".to_owned(),
                hash_entry(&key(false), "bob", &meta)
                    .unwrap()
                    .1
                    .into_bytes(),
            ),
        ];
        let (seq, presences) = decode_hash(fields);
        assert_eq!(seq, 42);
        let entries = &presences[&key(false)];
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "alice");
        assert_eq!(entries[0].1, json!({"phx_ref": "Fab.1", "user": 7}));
        assert!(hash_entry(&key(false), "x", &json!({"no": "ref"})).is_none());
    }

    #[test]
    fn presence_messages_round_trip() {
        let m = PresenceMsg::Diff {
            node: "n".into(),
            seq: 3,
            private: false,
            topic: "realtime:t".into(),
            joins: vec![("k".into(), json!({"phx_ref": "r"}))],
            leaves: vec![],
        };
        assert_eq!(PresenceMsg::decode(&m.encode()).unwrap(), m);
        let bye = PresenceMsg::Bye { node: "n".into() };
        assert_eq!(PresenceMsg::decode(&bye.encode()).unwrap(), bye);
        assert!(PresenceMsg::decode(b"{}").is_none());
    }
}
