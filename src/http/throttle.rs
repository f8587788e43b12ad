//! Per-caller rate limits of the HTTP routes: a token bucket per key (a token's `sub`, a
//! client IP), all of one kind in one map. A bucket that has refilled is forgotten, so the map
//! holds only the callers of the last window.
//!
//! [`client_ip`] reads the peer address of a request, for callers without a token `sub`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use warp::Filter;

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
