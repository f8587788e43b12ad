//! HTTP: the server that wires every stage together and serves what is not a socket.
//!
//! [`server`] builds the pipeline (database setup, listener, change-log reader, routing loop,
//! side loops) and runs the relay until its orderly shutdown; `listen` accepts connections
//! (one limit for all, request-head timeouts); `routes` is the route table it serves, with the shared state of the routes in `relay`; [`origin`] admits web pages by their
//! origin and answers CORS; `admission` admits or refuses WebSocket upgrades; `broadcast` is
//! the REST broadcast; [`api`] is the app's JSON API; [`sse`] streams changes as server-sent
//! events; `query` parses query strings for all of them.
//!
//! The outermost layer: may use every other folder; nothing uses it but `main.rs` and tests.
//! Inside it, `server` uses `listen`, which uses `routes`, which uses the handlers, which use `relay` and `query`.

mod admission;
pub mod api;
mod broadcast;
mod listen;
pub mod origin;
mod query;
mod relay;
mod routes;
pub mod server;
pub mod sse;
mod throttle;
