//! The WebSocket handshake (RFC 6455 §4.2), answered here rather than by `warp::ws()` so that
//! the relay sets tungstenite's buffers itself.
//!
//! Why: warp's `Ws` keeps tungstenite's default 128 KiB read buffer, allocated per connection
//! and zero-filled up to its size on every read attempt. Most of the relay's sockets are idle or
//! only receive, so that buffer was most of their memory (139.6 KiB RSS per idle joined
//! connection) and a 128 KiB `memset` per wake of a busy socket. [`Upgrade::on_upgrade`] answers
//! 101 and hands the upgraded connection to tungstenite with the relay's [`WebSocketConfig`].
//!
//! A plain GET on a socket path is answered `426 Upgrade Required`, not "not found".

use std::future::Future;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::realtime::deadline::Deadline;

/// A server-side WebSocket over an upgraded HTTP/1.1 connection, its client messages under
/// the frame timeout.
pub type WebSocket = WebSocketStream<Deadline<TokioIo<hyper::upgrade::Upgraded>>>;

/// Read buffer per socket. Clients send little (joins, heartbeats, the odd broadcast): 4 KiB
/// takes any of them in one read. A larger message still arrives whole: tungstenite reserves
/// the frame's full length once its header is read.
pub const READ_BUFFER: usize = 4 * 1024;
/// Outgoing frames are buffered up to this size before a write to the TCP socket; `flush`
/// (once per batch) writes the rest. The buffer keeps its capacity, so this is also about what
/// a busy socket holds between batches.
pub const WRITE_BUFFER: usize = 16 * 1024;

/// The tungstenite settings of every relay socket. `max_message` is the largest message (and
/// frame) accepted from a client; a larger one fails the read, and the socket closes with 1009.
///
/// The write buffer is left without a hard cap: the sink accepts a frame only after flushing
/// what went before, so it never holds more than [`WRITE_BUFFER`] plus one frame, and the
/// frames waiting for it are bounded by the socket queue.
pub fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// What a GET on a socket path asked for.
#[derive(Debug)]
pub enum Handshake {
    /// A well-formed upgrade request, to be answered with [`Upgrade::on_upgrade`].
    Upgrade(Upgrade),
    /// Not a WebSocket upgrade (or not one the relay speaks): this is the answer.
    Refused(Refusal),
}

/// A valid upgrade request.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade").finish_non_exhaustive()
    }
}

/// Why a request on a socket path was not upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Upgrade: websocket` / `Connection: upgrade` (a plain GET, from a browser or a probe).
    NotUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    Version,
    /// No usable `Sec-WebSocket-Key`.
    Key,
}

impl Refusal {
    /// The HTTP answer: 426 with `Upgrade: websocket` (RFC 9110 §15.5.22) and, for a version
    /// mismatch, the version the relay speaks (RFC 6455 §4.4); 400 for a missing key. The body
    /// is `{"error": "…"}`, as every other refusal at the upgrade.
    pub fn into_response(self) -> Response {
        let (status, body) = match self {
            Refusal::NotUpgrade => (
                StatusCode::UPGRADE_REQUIRED,
                "Upgrade Required: this is a WebSocket endpoint",
            ),
            Refusal::Version => (
                StatusCode::UPGRADE_REQUIRED,
                "Upgrade Required: WebSocket version 13 only",
            ),
            Refusal::Key => (
                StatusCode::BAD_REQUEST,
                "Bad Request: missing Sec-WebSocket-Key",
            ),
        };
        let body = serde_json::json!({ "error": body }).to_string();
        let mut res = Response::new(body.into());
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UPGRADE_REQUIRED {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        res
    }
}

/// GET on a socket path: check the upgrade headers. Other methods are rejected (not found).
pub fn handshake() -> impl Filter<Extract = (Handshake,), Error = Rejection> + Clone {
    warp::get()
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .map(|headers: HeaderMap, on_upgrade: Option<OnUpgrade>| check(&headers, on_upgrade))
}

fn check(headers: &HeaderMap, on_upgrade: Option<OnUpgrade>) -> Handshake {
    let upgrade = has_token(headers, header::UPGRADE, "websocket");
    let connection = has_token(headers, header::CONNECTION, "upgrade");
    // hyper attaches `OnUpgrade` only to HTTP/1.1 requests that ask for an upgrade.
    let Some(on_upgrade) = on_upgrade.filter(|_| upgrade && connection) else {
        return Handshake::Refused(Refusal::NotUpgrade);
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Handshake::Refused(Refusal::Version);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Handshake::Upgrade(Upgrade {
            key: key.clone(),
            on_upgrade,
        }),
        _ => Handshake::Refused(Refusal::Key),
    }
}

/// Whether a comma-separated header (any of its values) holds `token`, case-insensitively.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl Upgrade {
    /// Answer 101 Switching Protocols and, once hyper hands over the connection, run `serve`
    /// on the WebSocket in a task of its own. If the upgrade fails (the client went away),
    /// `serve` is dropped without running, and with it whatever it owns. A client message
    /// still incomplete `frame_timeout` after its first byte fails the socket's read.
    pub fn on_upgrade<F, Fut>(
        self,
        config: WebSocketConfig,
        frame_timeout: Duration,
        serve: F,
    ) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = Deadline::new(TokioIo::new(upgraded), frame_timeout);
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    // A task of its own rather than awaited here: a socket lives for hours,
                    // and this future's state (the config, the upgrade) would live with it.
                    tokio::spawn(serve(ws));
                }
                Err(e) => debug!(cause = %e, "websocket upgrade failed"),
            }
        });
        let mut res = Response::default();
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = res.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        match HeaderValue::from_str(&accept) {
            Ok(v) => {
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            // Base64 is always a valid header value.
            Err(_) => *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn plain_get_is_refused_with_426() {
        let h = headers(&[("accept", "text/html")]);
        let Handshake::Refused(r) = check(&h, None) else {
            panic!("a plain GET must not upgrade");
        };
        assert_eq!(r, Refusal::NotUpgrade);
        let res = r.into_response();
        assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(res.headers()["upgrade"], "websocket");
    }

    #[test]
    fn tokens_are_matched_in_lists_and_any_case() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(has_token(&h, header::UPGRADE, "websocket"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
    }

    #[test]
    fn accept_key_is_rfc_6455() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn config_takes_the_limits() {
        let c = config(1 << 20);
        assert_eq!(c.read_buffer_size, READ_BUFFER);
        assert_eq!(c.max_message_size, Some(1 << 20));
        assert_eq!(c.max_frame_size, Some(1 << 20));
    }
}
