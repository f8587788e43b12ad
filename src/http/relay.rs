//! What the server's routes share: the relay's state ([`Relay`]), built by `server::run`, and
//! the JSON error body the routes outside the API refuse with.

use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use warp::http::StatusCode;

use crate::auth::{self, AuthError, Claims, Verifier};
use crate::config::Limits;
use crate::ingest::change::Catalog;
use crate::metrics::Metrics;
use crate::realtime::holds::Holds;
use crate::route::live::LiveQueries;
use crate::route::policy::Policies;
use crate::route::router::Router;
use crate::shutdown::{Shutdown, Tracker};

/// Shared by every route and task.
#[derive(Debug)]
pub(crate) struct Relay {
    pub(crate) router: Arc<Router>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) metrics: Arc<Metrics>,
    /// Writes, and everything when no standby is configured: `DATABASE_URL`.
    pub(crate) pool: deadpool_postgres::Pool,
    /// Reads: the standby `PGRELAY_READ_URL` when set, else the same pool as `pool`.
    pub(crate) read_pool: deadpool_postgres::Pool,
    /// Changes come from a standby: no LISTEN session, the reader tails the standby.
    pub(crate) standby: bool,
    pub(crate) limits: Arc<Limits>,
    /// Which web pages may call (`PGRELAY_ALLOWED_ORIGINS`).
    pub(crate) origins: Arc<crate::http::origin::Origins>,
    /// `PGRELAY_METRICS_TOKEN`: what `/metrics` requires as a bearer token.
    pub(crate) metrics_token: Option<String>,
    /// One permit per client connection (`PGRELAY_MAX_CONNECTIONS`), taken at accept and
    /// held while it is open; an upgrade moves it into the socket task. The relay refuses
    /// connections instead of running out of memory or files.
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) shutdown: Shutdown,
    pub(crate) tracker: Tracker,
    /// True once the database is set up (migrated, triggers applied); sockets are refused
    /// until then.
    pub(crate) started: watch::Receiver<bool>,
    /// True while the LISTEN session is active.
    pub(crate) listening: watch::Receiver<bool>,
    /// Latest watermark snapshot, for readers of the change log.
    pub(crate) watermark: watch::Receiver<Option<String>>,
    /// Token verification; `None`: auth off.
    pub(crate) auth: Option<Arc<Verifier>>,
    pub(crate) policies: Arc<Policies>,
    /// REST broadcast messages per caller per second.
    pub(crate) broadcasts: crate::http::throttle::Throttle,
    /// Boosts per user and per IP per minute.
    pub(crate) boosts: crate::http::throttle::Throttle,
    /// Live aggregate topics, once the database is set up.
    pub(crate) live: std::sync::OnceLock<Arc<LiveQueries>>,
    /// With `PGRELAY_REDIS_URL`: this relay's membership of the cluster.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Relay-run holds and their topic, once the database is set up.
    pub(crate) holds: std::sync::OnceLock<(Holds, Arc<str>)>,
}

impl Relay {
    pub(crate) fn is_ready(&self) -> bool {
        *self.started.borrow() && (*self.listening.borrow() || self.standby)
    }

    /// The identity of an HTTP request (`Authorization: Bearer`, else an `apikey` parameter);
    /// `Ok(None)` when auth is off.
    pub(crate) fn identify(
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

/// `{"error": message}` with a status.
pub(crate) fn json_error(status: StatusCode, message: &str) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response()
}
