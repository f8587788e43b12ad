//! The relay process: database setup, the listener and dispatcher tasks, the HTTP/WebSocket
//! routes, admission control, and an orderly shutdown.
//!
//! Lifecycle of `run`: connect the pool (failing fast with one clear line), migrate, apply
//! the triggers, start LISTEN and wait until it is active, then serve until `shutdown`
//! completes. Then stop accepting, close every socket with 1001 so clients reconnect
//! elsewhere, and wait (bounded) for every task to finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{info, warn};
use warp::http::StatusCode;
use warp::Filter;

use crate::auth::{self, AuthError, Claims, Verifier};
use crate::config::{Config, Limits};
use crate::db::cleanup;
use crate::db::{self, DbError};
use crate::http::query::{parse_query, percent_decode};
use crate::http::sse;
use crate::ingest::change::Catalog;
use crate::ingest::dispatch::Dispatcher;
use crate::ingest::listener::{self, ListenerConfig};
use crate::ingest::watermark::{self, Markers};
use crate::metrics::{Gauges, Metrics};
use crate::protocol::Vsn;
use crate::protocol::TOPIC_PREFIX;
use crate::realtime::channel;
use crate::realtime::holds::{self, Holds};
use crate::realtime::socket::{self, SocketContext};
use crate::realtime::ws;
use crate::route::deliver::Deliverer;
use crate::route::live::{self, LiveQueries};
use crate::route::policy::{ChannelAction, Policies};
use crate::route::router::{Broadcast, Router, TopicKey};
use crate::shutdown::{Shutdown, ShutdownController, Tracker};

/// How long shutdown waits for sockets to say goodbye and tasks to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Why the relay could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Config(String),
}

/// Shared by every route and task.
#[derive(Debug)]
struct Relay {
    router: Arc<Router>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    pool: deadpool_postgres::Pool,
    limits: Arc<Limits>,
    /// One permit per WebSocket connection, taken before the upgrade and moved into the
    /// socket task: the relay refuses connections instead of running out of memory.
    connections: Arc<Semaphore>,
    shutdown: Shutdown,
    tracker: Tracker,
    /// True once the database is set up (migrated, triggers applied); sockets are refused
    /// until then.
    started: watch::Receiver<bool>,
    /// True while the LISTEN session is active.
    listening: watch::Receiver<bool>,
    /// Latest watermark snapshot, for readers of the change log.
    watermark: watch::Receiver<Option<String>>,
    /// Token verification; `None`: auth off.
    auth: Option<Arc<Verifier>>,
    policies: Arc<Policies>,
    /// Live aggregate topics, once the database is set up.
    live: std::sync::OnceLock<Arc<LiveQueries>>,
    /// Relay-run holds and their topic, once the database is set up.
    holds: std::sync::OnceLock<(Holds, Arc<str>)>,
}

impl Relay {
    fn is_ready(&self) -> bool {
        *self.started.borrow() && *self.listening.borrow()
    }

    /// The identity of an HTTP request (`Authorization: Bearer`, else an `apikey` parameter);
    /// `Ok(None)` when auth is off.
    fn identify(
        &self,
        apikey: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Option<Claims>, AuthError> {
        let Some(verifier) = &self.auth else {
            return Ok(None);
        };
        let bearer = authorization.and_then(|h| h.strip_prefix("Bearer ").map(str::trim));
        let token = bearer.or(apikey).ok_or(AuthError::Missing)?;
        verifier.verify(token, auth::now()).map(Some)
    }
}

/// Turn off Nagle's algorithm for every connection: frames are small and each should leave at
/// once. With it on, a frame written while the previous one is unacknowledged waits for the
/// client's delayed ACK (up to 40 ms on Linux). Set on the listener, whose accepted sockets
/// inherit it (Linux; `accepted_sockets_inherit_no_delay` checks it), because warp accepts the
/// connections itself.
fn no_delay(listener: &TcpListener) {
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_nodelay(true) {
        warn!(cause = %e, "cannot set TCP_NODELAY on the listener: small frames may be delayed");
    }
}

/// Run the relay on an already bound listener until `shutdown` completes.
///
/// HTTP is served at once (`/health`, and `/ready` answering 503) while the database is set
/// up: connect (retried while it is unreachable, for up to `config.startup_timeout`),
/// migrate, apply the triggers, start LISTEN. Then WebSocket clients are admitted.
///
/// # Errors
/// Startup failures: bad URL, database unreachable past the startup timeout, failed migration
/// or trigger SQL. Once serving, database trouble is retried, never returned.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    no_delay(&listener);
    let pool = db::build_pool(&config.database_url, config.pool_size)?;
    let auth = Verifier::from_config(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
        config.jwks_file.as_deref(),
    )
    .map_err(ServerError::Config)?
    .map(Arc::new);
    if auth.is_none() {
        warn!(
            error_code = "AuthOff",
            "AUTH IS OFF: no PGRELAY_JWT_SECRET, PGRELAY_JWT_PUBLIC_KEY or PGRELAY_JWKS_FILE is set, \
             so any client may connect and read every published row; read policies are not applied"
        );
    }
    let policies = Arc::new(Policies::default());
    let controller = ShutdownController::new();
    let limits = Arc::new(config.limits.clone());
    let metrics = Arc::new(Metrics::default());
    let router = Arc::new(Router::new(metrics.clone()));
    let catalog = Arc::new(Catalog::new(pool.clone()));
    let (started_tx, started) = watch::channel(false);
    let (listening_tx, listening) = watch::channel(false);
    let (watermark_tx, watermark) = watch::channel(None);

    let relay = Arc::new(Relay {
        router: router.clone(),
        catalog: catalog.clone(),
        metrics: metrics.clone(),
        pool: pool.clone(),
        limits: limits.clone(),
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        shutdown: controller.subscribe(),
        tracker: controller.tracker(),
        started,
        listening,
        watermark,
        holds: std::sync::OnceLock::new(),
        live: std::sync::OnceLock::new(),
        auth,
        policies: policies.clone(),
    });
    let addr = listener.local_addr().ok();
    info!(addr = %addr.map_or_else(|| "?".into(), |a: SocketAddr| a.to_string()), "pgrelay listening");

    // HTTP first, so /health and /ready answer while the database is set up.
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = {
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(
            warp::serve(routes(relay.clone()))
                .incoming(listener)
                .graceful(stop)
                .run(),
        )
    };
    let user_stop = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
    };

    let setup = async {
        db::wait_until_reachable(&pool, &config.database_url, config.startup_timeout).await?;
        let applied = db::migrate(&pool).await?;
        if !applied.is_empty() {
            info!(migrations = ?applied, "schema migrated");
        }
        let (source, files) =
            db::apply_triggers(&pool, config.triggers_dir.as_deref(), &config.channel).await?;
        info!(source = %source, files, channel = %config.channel, "triggers applied");
        let n = policies.load(&pool).await?;
        info!(policies = n, "read policies loaded");
        let live = Arc::new(LiveQueries::load(&pool).await?);
        Ok::<_, ServerError>(live)
    };
    let mut stopping = stop_rx.clone();
    let setup_result = tokio::select! {
        r = setup => r.map(Some),
        _ = stopping.wait_for(|s| *s) => Ok(None),
    };
    let live = match setup_result {
        Ok(live) => live,
        Err(e) => {
            let _ = stop_tx.send(true);
            user_stop.abort();
            let _ = http.await;
            drop(relay);
            controller.shutdown().await;
            return Err(e);
        }
    };

    if let Some(live) = live.filter(|_| !*stop_rx.borrow()) {
        let _ = relay.live.set(live.clone());
        if let Some(channel) = &config.hold_channel {
            let (holds, task) =
                holds::spawn(pool.clone(), config.hold_heartbeat, controller.subscribe());
            let tracker = controller.tracker();
            tokio::spawn(async move {
                let _ = task.await;
                drop(tracker);
            });
            let topic: Arc<str> = format!("{TOPIC_PREFIX}{channel}").into();
            let _ = relay.holds.set((holds, topic));
        }
        start_pipeline(
            &config,
            &controller,
            &pool,
            router,
            catalog,
            metrics,
            listening_tx,
            watermark_tx,
            policies.clone(),
            live,
        )?;
        let _ = started_tx.send(true);
    }

    let mut stopping = stop_rx.clone();
    let _ = stopping.wait_for(|s| *s).await;
    // Tasks stop now too: server-sent event streams are HTTP responses that warp's graceful
    // shutdown would otherwise wait on for ever.
    controller.signal();
    let _ = http.await;
    info!(
        sockets = relay.router.socket_count(),
        "shutting down: flushing and closing sockets"
    );
    drop(relay);
    if tokio::time::timeout(DRAIN_DEADLINE, controller.shutdown())
        .await
        .is_err()
    {
        warn!(deadline = ?DRAIN_DEADLINE, "some tasks did not finish before the deadline");
    }
    info!("stopped");
    Ok(())
}

/// Start the listener, the dispatcher and the side loops, each tracked for shutdown.
#[allow(clippy::too_many_arguments)]
fn start_pipeline(
    config: &Config,
    controller: &ShutdownController,
    pool: &deadpool_postgres::Pool,
    router: Arc<Router>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    listening_tx: watch::Sender<bool>,
    watermark_tx: watch::Sender<Option<String>>,
    policies: Arc<Policies>,
    live: Arc<LiveQueries>,
) -> Result<(), ServerError> {
    let router_for_live = router.clone();
    let limits = &config.limits;
    let (events_tx, events_rx) = mpsc::channel(limits.change_buffer.max(1));
    let markers = Arc::new(Markers::new(pool.clone(), config.channel.clone()));
    let mut listen_pg = db::pg_config(&config.database_url)?;
    // Named apart from the pool so a DBA can tell it in pg_stat_activity.
    listen_pg.application_name("pgrelay listener");
    let listener_cfg = ListenerConfig {
        pg: listen_pg,
        channel: config.channel.clone(),
        probe_every: limits.listener_probe,
    };
    let spawn = |task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
        let tracker = controller.tracker();
        tokio::spawn(async move {
            task.await;
            drop(tracker);
        });
    };
    spawn(Box::pin(listener::run(
        listener_cfg,
        events_tx,
        listening_tx,
        controller.subscribe(),
    )));
    // Ingest hands changes to routing through a short queue: enough to keep both busy, and
    // bounded so that routing falling behind pushes back on the listener.
    let (deliveries_tx, deliveries_rx) = mpsc::channel(1024);
    let dispatcher = Dispatcher::new(
        catalog,
        deliveries_tx,
        pool.clone(),
        metrics.clone(),
        markers.clone(),
        watermark_tx,
    );
    let deliverer = Deliverer {
        router,
        metrics,
        pool: pool.clone(),
        live: Some(live.clone()),
        policies: Some(policies),
    };
    spawn(Box::pin(live::run(
        live,
        pool.clone(),
        router_for_live,
        controller.subscribe(),
    )));
    spawn(Box::pin(dispatcher.run(events_rx)));
    spawn(Box::pin(deliverer.run(deliveries_rx)));
    spawn(Box::pin(watermark::run(
        markers,
        limits.marker_interval,
        controller.subscribe(),
    )));
    spawn(Box::pin(cleanup::run_pruner(
        pool.clone(),
        config.retention,
        controller.subscribe(),
    )));
    if let Some(settings) = config.cleanup {
        spawn(Box::pin(cleanup::run_sweeper(
            pool.clone(),
            settings,
            controller.subscribe(),
        )));
    }
    Ok(())
}

fn routes(
    relay: Arc<Relay>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let with_relay = {
        let relay = relay.clone();
        warp::any().map(move || relay.clone())
    };
    let ws_path = warp::path!("realtime" / "v1" / "websocket")
        .or(warp::path!("socket" / "websocket"))
        .unify();
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let websocket = ws_path
        .and(ws::handshake())
        .and(raw_query)
        .and(with_relay.clone())
        .map(upgrade);
    let health = warp::path!("health").map(|| "ok");
    // The inspector: one self-contained page, built into the binary.
    let inspector = warp::path::end()
        .and(warp::get())
        .map(|| warp::reply::html(include_str!("../../static/inspector.html")));
    // The demo app and the supabase-js build it loads (vendored: no CDN, works offline).
    let demo = warp::path!("demo")
        .and(warp::get())
        .map(|| warp::reply::html(include_str!("../../static/demo.html")));
    let vendor = warp::path!("vendor" / "supabase.js")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(
                include_str!("../../static/vendor/supabase.js"),
                "content-type",
                "application/javascript; charset=utf-8",
            )
        });
    let metrics =
        warp::path!("metrics")
            .and(with_relay.clone())
            .then(|relay: Arc<Relay>| async move {
                let (connections, channels, bindings) = relay.router.counts();
                let listening = *relay.listening.borrow();
                let notification_queue_usage = db::notification_queue_usage(&relay.pool).await.ok();
                let gauges = Gauges {
                    connections,
                    channels,
                    bindings,
                    listening,
                    notification_queue_usage,
                };
                warp::reply::with_header(
                    relay.metrics.render(&gauges),
                    "content-type",
                    "text/plain; version=0.0.4",
                )
            });
    let ready = warp::path!("ready")
        .and(with_relay.clone())
        .map(|relay: Arc<Relay>| {
            if relay.is_ready() {
                warp::reply::with_status("ready", StatusCode::OK)
            } else if *relay.started.borrow() {
                warp::reply::with_status("not listening", StatusCode::SERVICE_UNAVAILABLE)
            } else {
                warp::reply::with_status(
                    "waiting for the database",
                    StatusCode::SERVICE_UNAVAILABLE,
                )
            }
        });
    let changes = warp::path!("api" / "v1" / "changes")
        .and(warp::get())
        .and(raw_query)
        .and(warp::header::optional::<String>("last-event-id"))
        .and(warp::header::optional::<String>("authorization"))
        .and(with_relay.clone())
        .then(server_sent_events);
    let max_body = u64::try_from(relay.limits.max_message_bytes).unwrap_or(u64::MAX);
    let broadcast_batch = warp::path!("realtime" / "v1" / "api" / "broadcast")
        .and(warp::post())
        .and(warp::body::content_length_limit(max_body))
        .and(raw_query)
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::bytes())
        .and(with_relay.clone())
        .map(rest_broadcast_batch);
    let broadcast_one =
        warp::path!("realtime" / "v1" / "api" / "broadcast" / String / "events" / String)
            .and(warp::post())
            .and(raw_query)
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::content_length_limit(max_body))
            .and(warp::body::bytes())
            .and(with_relay.clone())
            .map(rest_broadcast_one);
    websocket
        .or(broadcast_batch)
        .or(broadcast_one)
        .or(changes)
        .or(health)
        .or(inspector)
        .or(demo)
        .or(vendor)
        .or(metrics)
        .or(ready)
        .or(crate::http::api::routes(
            relay.pool.clone(),
            relay.auth.clone(),
        ))
        .recover(|_rej: warp::Rejection| async {
            Ok::<_, Infallible>(json_error(StatusCode::NOT_FOUND, "Not found"))
        })
}

/// `POST /realtime/v1/api/broadcast`: `{"messages":[{"topic","event","payload","private"?}]}`,
/// the batch endpoint supabase-js falls back to when a channel is not joined. 202, no body.
fn rest_broadcast_batch(
    query: String,
    authorization: Option<String>,
    body: bytes::Bytes,
    relay: Arc<Relay>,
) -> warp::reply::Response {
    use warp::Reply;
    let params = parse_query(&query);
    let claims = match relay.identify(
        params.get("apikey").map(String::as_str),
        authorization.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    #[derive(serde::Deserialize)]
    struct Batch {
        messages: Vec<Msg>,
    }
    #[derive(serde::Deserialize)]
    struct Msg {
        topic: String,
        event: String,
        #[serde(default)]
        payload: serde_json::Value,
        #[serde(default)]
        private: bool,
    }
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    // All or nothing: a batch with one message the caller may not send sends none.
    for m in batch.messages.iter().filter(|m| m.private) {
        if let Some(refusal) = private_send_refusal(&relay, claims.as_ref(), &m.topic) {
            return refusal;
        }
    }
    for m in batch.messages {
        let payload =
            serde_json::json!({"type": "broadcast", "event": m.event, "payload": m.payload});
        let out = payload.to_string();
        if out.len() > relay.limits.max_broadcast_payload_bytes {
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large");
        }
        let key = TopicKey {
            private: m.private,
            topic: format!("{TOPIC_PREFIX}{}", m.topic).into(),
        };
        relay.router.broadcast(&key, None, &Broadcast::Json(out));
    }
    warp::reply::with_status(warp::reply(), StatusCode::ACCEPTED).into_response()
}

/// 403 when auth is on and no channel policy lets the caller broadcast on private `topic`.
fn private_send_refusal(
    relay: &Relay,
    claims: Option<&Claims>,
    topic: &str,
) -> Option<warp::reply::Response> {
    let refusal = relay
        .policies
        .check_channel(topic, claims?, ChannelAction::Send)
        .err()?;
    Some(json_error(StatusCode::FORBIDDEN, &refusal))
}

/// `POST /realtime/v1/api/broadcast/{topic}/events/{event}[?private=true]`: the body is the
/// payload (JSON, or raw bytes with `application/octet-stream`). Exactly 202, as `httpSend()`
/// requires.
fn rest_broadcast_one(
    topic: String,
    event: String,
    query: String,
    content_type: Option<String>,
    authorization: Option<String>,
    body: bytes::Bytes,
    relay: Arc<Relay>,
) -> warp::reply::Response {
    use warp::Reply;
    let params = parse_query(&query);
    let claims = match relay.identify(
        params.get("apikey").map(String::as_str),
        authorization.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let private = params
        .get("private")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let (topic, event) = (percent_decode(&topic), percent_decode(&event));
    if private {
        if let Some(refusal) = private_send_refusal(&relay, claims.as_ref(), &topic) {
            return refusal;
        }
    }
    if body.len() > relay.limits.max_broadcast_payload_bytes {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large");
    }
    let binary = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/octet-stream"));
    let msg = if binary {
        Broadcast::Binary {
            event,
            payload: body,
        }
    } else {
        let payload: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return json_error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"))
            }
        };
        Broadcast::Json(
            serde_json::json!({"type": "broadcast", "event": event, "payload": payload})
                .to_string(),
        )
    };
    let key = TopicKey {
        private,
        topic: format!("{TOPIC_PREFIX}{topic}").into(),
    };
    relay.router.broadcast(&key, None, &msg);
    warp::reply::with_status(warp::reply(), StatusCode::ACCEPTED).into_response()
}

/// `GET /api/v1/changes`: validate, then stream from the change log (see `sse`).
async fn server_sent_events(
    query: String,
    last_event_id: Option<String>,
    bearer: Option<String>,
    relay: Arc<Relay>,
) -> warp::reply::Response {
    use warp::Reply;
    if !relay.is_ready() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "Realtime is starting");
    }
    let start = match last_event_id.as_deref().map(sse::Position::parse) {
        None => None,
        Some(Some(p)) => Some(p),
        Some(None) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &sse::SseError::BadLastEventId.to_string(),
            )
        }
    };
    let params = parse_query(&query);
    let claims = match relay.identify(params.get("apikey").map(String::as_str), bearer.as_deref()) {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let access = claims.as_ref().map(|claims| channel::Access {
        policies: &relay.policies,
        claims,
    });
    let binding = match sse::binding_from_query(&relay.catalog, &params, access).await {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let (tx, rx) = sse::channel();
    let tracker = relay.tracker.clone();
    let mut shutdown = relay.shutdown.clone();
    let feeder = sse::stream(
        relay.pool.clone(),
        relay.catalog.clone(),
        binding,
        start,
        relay.watermark.clone(),
        tx,
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = feeder => {}
            _ = shutdown.recv() => {}
        }
        drop(tracker);
    });
    warp::sse::reply(warp::sse::keep_alive().stream(sse::body(rx))).into_response()
}

fn json_error(status: StatusCode, message: &str) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response()
}

/// Admit or refuse a WebSocket upgrade. Refusals are HTTP responses, so the client's backoff
/// grows instead of reconnecting every second; a request that is no upgrade at all gets 426.
fn upgrade(handshake: ws::Handshake, query: String, relay: Arc<Relay>) -> warp::reply::Response {
    let handshake = match handshake {
        ws::Handshake::Upgrade(u) => u,
        ws::Handshake::Refused(why) => return why.into_response(),
    };
    let params = parse_query(&query);
    let vsn = match Vsn::from_query(params.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if relay.shutdown.is_shutdown() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "Realtime is restarting");
    }
    if !*relay.started.borrow() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Realtime is starting: waiting for the database",
        );
    }
    let Ok(permit) = relay.connections.clone().try_acquire_owned() else {
        return json_error(StatusCode::TOO_MANY_REQUESTS, "Too many connected users");
    };
    let max = relay.limits.max_message_bytes;
    let claims = match &relay.auth {
        None => None,
        Some(verifier) => match params
            .get("apikey")
            .map(|k| verifier.verify(k, auth::now()))
        {
            Some(Ok(claims)) => Some(claims),
            Some(Err(e)) => return json_error(StatusCode::UNAUTHORIZED, &e.to_string()),
            None => return json_error(StatusCode::UNAUTHORIZED, &AuthError::Missing.to_string()),
        },
    };
    Metrics::inc(&relay.metrics.connections_total);
    let ctx = SocketContext {
        live: relay.live.get().cloned(),
        auth: relay.auth.clone(),
        claims,
        policies: relay.policies.clone(),
        holds: relay.holds.get().cloned(),
        metrics: relay.metrics.clone(),
        router: relay.router.clone(),
        catalog: relay.catalog.clone(),
        limits: relay.limits.clone(),
        shutdown: relay.shutdown.clone(),
    };
    let tracker = relay.tracker.clone();
    handshake.on_upgrade(ws::config(max), move |websocket| {
        // A combinator rather than an `async` block: the block would keep its captured
        // WebSocket and context beside the running socket's own, for the socket's lifetime.
        futures_util::FutureExt::map(socket::run(websocket, vsn, ctx), move |()| {
            drop(permit);
            drop(tracker);
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_no_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        no_delay(&listener);
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
