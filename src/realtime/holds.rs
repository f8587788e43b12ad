//! Relay-run press-and-hold sessions: a `track()` on the hold channel (default
//! `button-presence`) with `{user_id, poll_id?}` starts a `button_holds` row; the relay keeps
//! every hold it runs alive with ONE statement per heartbeat interval; untrack, leave or
//! disconnect ends it. Clients write nothing themselves.
//!
//! Heartbeats touch only `last_heartbeat`, which the button_holds trigger ignores, so they cost
//! no NOTIFY. If the relay dies, its holds stop being refreshed and the cleanup loop ends them
//! once they are stale; the ended rows reach subscribers through the trigger as usual.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::db::{self, DbError};
use crate::route::queue::SocketId;
use crate::shutdown::Shutdown;

/// What a track on the hold channel asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    /// `profiles.id` as text (a uuid).
    pub user_id: String,
    pub poll_id: Option<i64>,
}

impl HoldRequest {
    /// Read `{user_id, poll_id?}` from a presence payload. `None` when there is no `user_id`
    /// (plain presence: the client may be writing its own rows, the seed's way).
    ///
    /// # Errors
    /// A `user_id` or `poll_id` of the wrong shape.
    pub fn from_payload(payload: &Map<String, Value>) -> Result<Option<HoldRequest>, String> {
        let Some(user) = payload.get("user_id") else {
            return Ok(None);
        };
        let user_id = user
            .as_str()
            .filter(|u| u.len() == 36 && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
            .ok_or("HoldRefused: user_id must be a uuid string")?
            .to_owned();
        let poll_id = match payload.get("poll_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or("HoldRefused: poll_id must be an integer")?,
            ),
        };
        Ok(Some(HoldRequest { user_id, poll_id }))
    }
}

#[derive(Debug)]
enum Command {
    Start {
        owner: SocketId,
        request: HoldRequest,
        done: oneshot::Sender<Result<(), String>>,
    },
    End {
        owner: SocketId,
    },
}

/// A handle to the holds task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Holds {
    tx: mpsc::Sender<Command>,
}

impl Holds {
    /// Start (or replace) the hold `owner` runs; resolves once the row exists.
    ///
    /// # Errors
    /// The database refused the row (unknown user or poll) or the relay is stopping.
    pub async fn start(&self, owner: SocketId, request: HoldRequest) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Command::Start {
                owner,
                request,
                done,
            })
            .await
            .map_err(|_| "HoldRefused: the relay is stopping".to_owned())?;
        result
            .await
            .map_err(|_| "HoldRefused: the relay is stopping".to_owned())?
    }

    /// End the hold `owner` runs, if any. Never waits on the database.
    pub fn end(&self, owner: SocketId) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(Command::End { owner })
        {
            // Rare (the queue holds thousands): finish in the background rather than drop it.
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }
}

/// The holds task: owns the map owner → hold id, refreshes all holds each `every`.
///
/// Lifecycle: serves commands, heartbeats on deadline; on shutdown it ends the holds it runs
/// (a relay that stops cleanly does not leave them to the cleanup loop).
pub fn spawn(
    pool: Pool,
    every: Duration,
    shutdown: Shutdown,
) -> (Holds, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let task = tokio::spawn(run(pool, every, rx, shutdown));
    (Holds { tx }, task)
}

async fn run(pool: Pool, every: Duration, mut rx: mpsc::Receiver<Command>, mut shutdown: Shutdown) {
    let mut holds: HashMap<SocketId, (HoldRequest, String)> = HashMap::new();
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Start { owner, request, done }) => {
                    let result = start(&pool, &mut holds, owner, request).await;
                    let _ = done.send(result);
                }
                Some(Command::End { owner }) => {
                    if let Some((_, id)) = holds.remove(&owner) {
                        if let Err(e) = end(&pool, &[id]).await {
                            warn!(cause = %e, error_code = "HoldEndFailed", "hold not ended; the cleanup loop will end it");
                        }
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(next) => {
                next = tokio::time::Instant::now() + every;
                if holds.is_empty() {
                    continue;
                }
                let ids: Vec<String> = holds.values().map(|(_, id)| id.clone()).collect();
                match heartbeat(&pool, &ids).await {
                    Ok(n) => debug!(holds = ids.len(), refreshed = n, "hold heartbeat"),
                    Err(e) => warn!(cause = %e, error_code = "HoldHeartbeatFailed", "hold heartbeat failed"),
                }
            }
            _ = shutdown.recv() => break,
        }
    }
    let ids: Vec<String> = holds.into_values().map(|(_, id)| id).collect();
    if !ids.is_empty() {
        match end(&pool, &ids).await {
            Ok(()) => info!(holds = ids.len(), "ended the holds this relay ran"),
            Err(e) => {
                warn!(cause = %e, "holds not ended at shutdown; the cleanup loop will end them")
            }
        }
    }
}

async fn start(
    pool: &Pool,
    holds: &mut HashMap<SocketId, (HoldRequest, String)>,
    owner: SocketId,
    request: HoldRequest,
) -> Result<(), String> {
    if let Some((current, _)) = holds.get(&owner) {
        if *current == request {
            return Ok(()); // re-track of the same hold: it goes on
        }
    }
    if let Some((_, old)) = holds.remove(&owner) {
        end(pool, &[old])
            .await
            .map_err(|e| format!("HoldRefused: {e}"))?;
    }
    let id = insert(pool, &request).await.map_err(|e| match &e {
        DbError::Query(q) => format!("HoldRefused: {}", db::db_cause(q)),
        other => format!("HoldRefused: {other}"),
    })?;
    holds.insert(owner, (request, id));
    Ok(())
}

async fn insert(pool: &Pool, r: &HoldRequest) -> Result<String, DbError> {
    let client = db::client(pool).await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO public.button_holds (user_id, poll_id) \
             VALUES ($1::text::uuid, $2) RETURNING id::text",
        )
        .await?;
    let row = client.query_one(&stmt, &[&r.user_id, &r.poll_id]).await?;
    Ok(row.try_get(0)?)
}

/// One statement for every hold this relay runs.
async fn heartbeat(pool: &Pool, ids: &[String]) -> Result<u64, DbError> {
    let client = db::client(pool).await?;
    let stmt = client
        .prepare_cached(
            "UPDATE public.button_holds SET last_heartbeat = now() \
             WHERE id = ANY($1::text[]::uuid[]) AND is_active",
        )
        .await?;
    Ok(client.execute(&stmt, &[&ids]).await?)
}

async fn end(pool: &Pool, ids: &[String]) -> Result<(), DbError> {
    let client = db::client(pool).await?;
    let stmt = client
        .prepare_cached(
            "UPDATE public.button_holds SET ended_at = now(), is_active = false \
             WHERE id = ANY($1::text[]::uuid[]) AND is_active",
        )
        .await?;
    client.execute(&stmt, &[&ids]).await?;
    Ok(())
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
    fn hold_requests_from_payloads() {
        let uid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(
            HoldRequest::from_payload(&map(json!({"user_id": uid, "poll_id": 7}))),
            Ok(Some(HoldRequest {
                user_id: uid.into(),
                poll_id: Some(7)
            }))
        );
        assert_eq!(
            HoldRequest::from_payload(&map(json!({"user_id": uid}))),
            Ok(Some(HoldRequest {
                user_id: uid.into(),
                poll_id: None
            }))
        );
        assert_eq!(
            HoldRequest::from_payload(&map(json!({"online_at": 1}))),
            Ok(None)
        );
        assert!(HoldRequest::from_payload(&map(json!({"user_id": "x'; drop"}))).is_err());
        assert!(HoldRequest::from_payload(&map(json!({"user_id": uid, "poll_id": "7"}))).is_err());
    }
}
