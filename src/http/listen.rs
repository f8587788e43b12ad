//! The accept loop: every client connection, whatever it becomes (a WebSocket, an event
//! stream, plain requests kept alive), holds one of `PGRELAY_MAX_CONNECTIONS` permits for as
//! long as it is open, and must send each request head within `PGRELAY_HTTP_HEADER_TIMEOUT`
//! of the relay waiting for it (a new connection, or one idle after a response).
//!
//! Over the limit, a connection is not left to queue or to exhaust the process's files: up to
//! [`OVERFLOW`] more are answered at once (`/health` still `ok`, anything else 429 `Too many
//! connected users`) and closed, and beyond those a connection is closed unanswered.
//!
//! Connections speak HTTP/1.1 (the WebSocket upgrade is an HTTP/1.1 request): hyper's
//! HTTP/1.1 server starts the head timeout at once, where a version-sniffing server would wait
//! for a first byte without one.
//!
//! A WebSocket upgrade takes its connection's permit into the socket task (see
//! [`ConnPermit`]), since the HTTP connection ends at the upgrade while the socket lives on.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};
use warp::http::StatusCode;

use crate::http::relay::{json_error, Relay};
use crate::http::routes::routes;
use crate::http::throttle::ClientAddr;

/// Connections over the limit that still get an answer before being closed.
pub(crate) const OVERFLOW: usize = 64;
/// How long an overflow connection may take to send its request.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection's permit, in each request's extensions, for an upgrade to take along.
#[derive(Debug, Clone)]
pub(crate) struct ConnPermit(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl ConnPermit {
    /// Take the permit out of the connection (once; `None` after).
    pub(crate) fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Raise the open-file soft limit to the hard limit, so the connection limit rather than
/// `EMFILE` decides who is refused; warn when the limit still leaves too few files.
pub(crate) fn raise_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => {
            let needed = (max_connections + OVERFLOW) as u64 + 256;
            if files < needed {
                warn!(
                    files,
                    max_connections,
                    "the open-file limit is below PGRELAY_MAX_CONNECTIONS plus headroom: \
                     lower PGRELAY_MAX_CONNECTIONS or raise the hard limit (ulimit -Hn)"
                );
            } else {
                debug!(files, "open-file limit");
            }
        }
        Err(e) => warn!(cause = %e, "cannot raise the open-file limit"),
    }
}

/// Serve the relay's routes on `listener` until `stop` completes, then wait for the open
/// requests.
pub(crate) async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    stop: impl Future<Output = ()>,
) {
    let filter = routes(relay.clone());
    let connections = relay.connections.clone();
    let header_timeout = relay.limits.guards.http_header_timeout;
    let overflow = Arc::new(Semaphore::new(OVERFLOW));
    // Connections are told to stop through `stopping`, and each holds a sender of `open`
    // until it ends: once every sender is gone, every connection has finished.
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of files or memory: wait rather than spin; connection-level errors
                    // (the peer gave up) need no wait.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        warn!(cause = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let io = TokioIo::new(stream);
        if let Ok(permit) = connections.clone().try_acquire_owned() {
            let slot = ConnPermit(Arc::new(Mutex::new(Some(permit))));
            let inner = TowerToHyperService::new(warp::service(filter.clone()));
            let service = service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(addr));
                req.extensions_mut().insert(slot.clone());
                hyper::service::Service::call(&inner, req)
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            let mut stopping = stopping.clone();
            let open = open_tx.clone();
            tokio::spawn(async move {
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => {
                        // Finish the request under way, take no other.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    debug!(cause = %e, "connection ended with an error");
                }
                drop(open);
            });
        } else if let Ok(permit) = overflow.clone().try_acquire_owned() {
            let service = service_fn(|req: hyper::Request<Incoming>| async move {
                Ok::<_, Infallible>(if req.uri().path() == "/health" {
                    warp::reply::Reply::into_response("ok")
                } else {
                    json_error(StatusCode::TOO_MANY_REQUESTS, "Too many connected users")
                })
            });
            let conn = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(OVERFLOW_HEADER_TIMEOUT)
                .serve_connection(io, service);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        } else {
            debug!(%addr, "connection refused: over the connection limit and its overflow");
            drop(io);
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_tx);
    let _ = open_rx.recv().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        // Lowering the soft limit is always allowed; the relay must undo it.
        rlimit::setrlimit(rlimit::Resource::NOFILE, 256.min(hard), hard).unwrap();
        raise_file_limit(0);
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert_eq!(soft, hard);
    }
}
