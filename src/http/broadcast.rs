//! The REST broadcast endpoints: messages sent over HTTP to every socket joined to a topic (on
//! every relay when several share Redis), as supabase-js does when a channel is not joined
//! (`httpSend()`).
//!
//! A request is bounded twice before anything is sent: its batch size
//! (`PGRELAY_MAX_BROADCAST_BATCH`) and its caller's rate (`PGRELAY_MAX_BROADCASTS_PER_SECOND`,
//! per token `sub`, else per client IP), each refused whole with 429 and Supabase's texts.
//! What passes is fanned out with shedding: a subscriber whose queue is half full skips it
//! rather than being cut off.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use warp::http::StatusCode;

use crate::auth::Claims;
use crate::http::query::{parse_query, percent_decode};
use crate::http::relay::{json_error, Relay};
use crate::http::throttle::Denied;
use crate::protocol::TOPIC_PREFIX;
use crate::route::live::LiveQueries;
use crate::route::policy::ChannelAction;
use crate::route::topic::{Broadcast, TopicKey};

/// `POST /realtime/v1/api/broadcast`: `{"messages":[{"topic","event","payload","private"?}]}`,
/// the batch endpoint supabase-js falls back to when a channel is not joined. 202, no body.
pub(crate) fn rest_broadcast_batch(
    query: String,
    authorization: Option<String>,
    body: bytes::Bytes,
    ip: Option<IpAddr>,
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
    let count = u32::try_from(batch.messages.len()).unwrap_or(u32::MAX);
    let max_batch = relay.limits.guards.max_broadcast_batch;
    if max_batch > 0 && count > max_batch {
        return too_many(&relay, count, Denied::TooMany);
    }
    // All or nothing: a batch with one message the caller may not send sends none.
    let mut frames = Vec::with_capacity(batch.messages.len());
    for m in batch.messages {
        if let Some(refusal) = send_refusal(&relay, claims.as_ref(), &m.topic, m.private) {
            return refusal;
        }
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
        frames.push((key, Broadcast::Json(out)));
    }
    if let Err(denied) = take_rate(&relay, claims.as_ref(), ip, count) {
        return too_many(&relay, count, denied);
    }
    for (key, msg) in frames {
        relay.router.publish_shedding(&key, msg);
    }
    warp::reply::with_status(warp::reply(), StatusCode::ACCEPTED).into_response()
}

/// Take `count` messages from the caller's per-second budget: its token's `sub` when it has
/// one, else its IP.
fn take_rate(
    relay: &Relay,
    claims: Option<&Claims>,
    ip: Option<IpAddr>,
    count: u32,
) -> Result<(), Denied> {
    let per_second = relay.limits.guards.max_broadcasts_per_second;
    let key = match (claims.and_then(|c| c.sub.as_deref()), ip) {
        (Some(sub), _) => format!("sub:{sub}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        // No peer address (not a TCP connection): one shared budget.
        (None, None) => "unknown".to_owned(),
    };
    relay.broadcasts.take(&[(key, per_second)], count)
}

/// 429 with Supabase's texts: a caller already over its rate, or a batch that does not fit.
fn too_many(relay: &Relay, count: u32, denied: Denied) -> warp::reply::Response {
    relay
        .metrics
        .broadcasts_refused_total
        .fetch_add(u64::from(count), Ordering::Relaxed);
    let text = match denied {
        Denied::Exhausted => "You have exceeded your rate limit",
        Denied::TooMany => "Too many messages to broadcast, please reduce the batch size",
    };
    json_error(StatusCode::TOO_MANY_REQUESTS, text)
}

/// 403 when the relay publishes on `topic` (a live topic), or when auth is on and no channel
/// policy lets the caller broadcast on private `topic`.
fn send_refusal(
    relay: &Relay,
    claims: Option<&Claims>,
    topic: &str,
    private: bool,
) -> Option<warp::reply::Response> {
    let key = TopicKey {
        private,
        topic: format!("{TOPIC_PREFIX}{topic}").into(),
    };
    if relay.live.get().is_some_and(|live| live.publishes(&key)) {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            &LiveQueries::refusal(&key),
        ));
    }
    if !private {
        return None;
    }
    let refusal = relay
        .policies
        .check_channel(topic, claims?, ChannelAction::Send)
        .err()?;
    Some(json_error(StatusCode::FORBIDDEN, &refusal))
}

/// `POST /realtime/v1/api/broadcast/{topic}/events/{event}[?private=true]`: the body is the
/// payload (JSON, or raw bytes with `application/octet-stream`). Exactly 202, as `httpSend()`
/// requires.
// A warp handler: one argument per extracted part of the request.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rest_broadcast_one(
    topic: String,
    event: String,
    query: String,
    content_type: Option<String>,
    authorization: Option<String>,
    body: bytes::Bytes,
    ip: Option<IpAddr>,
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
    if let Some(refusal) = send_refusal(&relay, claims.as_ref(), &topic, private) {
        return refusal;
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
    if let Err(denied) = take_rate(&relay, claims.as_ref(), ip, 1) {
        return too_many(&relay, 1, denied);
    }
    relay.router.publish_shedding(&key, msg);
    warp::reply::with_status(warp::reply(), StatusCode::ACCEPTED).into_response()
}
