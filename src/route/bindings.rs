//! `postgres_changes` bindings: the index of which (socket, channel, binding ids) a [`Change`]
//! goes to, and the frames it makes for them.
//!
//! Bindings are deduplicated: sockets that subscribe with the same (schema, table, event,
//! filter) share one entry, so its filter runs once per change however many sockets hold it.
//! Bindings that are a single `column=eq.value` are found by hash lookup on the row's value,
//! so 10,000 per-row subscriptions cost what the matching ones cost, not a scan.
//!
//! The router holds the index (`Bindings`) under its lock, and queues the frames it plans.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ingest::change::{Change, Op, Row};
use crate::protocol::{self, Vsn};
use crate::route::filter::{self, BoundFilter, IndexKey};
use crate::route::queue::{Frame, SocketId};

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

/// The relay's own schema (change log, policies, the ingest switch). Its published tables
/// (the policy tables, so the relay sees edits) are no one's business but `service_role`'s,
/// which must name the schema: a wildcard over every schema never covers it.
pub const INTERNAL_SCHEMA: &str = "pgrelay";

impl Scope {
    /// Whether a change of `schema.table` is in this scope.
    pub fn covers(&self, schema: &str, table: &str) -> bool {
        match self {
            Scope::Table {
                schema: s,
                table: t,
            } => s == schema && t == table,
            Scope::Wildcard { schema: Some(s) } => s == schema,
            Scope::Wildcard { schema: None } => schema != INTERNAL_SCHEMA,
        }
    }

    /// Whether this scope reaches into [`INTERNAL_SCHEMA`].
    pub fn is_internal(&self) -> bool {
        match self {
            Scope::Table { schema, .. }
            | Scope::Wildcard {
                schema: Some(schema),
            } => schema == INTERNAL_SCHEMA,
            Scope::Wildcard { schema: None } => false,
        }
    }
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
        self.scope.covers(&change.schema, &change.table)
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

pub(super) type BindingId = u64;
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

/// Every socket's bindings, deduplicated, with the indexes that find a change's candidates.
#[derive(Debug, Default)]
pub(super) struct Bindings {
    /// What a binding is → its id: how a second subscriber finds the binding to share.
    keys: HashMap<BindingKey, BindingId>,
    bindings: HashMap<BindingId, Binding>,
    /// (schema, table) → the bindings of that one table.
    tables: HashMap<(String, String), TableIndex>,
    /// Bindings to every table of a schema (or of every schema), checked for every change.
    wildcards: Vec<BindingId>,
    next_binding: BindingId,
}

/// What makes two deliveries of one change the same frame: serializer, topic, binding ids and
/// the columns hidden from the subscriber.
type FrameKey<'a> = (Vsn, &'a str, Vec<u32>, &'a [String]);

/// One planned delivery: a frame for one socket.
pub(super) struct Delivery {
    pub(super) socket: SocketId,
    pub(super) frame: Frame,
}

impl Bindings {
    /// Hold `b` for a channel: its binding (shared with any channel that asked for the same)
    /// gets the channel's id for it. Returns the binding, which the channel must give back to
    /// [`Bindings::unsubscribe`].
    pub(super) fn subscribe(
        &mut self,
        socket: SocketId,
        topic: &Arc<str>,
        b: NewBinding,
    ) -> BindingId {
        let sub_id = b.id;
        let id = self.binding_for(b);
        if let Some(binding) = self.bindings.get_mut(&id) {
            binding
                .subs
                .entry((socket, topic.clone()))
                .or_default()
                .push(sub_id);
        }
        id
    }

    /// Distinct bindings, for `/metrics`.
    pub(super) fn len(&self) -> usize {
        self.bindings.len()
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

    /// Release a channel's hold on `held`; a binding no channel holds any more is dropped.
    pub(super) fn unsubscribe(&mut self, socket: SocketId, topic: &str, held: Vec<BindingId>) {
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

    /// Bindings that match a change, then one frame per (vsn, topic, ids) group. `vsn_of`
    /// tells a socket's serializer; a socket it does not know gets nothing.
    pub(super) fn plan(
        &self,
        change: &Change,
        vsn_of: impl Fn(SocketId) -> Option<Vsn>,
    ) -> Vec<Delivery> {
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
                if b.key.scope.covers(&change.schema, &change.table) {
                    candidates.push(id);
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
            let Some(vsn) = vsn_of(socket) else {
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
            changed_at: std::time::SystemTime::UNIX_EPOCH,
            record: record.map(row),
            old_record: old.map(row),
            data: "{\"d\":1}".into(),
            info: None,
        }
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

    /// The frames `change` makes, as text, every socket speaking vsn 2.0.0.
    fn frames(bindings: &Bindings, change: &Change) -> Vec<String> {
        bindings
            .plan(change, |_| Some(Vsn::V2))
            .into_iter()
            .map(|d| d.frame.to_string())
            .collect()
    }

    #[test]
    fn eq_bindings_are_indexed_and_match_new_or_old_row() {
        let mut bindings = Bindings::default();
        let topic: Arc<str> = "realtime:t".into();
        bindings.subscribe(1, &topic, binding("id=eq.7", None, 11));
        bindings.subscribe(1, &topic, binding("status=eq.active", Some(Op::Update), 12));
        {
            let index = &bindings.tables[&("public".to_owned(), "polls".to_owned())];
            assert!(index.scan.is_empty(), "both bindings are eq-indexed");
            assert_eq!(index.eq.len(), 2);
        }
        let insert = change(Op::Insert, Some(json!({"id": 7, "status": "draft"})), None);
        assert_eq!(
            frames(&bindings, &insert),
            [r#"[null,null,"realtime:t","postgres_changes",{"ids":[11],"data":{"d":1}}]"#]
        );
        // Leaving the filter: old row matches, new does not -> delivered, with both ids.
        let update = change(
            Op::Update,
            Some(json!({"id": 7, "status": "closed"})),
            Some(json!({"id": 7, "status": "active"})),
        );
        assert_eq!(
            frames(&bindings, &update),
            [r#"[null,null,"realtime:t","postgres_changes",{"ids":[11,12],"data":{"d":1}}]"#]
        );
        let insert = change(Op::Insert, Some(json!({"id": 8, "status": "active"})), None);
        assert!(
            frames(&bindings, &insert).is_empty(),
            "INSERT does not match the UPDATE binding"
        );
    }

    #[test]
    fn a_binding_leaves_every_index_with_its_last_subscriber() {
        let mut bindings = Bindings::default();
        let topic: Arc<str> = "realtime:x".into();
        let a = bindings.subscribe(1, &topic, binding("", None, 1));
        let b = bindings.subscribe(2, &topic, binding("", None, 1));
        assert_eq!(a, b, "deduplicated");
        let to: Vec<SocketId> = bindings
            .plan(&change(Op::Insert, Some(json!({"id": 1})), None), |_| {
                Some(Vsn::V2)
            })
            .iter()
            .map(|d| d.socket)
            .collect();
        assert_eq!(to, [1, 2]);
        bindings.unsubscribe(1, &topic, vec![a]);
        assert_eq!(bindings.len(), 1);
        bindings.unsubscribe(2, &topic, vec![b]);
        assert!(
            bindings.bindings.is_empty() && bindings.keys.is_empty() && bindings.tables.is_empty()
        );
    }
}
