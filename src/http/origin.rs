//! Which web pages may talk to the relay: the `Origin` check in front of every route, and the
//! CORS answers that let allowed pages call the JSON API.
//!
//! A browser sends `Origin` with every WebSocket upgrade and every cross-site request, and
//! lets any page open a socket or send a "simple" POST (`text/plain`) to any address, the
//! developer's own `127.0.0.1:4000` included. With auth off nothing else stands between such a
//! page and every published row, so the default then admits only the relay's own origin and
//! loopback origins (a dev server on `localhost:5173`). With auth on the token is the gate,
//! and any origin is admitted, as Supabase does. `PGRELAY_ALLOWED_ORIGINS` replaces either
//! default. A request without `Origin` (curl, servers, Node clients) is not a browser's and
//! passes: the check defends browsers' users, not the relay.

use std::sync::Arc;

use warp::http::{HeaderValue, StatusCode};
use warp::{Filter, Rejection, Reply};

/// The origins admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Any origin.
    Any,
    /// The relay's own origin (the request's `Host`) and loopback origins.
    Local,
    /// These exact origins (`scheme://host[:port]`), and the relay's own.
    List(Vec<String>),
}

impl Origins {
    /// `PGRELAY_ALLOWED_ORIGINS` (comma-separated origins, or `*`), else the default for
    /// whether auth is on.
    pub fn from_setting(setting: Option<&str>, auth_on: bool) -> Origins {
        match setting.map(str::trim).filter(|s| !s.is_empty()) {
            Some("*") => Origins::Any,
            Some(list) => Origins::List(
                list.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .filter(|o| !o.is_empty())
                    .collect(),
            ),
            None if auth_on => Origins::Any,
            None => Origins::Local,
        }
    }

    /// Whether a request with this `Origin` (and `Host`) is admitted.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let same_origin = host.is_some_and(|h| {
            origin_host(&origin).is_some_and(|o| o.eq_ignore_ascii_case(h.trim()))
        });
        match self {
            Origins::Any => true,
            Origins::Local => same_origin || is_loopback(&origin),
            Origins::List(list) => same_origin || list.contains(&origin),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Origins::Any => "any".to_owned(),
            Origins::Local => "the relay's own and loopback".to_owned(),
            Origins::List(list) => list.join(","),
        }
    }
}

/// `host[:port]` of `scheme://host[:port]`.
fn origin_host(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    (matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')).then_some(rest)
}

fn is_loopback(origin: &str) -> bool {
    let Some(host_port) = origin_host(origin) else {
        return false;
    };
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']').map_or(v6, |(h, _)| h)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refusal of a page on an origin that is not admitted.
#[derive(Debug)]
pub struct OriginRefused(pub String);

impl warp::reject::Reject for OriginRefused {}

/// Admits or rejects the request by its `Origin`; extracts the admitted origin (`None` when
/// the request has none), for the CORS headers of the answer.
pub(crate) fn guard(
    origins: Arc<Origins>,
) -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::header::optional::<String>("origin")
        .and(warp::header::optional::<String>("host"))
        .and_then(move |origin: Option<String>, host: Option<String>| {
            let origins = origins.clone();
            async move {
                match origin {
                    None => Ok(None),
                    Some(o) if origins.allows(&o, host.as_deref()) => Ok(Some(o)),
                    Some(o) => Err(warp::reject::custom(OriginRefused(o))),
                }
            }
        })
}

/// The answer to a CORS preflight from an admitted origin.
pub(crate) fn preflight(origin: Option<String>) -> warp::reply::Response {
    let mut resp = warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response();
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static(
            "authorization, apikey, content-type, x-client-info, x-user-id, last-event-id",
        ),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    allow(resp, origin)
}

/// Add `Access-Control-Allow-Origin` for an admitted origin.
pub(crate) fn allow(
    mut resp: warp::reply::Response,
    origin: Option<String>,
) -> warp::reply::Response {
    if let Some(value) = origin.and_then(|o| HeaderValue::from_str(&o).ok()) {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", value);
        h.insert("vary", HeaderValue::from_static("Origin"));
    }
    resp
}

/// 403 for a refused origin.
pub(crate) fn refused(r: &OriginRefused) -> warp::reply::Response {
    let message = format!(
        "Origin not allowed: {}",
        crate::protocol::truncate(&r.0, 200)
    );
    let mut resp = warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        StatusCode::FORBIDDEN,
    )
    .into_response();
    resp.headers_mut()
        .insert("vary", HeaderValue::from_static("Origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_lists() {
        let local = Origins::from_setting(None, false);
        assert_eq!(local, Origins::Local);
        assert!(local.allows("http://127.0.0.1:4000", Some("127.0.0.1:4000")));
        assert!(local.allows("http://localhost:5173", Some("127.0.0.1:4000")));
        assert!(local.allows("http://[::1]:8080", None));
        assert!(local.allows("https://relay.example", Some("relay.example")));
        assert!(!local.allows("https://evil.example", Some("127.0.0.1:4000")));
        assert!(!local.allows("http://127.0.0.1.evil.example", Some("127.0.0.1:4000")));
        assert!(!local.allows("null", Some("127.0.0.1:4000")));
        assert_eq!(Origins::from_setting(None, true), Origins::Any);
        assert_eq!(Origins::from_setting(Some("*"), false), Origins::Any);
        let list = Origins::from_setting(Some("https://app.example/, http://x.test:3000"), true);
        assert!(list.allows("https://APP.example", None));
        assert!(list.allows("http://x.test:3000", None));
        assert!(!list.allows("http://localhost:3000", Some("relay:4000")));
    }
}
