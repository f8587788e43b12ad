//! The server's route table: the WebSocket, the REST broadcast, server-sent events, the JSON
//! API, `/metrics`, `/ready`, `/health` and the static pages, tried in turn; whatever none of
//! them takes is a JSON 404. Handlers of a line or two are written in the table, as is the one
//! that checks a request for server-sent events before `sse` streams them; the others live in
//! `admission` (the WebSocket), `broadcast` and `api`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::db;
use crate::http::admission::upgrade;
use crate::http::broadcast::{rest_broadcast_batch, rest_broadcast_one};
use crate::http::listen::ConnPermit;
use crate::http::origin;
use crate::http::query::parse_query;
use crate::http::relay::{json_error, Relay};
use crate::http::sse;
use crate::http::throttle;
use crate::metrics::Gauges;
use crate::realtime::channel;
use crate::realtime::ws;

/// Every route of the server, in the order they are tried.
pub(crate) fn routes(
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
        .and(warp::ext::optional::<ConnPermit>())
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
    let metrics = warp::path!("metrics")
        .and(warp::header::optional::<String>("authorization"))
        .and(with_relay.clone())
        .then(
            |authorization: Option<String>, relay: Arc<Relay>| async move {
                if let Some(want) = &relay.metrics_token {
                    let given = authorization
                        .as_deref()
                        .and_then(|h| h.strip_prefix("Bearer "))
                        .map(str::trim);
                    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), want.as_bytes())) {
                        return warp::reply::with_status(
                            "metrics need Authorization: Bearer <PGRELAY_METRICS_TOKEN>\n",
                            warp::http::StatusCode::UNAUTHORIZED,
                        )
                        .into_response();
                    }
                }
                let (connections, channels, bindings) = relay.router.counts();
                let listening = *relay.listening.borrow();
                let notification_queue_usage = db::notification_queue_usage(&relay.pool).await.ok();
                let notify_lock_waiters = db::notify_lock_waiters(&relay.pool).await.ok();
                let gauges = Gauges {
                    connections,
                    channels,
                    bindings,
                    listening,
                    notification_queue_usage,
                    notify_lock_waiters,
                    ingest_mode: relay.limits.ingest.as_str(),
                    cluster: relay.cluster.as_ref().map(|c| c.gauges()),
                };
                warp::reply::with_header(
                    relay.metrics.render(&gauges),
                    "content-type",
                    "text/plain; version=0.0.4",
                )
                .into_response()
            },
        );
    let ready = warp::path!("ready")
        .and(with_relay.clone())
        .map(|relay: Arc<Relay>| {
            if relay.is_ready() {
                // Redis down does not fail readiness: changes still flow to this relay's
                // clients. The body says so.
                match &relay.cluster {
                    Some(c) => {
                        warp::reply::with_status(format!("ready; {}", c.describe()), StatusCode::OK)
                    }
                    None => warp::reply::with_status("ready".to_owned(), StatusCode::OK),
                }
            } else if *relay.started.borrow() {
                warp::reply::with_status(
                    "not listening".to_owned(),
                    StatusCode::SERVICE_UNAVAILABLE,
                )
            } else {
                warp::reply::with_status(
                    "waiting for the database".to_owned(),
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
        .and(throttle::client_ip())
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
            .and(throttle::client_ip())
            .and(with_relay.clone())
            .map(rest_broadcast_one);
    let guard = origin::guard(relay.origins.clone());
    // Not `warp::options()`: on every other method that would reject with "method not
    // allowed", which outranks "not found" for every unknown path.
    let preflight = warp::method()
        .and_then(|m: warp::http::Method| async move {
            if m == warp::http::Method::OPTIONS {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(guard.clone())
        .map(origin::preflight);
    let everything = websocket
        .or(broadcast_batch)
        .or(broadcast_one)
        .or(changes)
        .or(health)
        .or(inspector)
        .or(demo)
        .or(vendor)
        .or(metrics)
        .or(ready)
        .or(throttle::boost_guard(relay.clone()))
        .or(crate::http::api::routes(
            relay.pool.clone(),
            relay.read_pool.clone(),
            relay.auth.clone(),
        ));
    preflight
        .or(guard.and(everything).map(|origin: Option<String>, reply| {
            origin::allow(Reply::into_response(reply), origin)
        }))
        .recover(|rej: warp::Rejection| async move {
            Ok::<_, Infallible>(match rej.find::<origin::OriginRefused>() {
                Some(refused) => origin::refused(refused),
                None => unanswered(&rej),
            })
        })
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
    // The stream lives as long as its token, as a socket's channels do.
    let expires_in = claims
        .as_ref()
        .map(|c| Duration::from_secs(u64::try_from(c.exp - crate::auth::now()).unwrap_or(0)));
    let last_word = tx.clone();
    let feeder = sse::stream(
        relay.read_pool.clone(),
        relay.catalog.clone(),
        binding,
        start,
        relay.watermark.clone(),
        tx,
    );
    tokio::spawn(async move {
        let expiry = async {
            match expires_in {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = feeder => {}
            _ = shutdown.recv() => {}
            _ = expiry => {
                let message = crate::auth::AuthError::Expired(0).to_string();
                let _ = last_word.send(sse::system_event("error", &message)).await;
            }
        }
        drop(tracker);
    });
    warp::sse::reply(warp::sse::keep_alive().stream(sse::body(rx))).into_response()
}

/// What no route answered, in the API's error shape (`{"error","code"}`, `no-store`): a
/// known path with another method is 405, a body over the limit 413, a request a route
/// refused for its form (a header, a query, a content type) 400, and anything else 404.
fn unanswered(rej: &warp::Rejection) -> warp::reply::Response {
    let (status, code, message) = if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "Method not allowed",
        )
    } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            "Payload too large",
        )
    } else if rej.is_not_found() {
        (StatusCode::NOT_FOUND, "NotFound", "Not found")
    } else {
        (StatusCode::BAD_REQUEST, "BadRequest", "Bad request")
    };
    let mut resp = warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message, "code": code })),
        status,
    )
    .into_response();
    resp.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Compare secrets in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
