//! `Change`: one row change as the triggers report it, decoded once, plus the per-table
//! catalog (column names and types) that every `postgres_changes` event carries.
//!
//! A change is read from the change log exactly once and serialized into the event's `data`
//! object exactly once; every subscriber's frame embeds that same text.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use serde_json::{Map, Value};

use crate::db::{self, DbError};

pub type Row = Map<String, Value>;

/// The kind of row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// One committed row change, ready to route.
#[derive(Debug)]
pub struct Change {
    pub seq: i64,
    pub schema: String,
    pub table: String,
    pub op: Op,
    pub commit_timestamp: String,
    /// When the change was logged (`commit_timestamp` as a time, so latency figures need not
    /// parse the string).
    pub changed_at: std::time::SystemTime,
    /// The new row (INSERT, UPDATE).
    pub record: Option<Row>,
    /// The full old row (UPDATE, DELETE): filters see every column, not just the key.
    pub old_record: Option<Row>,
    /// The `data` object of the `postgres_changes` event, serialized once.
    pub data: String,
    /// The table's columns as `data` was rendered with, for subscribers that may not see
    /// some of them (read policies).
    pub info: Option<Arc<TableInfo>>,
}

/// Why a change-log row could not become a `Change`.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("change log row is not a pgrelay change: {0}")]
    Malformed(String),
    #[error("table {schema}.{table} has no columns in the catalog (dropped?)")]
    UnknownTable { schema: String, table: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ChangeError {
    pub fn code(&self) -> &'static str {
        match self {
            ChangeError::Malformed(_) => "MalformedPayload",
            ChangeError::UnknownTable { .. } => "UnknownTable",
            ChangeError::Db(_) => "DatabaseError",
        }
    }
}

impl Change {
    /// A change read from the change log: every change the relay delivers is one.
    pub async fn from_log(row: db::LoggedChange, catalog: &Catalog) -> Result<Change, ChangeError> {
        let op = match row.op.as_str() {
            "INSERT" => Op::Insert,
            "UPDATE" => Op::Update,
            "DELETE" => Op::Delete,
            other => return Err(ChangeError::Malformed(format!("unknown op {other:?}"))),
        };
        Change {
            seq: row.seq,
            schema: row.schema,
            table: row.table,
            op,
            commit_timestamp: row.commit_timestamp,
            changed_at: row.changed_at,
            record: as_row(row.record),
            old_record: as_row(row.old_record),
            data: String::new(),
            info: None,
        }
        .finish(catalog)
        .await
    }

    /// Attach the table's columns and serialize the event's `data` once.
    async fn finish(mut self, catalog: &Catalog) -> Result<Change, ChangeError> {
        let shape = self.record.as_ref().or(self.old_record.as_ref());
        let info = catalog
            .table_for_row(&self.schema, &self.table, shape)
            .await?
            .ok_or_else(|| ChangeError::UnknownTable {
                schema: self.schema.clone(),
                table: self.table.clone(),
            })?;
        self.data = data_json(&self, &info.columns_json, &[]);
        self.info = Some(info);
        Ok(self)
    }
}

impl Change {
    /// The event's `data` without the `hidden` columns (read policies): removed from
    /// `record`, `old_record` and `columns`, every other field as everyone else gets it.
    /// Rendered from the rows, not by parsing `data` again.
    pub fn data_hiding(&self, hidden: &[String]) -> String {
        match &self.info {
            Some(info) => data_json(self, &info.columns_json_hiding(hidden), hidden),
            // Every routed change went through `finish`; should one not have, send no row at
            // all rather than one that may hold a hidden value.
            None => "{\"errors\":[\"row withheld\"]}".to_owned(),
        }
    }
}

fn as_row(v: Option<Value>) -> Option<Row> {
    match v {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// The event's `data` object, keys in Supabase's order, without the `hidden` columns' values
/// (`columns_json` must already leave them out).
fn data_json(change: &Change, columns_json: &str, hidden: &[String]) -> String {
    use crate::protocol::push_str;
    let mut out = String::with_capacity(columns_json.len() + 256);
    out.push_str("{\"columns\":");
    out.push_str(columns_json);
    out.push_str(",\"commit_timestamp\":");
    push_str(&mut out, &change.commit_timestamp);
    out.push_str(",\"errors\":null");
    if let Some(old) = &change.old_record {
        out.push_str(",\"old_record\":");
        push_row(&mut out, old, hidden);
    }
    if let Some(rec) = &change.record {
        out.push_str(",\"record\":");
        push_row(&mut out, rec, hidden);
    }
    out.push_str(",\"schema\":");
    push_str(&mut out, &change.schema);
    out.push_str(",\"table\":");
    push_str(&mut out, &change.table);
    out.push_str(",\"type\":\"");
    out.push_str(change.op.as_str());
    out.push_str("\"}");
    out
}

/// A row as a JSON object, without the `hidden` columns.
fn push_row(out: &mut String, row: &Row, hidden: &[String]) {
    if hidden.is_empty() {
        return push_json(out, row);
    }
    out.push('{');
    let mut first = true;
    for (name, value) in row.iter().filter(|(k, _)| !hidden.contains(k)) {
        if !first {
            out.push(',');
        }
        first = false;
        crate::protocol::push_str(out, name);
        out.push(':');
        // Serializing a Value cannot fail.
        match serde_json::to_string(value) {
            Ok(v) => out.push_str(&v),
            Err(_) => out.push_str("null"),
        }
    }
    out.push('}');
}

fn push_json(out: &mut String, row: &Row) {
    // Serializing a Map of Values cannot fail (no non-string keys, no custom Serialize).
    match serde_json::to_string(row) {
        Ok(s) => out.push_str(&s),
        Err(_) => out.push_str("{}"),
    }
}

/// A table's columns as the catalog reports them.
#[derive(Debug)]
pub struct TableInfo {
    /// `(name, typname)` in `attnum` order.
    pub columns: Vec<(String, String)>,
    by_name: HashMap<String, usize>,
    /// `[{"name":…,"type":…}, …]`, serialized once per table.
    pub columns_json: String,
}

impl TableInfo {
    /// `columns_json` without the `hidden` columns.
    pub fn columns_json_hiding(&self, hidden: &[String]) -> String {
        let list: Vec<Value> = self
            .columns
            .iter()
            .filter(|(n, _)| !hidden.contains(n))
            .map(|(n, t)| serde_json::json!({"name": n, "type": t}))
            .collect();
        Value::Array(list).to_string()
    }

    fn new(columns: Vec<(String, String)>) -> Self {
        let by_name = columns
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let mut info = TableInfo {
            columns,
            by_name,
            columns_json: String::new(),
        };
        info.columns_json = info.columns_json_hiding(&[]);
        info
    }

    /// `pg_type.typname` of a column.
    pub fn type_of(&self, column: &str) -> Option<&str> {
        self.by_name
            .get(column)
            .and_then(|&i| self.columns.get(i))
            .map(|(_, t)| t.as_str())
    }

    /// True if a row image has exactly this table's columns; false means the table's shape
    /// changed (DDL) since it was cached.
    fn fits(&self, row: &Row) -> bool {
        row.len() == self.columns.len() && row.keys().all(|k| self.by_name.contains_key(k))
    }
}

type TableKey = (String, String);

/// Cached catalog facts: columns per table and the set of published tables.
#[derive(Debug)]
pub struct Catalog {
    pool: Pool,
    state: Mutex<CatalogState>,
}

#[derive(Debug, Default)]
struct CatalogState {
    tables: HashMap<TableKey, Arc<TableInfo>>,
    published: HashSet<TableKey>,
    published_at: Option<Instant>,
}

/// A join naming an unpublished table re-reads the published set, but at most this often, so
/// a client retrying a bad binding cannot turn joins into catalog queries.
const PUBLISHED_REFRESH: Duration = Duration::from_secs(1);

impl Catalog {
    pub fn new(pool: Pool) -> Self {
        Catalog {
            pool,
            state: Mutex::new(CatalogState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CatalogState> {
        // The state is a cache: a panic elsewhere while holding the lock leaves nothing that
        // a reader could misinterpret, so a poisoned lock is simply taken over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Columns of a table, loading them on first use. `None` if the table does not exist.
    pub async fn table(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<Arc<TableInfo>>, DbError> {
        let key = (schema.to_owned(), table.to_owned());
        if let Some(info) = self.lock().tables.get(&key) {
            return Ok(Some(info.clone()));
        }
        self.reload_table(key).await
    }

    /// Columns of a table, re-read when `row` shows the table's shape changed.
    async fn table_for_row(
        &self,
        schema: &str,
        table: &str,
        row: Option<&Row>,
    ) -> Result<Option<Arc<TableInfo>>, DbError> {
        let key = (schema.to_owned(), table.to_owned());
        let cached = self.lock().tables.get(&key).cloned();
        match (cached, row) {
            (Some(info), Some(row)) if info.fits(row) => Ok(Some(info)),
            (Some(info), None) => Ok(Some(info)),
            _ => self.reload_table(key).await,
        }
    }

    async fn reload_table(&self, key: TableKey) -> Result<Option<Arc<TableInfo>>, DbError> {
        let columns = db::table_columns(&self.pool, &key.0, &key.1).await?;
        if columns.is_empty() {
            self.lock().tables.remove(&key);
            return Ok(None);
        }
        let info = Arc::new(TableInfo::new(columns));
        tracing::debug!(schema = %key.0, table = %key.1, "table columns loaded");
        self.lock().tables.insert(key, info.clone());
        Ok(Some(info))
    }

    /// Whether a table has the pgrelay trigger attached.
    pub async fn is_published(&self, schema: &str, table: &str) -> Result<bool, DbError> {
        let key = (schema.to_owned(), table.to_owned());
        let stale = {
            let st = self.lock();
            if st.published.contains(&key) {
                return Ok(true);
            }
            st.published_at
                .is_none_or(|at| at.elapsed() >= PUBLISHED_REFRESH)
        };
        if stale {
            let tables = db::published_tables(&self.pool).await?;
            let mut st = self.lock();
            st.published = tables.into_iter().collect();
            st.published_at = Some(Instant::now());
            return Ok(st.published.contains(&key));
        }
        Ok(false)
    }

    /// Published tables in a schema (for `table: "*"` bindings), freshly read.
    pub async fn published_in(&self, schema: Option<&str>) -> Result<Vec<TableKey>, DbError> {
        let tables = db::published_tables(&self.pool).await?;
        let mut st = self.lock();
        st.published = tables.iter().cloned().collect();
        st.published_at = Some(Instant::now());
        Ok(tables
            .into_iter()
            .filter(|(s, _)| schema.is_none_or(|want| want == s))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_json_has_supabase_shape() {
        let info = TableInfo::new(vec![
            ("id".into(), "int8".into()),
            ("status".into(), "text".into()),
        ]);
        let mut rec = Row::new();
        rec.insert("id".into(), Value::from(7));
        rec.insert("status".into(), Value::from("closed"));
        let change = Change {
            seq: 1,
            schema: "public".into(),
            table: "polls".into(),
            op: Op::Delete,
            commit_timestamp: "2026-11-27T10:00:00.123Z".into(),
            changed_at: std::time::SystemTime::UNIX_EPOCH,
            record: None,
            old_record: Some(rec.clone()),
            data: String::new(),
            info: None,
        };
        let v: Value = serde_json::from_str(&data_json(&change, &info.columns_json, &[])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "columns":[{"name":"id","type":"int8"},{"name":"status","type":"text"}],
                "commit_timestamp":"2026-11-27T10:00:00.123Z","errors":null,
                "old_record":{"id":7,"status":"closed"},
                "schema":"public","table":"polls","type":"DELETE"})
        );
        let mut change = change;
        change.data = data_json(&change, &info.columns_json, &[]);
        assert_eq!(
            change.data_hiding(&["status".into()]),
            "{\"errors\":[\"row withheld\"]}",
            "no table info: no row"
        );
        let info = Arc::new(info);
        change.info = Some(info.clone());
        let hidden: Value = serde_json::from_str(&change.data_hiding(&["status".into()])).unwrap();
        assert_eq!(
            hidden,
            serde_json::json!({
                "columns":[{"name":"id","type":"int8"}],
                "commit_timestamp":"2026-11-27T10:00:00.123Z","errors":null,
                "old_record":{"id":7},
                "schema":"public","table":"polls","type":"DELETE"})
        );
        assert!(info.fits(&rec));
        rec.insert("extra".into(), Value::Null);
        assert!(!info.fits(&rec));
        assert_eq!(info.type_of("status"), Some("text"));
        assert_eq!(info.type_of("nope"), None);
    }
}
