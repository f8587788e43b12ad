//! Channels of one socket: joining (parsing `config.postgres_changes`, validating each binding
//! against the catalog, assigning ids), leaving, and the per-socket channel limit.
//!
//! Validation needs the catalog, so a join is async; it runs in the socket's own task and
//! never touches the delivery path.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::auth::Claims;
use crate::ingest::change::{Catalog, Op};
use crate::route::bindings::{Hidden, NewBinding, Scope, INTERNAL_SCHEMA};
use crate::route::filter;
use crate::route::policy::Policies;
use crate::route::topic::TopicKey;

/// A channel this socket has joined.
#[derive(Debug)]
pub struct Joined {
    pub join_ref: Option<String>,
    /// Whether the channel holds `postgres_changes` bindings in the router.
    pub has_bindings: bool,
    /// Its topic for broadcast and presence (private and public kept apart).
    pub key: TopicKey,
    /// The presence key: `config.presence.key`, or a random one when empty.
    pub presence_key: String,
    /// Reply to each broadcast push (`config.broadcast.ack`).
    pub broadcast_ack: bool,
    /// The identity the channel acts with (auth on); it closes when the token expires.
    pub claims: Option<Claims>,
}

/// The channels of one socket, by full topic (`realtime:<name>`).
#[derive(Debug, Default)]
pub struct Channels {
    pub by_topic: HashMap<Arc<str>, Joined>,
}

/// Why a join is refused outright (an error reply; the client retries with backoff).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JoinError {
    #[error("TopicNameRequired: You must provide a topic name")]
    TopicNameRequired,
    #[error("TopicNameTooLong: a topic name may have at most {MAX_TOPIC_BYTES} bytes")]
    TopicNameTooLong,
    #[error("ChannelRateLimitReached: Too many channels")]
    TooManyChannels,
    #[error("MalformedJoin: {0}")]
    Malformed(String),
}

impl JoinError {
    pub fn code(&self) -> &'static str {
        match self {
            JoinError::TopicNameRequired => "TopicNameRequired",
            JoinError::TopicNameTooLong => "TopicNameTooLong",
            JoinError::TooManyChannels => "ChannelRateLimitReached",
            JoinError::Malformed(_) => "MalformedJoin",
        }
    }
}

/// Longest topic name (after `realtime:`) a channel may have. Each joined channel keeps its
/// name for its life, in the socket and in the router; names are identifiers in practice
/// (`polls-changes`, `room:42`), and 255 bytes leaves room for any of them.
pub const MAX_TOPIC_BYTES: usize = 255;

/// The parts of a `phx_join` payload the relay acts on.
#[derive(Debug)]
pub struct JoinRequest {
    /// Each binding object exactly as received (echoed in the reply with an `id`).
    pub bindings: Vec<Map<String, Value>>,
    pub presence_enabled: bool,
    /// `config.presence.key`; `None` when missing or empty.
    pub presence_key: Option<String>,
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    pub private: bool,
}

/// Read `config` from a join payload. Unknown keys are ignored (newer clients add some).
pub fn parse_join(payload: &Value, max_bindings: usize) -> Result<JoinRequest, JoinError> {
    let empty = Map::new();
    // A join with no payload (null) is a join with no config; any other non-object is a
    // client bug, refused rather than read as "no config".
    if !matches!(payload, Value::Object(_) | Value::Null) {
        return Err(JoinError::Malformed(
            "the join payload must be an object".into(),
        ));
    }
    let config = match payload.get("config") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(c)) => c,
        Some(_) => return Err(JoinError::Malformed("`config` must be an object".into())),
    };
    let bindings = match config.get("postgres_changes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            if list.len() > max_bindings {
                return Err(JoinError::Malformed(format!(
                    "too many postgres_changes bindings: {} (maximum {max_bindings})",
                    list.len()
                )));
            }
            list.iter()
                .map(|b| match b {
                    Value::Object(m) => {
                        // A field of the wrong type must not read as "absent": that would
                        // widen the subscription (every table, every row).
                        for key in ["event", "schema", "table", "filter"] {
                            if !matches!(
                                m.get(key),
                                None | Some(Value::String(_)) | Some(Value::Null)
                            ) {
                                return Err(JoinError::Malformed(format!(
                                    "postgres_changes `{key}` must be a string"
                                )));
                            }
                        }
                        Ok(m.clone())
                    }
                    _ => Err(JoinError::Malformed(
                        "each postgres_changes binding must be an object".into(),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(JoinError::Malformed(
                "`config.postgres_changes` must be an array".into(),
            ))
        }
    };
    let flag = |section: &str, key: &str| {
        config
            .get(section)
            .and_then(|p| p.get(key))
            .is_some_and(truthy)
    };
    let presence_key = config
        .get("presence")
        .and_then(|p| p.get("key"))
        .and_then(|k| match k {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    Ok(JoinRequest {
        bindings,
        presence_enabled: flag("presence", "enabled"),
        presence_key,
        broadcast_self: flag("broadcast", "self"),
        broadcast_ack: flag("broadcast", "ack"),
        private: config.get("private").is_some_and(truthy),
    })
}

/// Booleans may arrive as strings ("true"); Supabase accepts them case-insensitively.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The id of a binding: a stable, positive hash of the object as received, so equal bindings
/// get equal ids and an id is never 0 (the client treats 0 as "no id").
pub fn binding_id(binding: &Map<String, Value>) -> u32 {
    let mut h = Fnv::default();
    hash_object(&mut h, binding);
    // Fold into 1..=2^31-1: positive, non-zero, exact in every JSON number implementation.
    (h.0 % 0x7fff_fffe) as u32 + 1
}

#[derive(Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn hash_object(h: &mut Fnv, m: &Map<String, Value>) {
    // Hash keys in sorted order whatever the map's iteration order, so the id does not
    // depend on how the client ordered the object's keys.
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    h.write(b"{");
    for k in keys {
        h.write(k.as_bytes());
        h.write(b":");
        if let Some(v) = m.get(k) {
            hash_value(h, v);
        }
        h.write(b",");
    }
    h.write(b"}");
}

fn hash_value(h: &mut Fnv, v: &Value) {
    match v {
        Value::Object(m) => hash_object(h, m),
        Value::Array(a) => {
            h.write(b"[");
            for x in a {
                hash_value(h, x);
                h.write(b",");
            }
            h.write(b"]");
        }
        other => h.write(other.to_string().as_bytes()),
    }
}

/// The join reply's `postgres_changes`: each binding echoed exactly, plus its `id`.
pub fn reply_bindings(bindings: &[Map<String, Value>]) -> (Value, Vec<u32>) {
    let mut ids = Vec::with_capacity(bindings.len());
    let list = bindings
        .iter()
        .map(|b| {
            let id = binding_id(b);
            ids.push(id);
            let mut echoed = b.clone();
            echoed.insert("id".into(), Value::from(id));
            Value::Object(echoed)
        })
        .collect();
    (Value::Array(list), ids)
}

/// Validate every binding against the catalog. All or nothing, like Supabase: on the first
/// problem the channel gets no subscription and a `system` error saying what is wrong.
pub async fn validate(
    catalog: &Catalog,
    bindings: &[Map<String, Value>],
    ids: &[u32],
    access: Option<Access<'_>>,
) -> Result<Vec<NewBinding>, String> {
    let mut out = Vec::with_capacity(bindings.len());
    for (binding, &id) in bindings.iter().zip(ids) {
        out.push(validate_one(catalog, binding, id, access).await?);
    }
    Ok(out)
}

/// Who is subscribing, when the relay verifies tokens: their read policies apply.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub policies: &'a Policies,
    pub claims: &'a Claims,
}

fn str_field<'a>(b: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    match b.get(key) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// `[event: *, schema: public, table: polls, filters: [status=eq.active]]`, as Supabase
/// prints the parameters in its error messages.
fn describe(b: &Map<String, Value>) -> String {
    let f = |k| str_field(b, k).unwrap_or("nil");
    format!(
        "[event: {}, schema: {}, table: {}, filters: [{}]]",
        f("event"),
        f("schema"),
        f("table"),
        str_field(b, "filter").unwrap_or("")
    )
}

async fn validate_one(
    catalog: &Catalog,
    b: &Map<String, Value>,
    id: u32,
    access: Option<Access<'_>>,
) -> Result<NewBinding, String> {
    // Anything that is not INSERT/UPDATE/DELETE (case-insensitive) means every event.
    let event = match str_field(b, "event")
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("INSERT") => Some(Op::Insert),
        Some("UPDATE") => Some(Op::Update),
        Some("DELETE") => Some(Op::Delete),
        _ => None,
    };
    let schema = str_field(b, "schema").filter(|s| !s.is_empty());
    let table = str_field(b, "table").filter(|s| !s.is_empty());
    let filter_text = str_field(b, "filter").unwrap_or("");
    let parsed = filter::parse(filter_text).map_err(|e| e.to_string())?;
    let unavailable = || {
        format!(
            "Unable to subscribe to changes with given parameters. Please check Realtime is \
             enabled for the given connect parameters: {}",
            describe(b)
        )
    };
    let exception = |e: &dyn std::fmt::Display| {
        format!(
            "Unable to subscribe to changes with given parameters. An exception happened so \
             please check your connect parameters: {}. Exception: ERROR P0001 \
             (raise_exception) {e}",
            describe(b)
        )
    };
    let db_error = |e: crate::db::DbError| format!("Unable to subscribe to changes: {e}");

    let scope = match (schema, table) {
        (None, None) => {
            return Err(format!(
                "No subscription params provided. Please provide at least a `schema` or \
                 `table` to subscribe to: {}",
                describe(b)
            ))
        }
        (Some("*"), None | Some("*")) => Scope::Wildcard { schema: None },
        (Some(s), None | Some("*")) => Scope::Wildcard {
            schema: Some(s.to_owned()),
        },
        (None, Some(t)) => Scope::Table {
            schema: "public".into(),
            table: t.to_owned(),
        },
        (Some("*"), Some(_)) => {
            return Err(exception(&"a schema wildcard needs table \"*\" too"));
        }
        (Some(s), Some(t)) => Scope::Table {
            schema: s.to_owned(),
            table: t.to_owned(),
        },
    };

    if scope.is_internal() && access.is_none_or(|a| a.claims.role != "service_role") {
        return Err(format!(
            "Unauthorized: schema {INTERNAL_SCHEMA} is internal to the relay; only service_role \
             may subscribe to it: {}",
            describe(b)
        ));
    }
    match &scope {
        Scope::Wildcard { schema } => {
            if access.is_some_and(|a| a.policies.any_in(schema.as_deref())) {
                return Err(
                    "Unauthorized: read policies apply in this schema; subscribe to each table"
                        .into(),
                );
            }
            if parsed.is_some() {
                return Err(exception(&"filters need a single table, not a wildcard"));
            }
            if b.contains_key("select") {
                return Err(exception(
                    &"select is not allowed on a wildcard subscription",
                ));
            }
            if catalog
                .published_in(schema.as_deref())
                .await
                .map_err(db_error)?
                .is_empty()
            {
                return Err(unavailable());
            }
            Ok(NewBinding {
                scope,
                event,
                filter_text: String::new(),
                filter: None,
                eq_type: None,
                hidden: Hidden::default(),
                id,
            })
        }
        Scope::Table { schema, table } => {
            if !catalog
                .is_published(schema, table)
                .await
                .map_err(db_error)?
            {
                return Err(unavailable());
            }
            let Some(info) = catalog.table(schema, table).await.map_err(db_error)? else {
                return Err(unavailable());
            };
            // The subscriber's read policy is ANDed into its own filter: the combined text is
            // the binding's identity, so equal (filter, policy) pairs still share one binding.
            let mut filter_text = filter_text.trim().to_owned();
            let mut parsed = parsed;
            let mut hidden = Vec::new();
            if let Some(a) = access {
                let grant = a.policies.grant(schema, table, a.claims)?;
                // Checked on the subscriber's own filter, before the policy's is added: a
                // filter on a hidden column would tell its value by what it lets through.
                if let Some(col) = parsed
                    .as_ref()
                    .and_then(|f| f.columns().find(|c| grant.hidden.iter().any(|h| h == c)))
                {
                    return Err(format!(
                        "Unauthorized: column {col} of {schema}.{table} is hidden from role {}, \
                         so a filter may not name it",
                        a.claims.role
                    ));
                }
                hidden = grant.hidden;
                if let Some(policy) = grant.row_filter {
                    filter_text = if filter_text.is_empty() {
                        policy
                    } else {
                        format!("{filter_text},{policy}")
                    };
                    parsed = filter::parse(&filter_text).map_err(|e| exception(&e))?;
                }
            }
            let (filter, eq_type) = match parsed {
                None => (None, None),
                Some(f) => {
                    let bound = f.bind(|c| info.type_of(c)).map_err(|e| exception(&e))?;
                    let eq_type = bound
                        .eq_index()
                        .and_then(|(col, _)| info.type_of(col))
                        .map(str::to_owned);
                    (Some(bound), eq_type)
                }
            };
            Ok(NewBinding {
                scope,
                event,
                filter_text,
                filter,
                eq_type,
                hidden: hidden.into(),
                id,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn ids_are_stable_positive_and_order_independent() {
        let a = obj(json!({"event":"*","schema":"public","table":"polls"}));
        let b = obj(json!({"table":"polls","schema":"public","event":"*"}));
        let c = obj(json!({"event":"INSERT","schema":"public","table":"polls"}));
        assert_eq!(binding_id(&a), binding_id(&b));
        assert_ne!(binding_id(&a), binding_id(&c));
        for m in [&a, &c] {
            let id = binding_id(m);
            assert!((1..=0x7fff_fffe).contains(&id));
        }
    }

    #[test]
    fn reply_echoes_exactly_with_id() {
        let bindings = vec![obj(
            json!({"event":"INSERT","schema":"public","table":"todos","filter":"status=eq.active","select":["id"]}),
        )];
        let (reply, ids) = reply_bindings(&bindings);
        assert_eq!(
            reply,
            json!([{"event":"INSERT","schema":"public","table":"todos","filter":"status=eq.active","select":["id"],"id":ids[0]}])
        );
    }

    #[test]
    fn parses_join_config() {
        let j = parse_join(
            &json!({"config":{"broadcast":{"ack":false,"self":false},
                "presence":{"key":"","enabled":"TRUE"},
                "postgres_changes":[{"event":"INSERT","schema":"public","table":"todos"}],
                "private":false}}),
            100,
        )
        .unwrap();
        assert_eq!(j.bindings.len(), 1);
        assert!(j.presence_enabled);
        assert_eq!(j.presence_key, None);
        assert!(!j.broadcast_self && !j.broadcast_ack && !j.private);
        let j = parse_join(
            &json!({"config":{"broadcast":{"self":"true","ack":true},"presence":{"key":"u1"},"private":true}}),
            100,
        )
        .unwrap();
        assert!(j.broadcast_self && j.broadcast_ack && j.private && !j.presence_enabled);
        assert_eq!(j.presence_key.as_deref(), Some("u1"));
        let j = parse_join(&json!({}), 100).unwrap();
        assert!(j.bindings.is_empty() && !j.presence_enabled);
        assert!(parse_join(&json!({"config":{"postgres_changes":{}}}), 100).is_err());
        assert!(parse_join(&json!({"config":{"postgres_changes":[1]}}), 100).is_err());
        for bad in [
            json!({"table":5}),
            json!({"table":"t","filter":5}),
            json!({"event":5,"table":"t"}),
        ] {
            assert_eq!(
                parse_join(&json!({"config":{"postgres_changes":[bad]}}), 100)
                    .unwrap_err()
                    .code(),
                "MalformedJoin"
            );
        }
        assert!(parse_join(&json!({"config":5}), 100).is_err());
        let many: Vec<Value> = (0..3).map(|i| json!({"table": format!("t{i}")})).collect();
        assert_eq!(
            parse_join(&json!({"config":{"postgres_changes":many}}), 2)
                .unwrap_err()
                .code(),
            "MalformedJoin"
        );
    }
}
