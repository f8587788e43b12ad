//! The REST broadcast endpoints: messages sent over HTTP to every socket joined to a topic (on
//! every relay when several share Redis), as supabase-js does when a channel is not joined
//! (`httpSend()`).

use std::sync::Arc;

use warp::http::StatusCode;

use crate::auth::Claims;
use crate::http::query::{parse_query, percent_decode};
use crate::http::relay::{json_error, Relay};
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
    for m in &batch.messages {
        if let Some(refusal) = send_refusal(&relay, claims.as_ref(), &m.topic, m.private) {
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
        relay
            .router
            .publish(&key, None, Broadcast::Json(out), false);
    }
    warp::reply::with_status(warp::reply(), StatusCode::ACCEPTED).into_response()
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
pub(crate) fn rest_broadcast_one(
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
    relay.router.publish(&key, None, msg, false);
    warp::reply::with_status(warp::reply(), StatusCode::ACCEPTED).into_response()
}
