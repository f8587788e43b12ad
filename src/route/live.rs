//! Live aggregate topics: named queries (`pgrelay.live_queries`, owned by DBAs) whose results
//! are pushed to channel `realtime:<name>` as a `broadcast` event `update` with payload
//! `{"name": …, "rows": […]}` — re-run at most once per debounce window after a change to a
//! table they depend on, and pushed only when the result changed. A client that joins the
//! channel gets the current value at once.
//!
//! One query per change burst for every dashboard, instead of one refetch per client per event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::db::{self, DbError};
use crate::protocol::TOPIC_PREFIX;
use crate::route::router::Router;
use crate::route::topic::{Broadcast, TopicKey};
use crate::shutdown::Shutdown;

/// One live query.
#[derive(Debug)]
struct Def {
    name: String,
    sql: String,
    depends_on: Vec<String>,
    debounce: Duration,
    topic: Arc<str>,
}

#[derive(Debug, Default)]
struct LiveState {
    /// The last result pushed, as the broadcast payload JSON.
    last: Option<String>,
    /// Since when a change has been waiting (the start of the current debounce window).
    dirty_since: Option<Instant>,
    last_run: Option<Instant>,
}

/// The live queries and their latest results.
#[derive(Debug, Default)]
pub struct LiveQueries {
    defs: Vec<Def>,
    state: Mutex<HashMap<String, LiveState>>,
    wake: Notify,
}

impl LiveQueries {
    /// Read the definitions.
    ///
    /// # Errors
    /// The database did not answer.
    pub async fn load(pool: &Pool) -> Result<LiveQueries, DbError> {
        let client = db::client(pool).await?;
        let rows = client
            .query(
                "SELECT name, sql, depends_on, debounce_ms FROM pgrelay.live_queries ORDER BY name",
                &[],
            )
            .await?;
        let mut defs = Vec::with_capacity(rows.len());
        for r in &rows {
            let name: String = r.try_get(0)?;
            let debounce: i32 = r.try_get(3)?;
            defs.push(Def {
                topic: format!("{TOPIC_PREFIX}{name}").into(),
                sql: r.try_get(1)?,
                depends_on: r.try_get(2)?,
                debounce: Duration::from_millis(u64::try_from(debounce).unwrap_or(0)),
                name,
            });
        }
        let state = defs
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    LiveState {
                        // Computed once at start, without waiting.
                        dirty_since: Some(Instant::now() - Duration::from_secs(3600)),
                        ..LiveState::default()
                    },
                )
            })
            .collect();
        Ok(LiveQueries {
            defs,
            state: Mutex::new(state),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change to `schema.table` arrived: mark the queries that depend on it. Cheap; called
    /// by the routing loop for every change.
    pub fn touched(&self, schema: &str, table: &str) {
        let mut any = false;
        {
            let mut st = self.lock();
            for d in &self.defs {
                let hit = d.depends_on.iter().any(|t| {
                    t.split_once('.')
                        .is_some_and(|(s, n)| s == schema && n == table)
                });
                if hit {
                    if let Some(s) = st.get_mut(&d.name) {
                        s.dirty_since.get_or_insert_with(Instant::now);
                        any = true;
                    }
                }
            }
        }
        if any {
            self.wake.notify_one();
        }
    }

    /// Whether the relay publishes on `key`: a client must not send there, or subscribers
    /// would take its messages for the relay's own. Live topics are public channels; a private
    /// channel of the same name is another topic.
    pub fn publishes(&self, key: &TopicKey) -> bool {
        !key.private && self.defs.iter().any(|d| d.topic == key.topic)
    }

    /// The refusal for a client's send on a topic the relay [`publishes`](Self::publishes).
    pub fn refusal(key: &TopicKey) -> String {
        let name = key.topic.strip_prefix(TOPIC_PREFIX).unwrap_or(&key.topic);
        format!(
            "Unauthorized: the relay publishes on this topic; clients may not send to it: {name}"
        )
    }

    /// The current value for a topic (`realtime:<name>`), as broadcast payload JSON.
    pub fn current(&self, topic: &str) -> Option<String> {
        let name = &self.defs.iter().find(|d| &*d.topic == topic)?.name;
        self.lock().get(name).and_then(|s| s.last.clone())
    }
}

/// Re-run dirty queries, at most once per debounce window each, and push changed results.
///
/// Lifecycle: sleeps until woken by a change or until the next debounce window opens; a
/// failing query is logged with its code and retried on the next change.
pub async fn run(live: Arc<LiveQueries>, pool: Pool, router: Arc<Router>, mut shutdown: Shutdown) {
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let st = live.lock();
            for (i, d) in live.defs.iter().enumerate() {
                let Some(s) = st.get(&d.name) else { continue };
                let Some(since) = s.dirty_since else {
                    continue;
                };
                // Trailing edge: a burst of changes is collected for one window, and never
                // more than one run per window.
                let opens = (since + d.debounce).max(s.last_run.map_or(since, |t| t + d.debounce));
                if opens <= now {
                    due.push(i);
                } else {
                    next = Some(next.map_or(opens, |n: Instant| n.min(opens)));
                }
            }
        }
        for i in due {
            let Some(d) = live.defs.get(i) else { continue };
            {
                let mut st = live.lock();
                if let Some(s) = st.get_mut(&d.name) {
                    s.dirty_since = None;
                    s.last_run = Some(Instant::now());
                }
            }
            match evaluate(&pool, d).await {
                Ok(payload) => {
                    let changed = {
                        let mut st = live.lock();
                        let s = st.entry(d.name.clone()).or_default();
                        let changed = s.last.as_deref() != Some(payload.as_str());
                        if changed {
                            s.last = Some(payload.clone());
                        }
                        changed
                    };
                    if changed {
                        let key = TopicKey {
                            private: false,
                            topic: d.topic.clone(),
                        };
                        let n = router.broadcast(&key, None, &Broadcast::Json(update(&payload)));
                        debug!(query = %d.name, sockets = n, "live query pushed");
                    }
                }
                Err(e) => {
                    warn!(query = %d.name, cause = %e, error_code = "LiveQueryFailed", "live query failed")
                }
            }
        }
        tokio::select! {
            _ = live.wake.notified() => {}
            _ = sleep_until_opt(next) => {}
            _ = shutdown.recv() => return,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `{"name":…,"rows":[…]}` for a query.
async fn evaluate(pool: &Pool, d: &Def) -> Result<String, DbError> {
    let client = db::client(pool).await?;
    // The definition is trusted SQL owned by DBAs (never client input); it is wrapped so the
    // result is one JSON value whatever the query's shape.
    let wrapped = format!(
        "SELECT json_build_object('name', $1::text, 'rows', coalesce(json_agg(q), '[]'::json))::text \
         FROM ({}) q",
        d.sql
    );
    let row = client.query_one(&wrapped, &[&d.name]).await?;
    Ok(row.try_get(0)?)
}

/// The broadcast payload for a result.
pub fn update(payload: &str) -> String {
    format!("{{\"type\":\"broadcast\",\"event\":\"update\",\"payload\":{payload}}}")
}
