//! The other relays' presences, as the cluster engine learns them from Redis: applied to each
//! topic's presence and fanned out to this relay's presence members like local diffs; and
//! this relay's own presences, for the engine to write to Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::route::router::Router;
use crate::route::topic::TopicKey;

/// A relay's presences, by topic: `(key, meta)` pairs.
pub type NodePresences = HashMap<TopicKey, Vec<(String, Value)>>;

impl Router {
    /// Apply a presence diff announced by relay `node` on one topic.
    pub fn apply_remote_presence(
        &self,
        node: &Arc<str>,
        key: &TopicKey,
        joins: Vec<(String, Value)>,
        leaves: Vec<(String, Value)>,
    ) {
        let mut cut = Vec::new();
        let mut flushes = Vec::new();
        {
            let mut st = self.lock();
            let topic = st.topics.entry(key.clone()).or_default();
            let diff = topic.presence.apply_remote(node, joins, leaves);
            let empty = topic.members.is_empty() && topic.presence.is_empty();
            if !diff.is_empty() {
                self.emit(&mut st, key, &diff, &mut cut, &mut flushes);
            }
            if empty {
                st.topics.remove(key);
            }
        }
        self.cut_off_all(cut);
        self.schedule_flushes(flushes);
    }

    /// Make relay `node`'s presences exactly `state` (its full state): what it no longer
    /// holds leaves, what is new joins. An empty `state` is how a dead relay's members leave.
    pub fn replace_remote_node(&self, node: &Arc<str>, mut state: NodePresences) {
        let mut cut = Vec::new();
        let mut flushes = Vec::new();
        {
            let mut st = self.lock();
            // Every topic where the relay had presences or has them now.
            let mut keys: HashSet<TopicKey> = st
                .topics
                .iter()
                .filter(|(_, t)| t.presence.remote_len() > 0)
                .map(|(k, _)| k.clone())
                .collect();
            keys.extend(state.keys().cloned());
            for key in keys {
                let entries = state.remove(&key).unwrap_or_default();
                let topic = st.topics.entry(key.clone()).or_default();
                let diff = topic.presence.replace_remote(node, entries);
                let empty = topic.members.is_empty() && topic.presence.is_empty();
                if !diff.is_empty() {
                    self.emit(&mut st, &key, &diff, &mut cut, &mut flushes);
                }
                if empty {
                    st.topics.remove(&key);
                }
            }
        }
        self.cut_off_all(cut);
        self.schedule_flushes(flushes);
    }

    /// This relay's own presences, by topic.
    pub fn local_presences(&self) -> NodePresences {
        let st = self.lock();
        st.topics
            .iter()
            .map(|(k, t)| (k.clone(), t.presence.local_entries()))
            .filter(|(_, entries)| !entries.is_empty())
            .collect()
    }

    /// How many presences of other relays are mirrored here.
    pub fn remote_presence_count(&self) -> usize {
        self.lock()
            .topics
            .values()
            .map(|t| t.presence.remote_len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use serde_json::json;

    fn key() -> TopicKey {
        TopicKey {
            private: false,
            topic: "realtime:room".into(),
        }
    }

    #[test]
    fn a_relay_state_replaces_its_presences_also_on_topics_with_local_ones() {
        let router = Router::new(Arc::new(Metrics::default()));
        let node: Arc<str> = "n1".into();
        let state = |refs: &[&str]| {
            let mut s = NodePresences::new();
            s.insert(
                key(),
                refs.iter()
                    .map(|r| ("k".to_owned(), json!({ "phx_ref": r })))
                    .collect(),
            );
            s
        };
        router.replace_remote_node(&node, state(&["a", "b"]));
        assert_eq!(router.remote_presence_count(), 2);
        router.replace_remote_node(&node, NodePresences::new());
        assert_eq!(router.remote_presence_count(), 0);
        // Back again on a topic the router still knows: joins again.
        router.apply_remote_presence(&node, &key(), vec![], vec![]);
        router.replace_remote_node(&node, state(&["c"]));
        assert_eq!(router.remote_presence_count(), 1);
        let other: Arc<str> = "n2".into();
        router.replace_remote_node(&other, NodePresences::new());
        assert_eq!(
            router.remote_presence_count(),
            1,
            "another relay's state leaves n1's alone"
        );
    }
}
