//! Admission of a WebSocket: the checks an upgrade passes before its socket task starts
//! (protocol version, shutdown, startup, the token), then the task, which takes its
//! connection's permit (the connection limit) along.

use std::sync::Arc;

use warp::http::StatusCode;

use crate::auth::{self, AuthError};
use crate::http::listen::ConnPermit;
use crate::http::query::parse_query;
use crate::http::relay::{json_error, Relay};
use crate::metrics::Metrics;
use crate::protocol::Vsn;
use crate::realtime::socket::{self, SocketContext};
use crate::realtime::ws;

/// Admit or refuse a WebSocket upgrade. Refusals are HTTP responses, so the client's backoff
/// grows instead of reconnecting every second; a request that is no upgrade at all gets 426.
pub(crate) fn upgrade(
    handshake: ws::Handshake,
    query: String,
    conn: Option<ConnPermit>,
    relay: Arc<Relay>,
) -> warp::reply::Response {
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
    // The connection's own permit goes with the socket: the HTTP connection ends at the
    // upgrade, the socket counts against the limit for as long as it lives. A request that
    // came without one (not through the relay's accept loop) takes a permit of its own.
    let permit = match conn.and_then(|c| c.take()) {
        Some(p) => p,
        None => match relay.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => return json_error(StatusCode::TOO_MANY_REQUESTS, "Too many connected users"),
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
    let frame_timeout = relay.limits.guards.frame_timeout;
    handshake.on_upgrade(ws::config(max), frame_timeout, move |websocket| {
        // A combinator rather than an `async` block: the block would keep its captured
        // WebSocket and context beside the running socket's own, for the socket's lifetime.
        futures_util::FutureExt::map(socket::run(websocket, vsn, ctx), move |()| {
            drop(permit);
            drop(tracker);
        })
    })
}
