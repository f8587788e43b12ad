//! Per-caller rate limits of the HTTP routes: a token bucket per key (a token's `sub`, a
//! client IP), all of one kind in one map. A bucket that has refilled is forgotten, so the map
//! holds only the callers of the last window.
//!
//! [`client_ip`] reads the peer address of a request, for callers without a token `sub`;
//! [`boost_guard`] holds boosts to a rate per user and per IP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::Filter;

use crate::http::api::USER_HEADER;
use crate::http::relay::Relay;

/// Above this many keys, a take first forgets the buckets that have refilled.
const SWEEP_ABOVE: usize = 10_000;

/// Why a take was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// Some bucket has less than one token left: the caller is over its rate.
    Exhausted,
    /// Every bucket has tokens, but not as many as asked for (or ever could have).
    TooMany,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    capacity: f64,
}

impl Bucket {
    /// Tokens at `now`: refilled at `capacity` per `window`, up to `capacity`.
    fn refill(&mut self, now: Instant, window: Duration) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let rate = self.capacity / window.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + elapsed * rate).min(self.capacity);
        self.at = now;
    }
}

/// Token buckets that refill their capacity once per `window`.
#[derive(Debug)]
pub(crate) struct Throttle {
    window: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Throttle {
    pub(crate) fn new(window: Duration) -> Self {
        Throttle {
            window,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take `n` tokens from the bucket of each `(key, capacity)`, all or none. A capacity of 0
    /// turns that limit off.
    pub(crate) fn take(&self, keys: &[(String, u32)], n: u32) -> Result<(), Denied> {
        let now = Instant::now();
        let window = self.window;
        // A poisoned lock only means another request panicked mid-take; the counts are
        // still usable.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, b| {
                b.refill(now, window);
                b.tokens < b.capacity
            });
        }
        let want = f64::from(n);
        let mut verdict = Ok(());
        for (key, capacity) in keys.iter().filter(|(_, c)| *c > 0) {
            let capacity = f64::from(*capacity);
            let b = buckets.entry(key.clone()).or_insert(Bucket {
                tokens: capacity,
                at: now,
                capacity,
            });
            b.capacity = capacity;
            b.refill(now, window);
            if b.tokens < 1.0 {
                verdict = Err(Denied::Exhausted);
            } else if b.tokens < want && verdict.is_ok() {
                verdict = Err(Denied::TooMany);
            }
        }
        if verdict.is_ok() {
            for (key, _) in keys.iter().filter(|(_, c)| *c > 0) {
                if let Some(b) = buckets.get_mut(key) {
                    b.tokens -= want;
                }
            }
        }
        verdict
    }
}

/// The peer address of the connection a request came on, as the relay's server records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// The client's IP: the relay's own record, else warp's.
pub(crate) fn client_ip(
) -> impl Filter<Extract = (Option<IpAddr>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<ClientAddr>()
        .and(warp::addr::remote())
        .map(|ours: Option<ClientAddr>, warps: Option<SocketAddr>| {
            ours.map(|ClientAddr(a)| a).or(warps).map(|a| a.ip())
        })
}

/// The bucket keys of a caller: its user when known, and its IP, each with its capacity.
pub(crate) fn caller_keys(
    kind: &str,
    user: Option<&str>,
    per_user: u32,
    ip: Option<IpAddr>,
    per_ip: u32,
) -> Vec<(String, u32)> {
    let mut keys = Vec::with_capacity(2);
    if let Some(user) = user {
        keys.push((format!("{kind}:user:{user}"), per_user));
    }
    if let Some(ip) = ip {
        keys.push((format!("{kind}:ip:{ip}"), per_ip));
    }
    keys
}

/// The answer to a boost over its rate: the API's error shape, 429.
pub(crate) const TOO_MANY_BOOSTS: &str = "Too many boosts: slow down and try again in a minute";

/// `POST /api/v1/polls/{id}/boost` over the caller's boost rate: answered 429 here, before
/// the API runs it; any other request is rejected "not found" for the API route to take.
/// The user is the token's `sub` (auth on) or the `X-User-Id` header (auth off: forgeable,
/// which is why the IP has a budget of its own).
pub(crate) fn boost_guard(
    relay: Arc<Relay>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "v1" / "polls" / String / "boost")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(client_ip())
        .and_then(move |_id: String, headers: HeaderMap, ip: Option<IpAddr>| {
            let relay = relay.clone();
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                let user = if relay.auth.is_some() {
                    relay
                        .identify(header("apikey"), header("authorization"))
                        .ok()
                        .flatten()
                        .and_then(|c| c.sub)
                } else {
                    header(USER_HEADER)
                        .map(|u| u.trim().to_ascii_lowercase())
                        .filter(|u| !u.is_empty() && u.len() <= 64)
                };
                let guards = &relay.limits.guards;
                let keys = caller_keys(
                    "boost",
                    user.as_deref(),
                    guards.max_boosts_per_minute,
                    ip,
                    guards.max_boosts_per_ip_per_minute,
                );
                match relay.boosts.take(&keys, 1) {
                    Ok(()) => Err(warp::reject::not_found()),
                    Err(_) => Ok(too_many_boosts()),
                }
            }
        })
}

fn too_many_boosts() -> warp::reply::Response {
    use warp::Reply;
    let body = serde_json::json!({ "error": TOO_MANY_BOOSTS, "code": "BoostRateLimitReached" });
    let mut resp =
        warp::reply::with_status(warp::reply::json(&body), StatusCode::TOO_MANY_REQUESTS)
            .into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, c: u32) -> Vec<(String, u32)> {
        vec![(k.to_owned(), c)]
    }

    #[test]
    fn a_bucket_gives_its_capacity_then_refuses() {
        let t = Throttle::new(Duration::from_secs(60));
        assert_eq!(t.take(&key("a", 3), 2), Ok(()));
        assert_eq!(t.take(&key("a", 3), 2), Err(Denied::TooMany));
        assert_eq!(t.take(&key("a", 3), 1), Ok(()));
        assert_eq!(t.take(&key("a", 3), 1), Err(Denied::Exhausted));
        // Another caller has its own bucket.
        assert_eq!(t.take(&key("b", 3), 3), Ok(()));
        // More than the capacity never fits.
        assert_eq!(t.take(&key("c", 3), 4), Err(Denied::TooMany));
    }

    #[test]
    fn all_or_none_across_keys() {
        let t = Throttle::new(Duration::from_secs(60));
        assert_eq!(t.take(&key("ip", 1), 1), Ok(()));
        let both = vec![("user".to_owned(), 5), ("ip".to_owned(), 1)];
        assert_eq!(t.take(&both, 1), Err(Denied::Exhausted));
        // The refused take cost the user's bucket nothing.
        assert_eq!(t.take(&key("user", 5), 5), Ok(()));
    }

    #[test]
    fn buckets_refill_and_zero_is_off() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.take(&key("a", 1), 1), Ok(()));
        assert_eq!(t.take(&key("a", 1), 1), Err(Denied::Exhausted));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.take(&key("a", 1), 1), Ok(()));
        for _ in 0..100 {
            assert_eq!(t.take(&key("off", 0), 1), Ok(()));
        }
    }
}
