//! HTTP: the server that wires every stage together and serves what is not a socket.
//!
//! [`server`] builds the pipeline (database setup, listener, dispatcher, side loops), the
//! routes, admission control and the orderly shutdown; [`api`] is the app's JSON API; [`sse`]
//! streams changes as server-sent events; `query` parses query strings for all of them.
//!
//! The outermost layer: may use every other folder; nothing uses it but `main.rs` and tests.

pub mod api;
mod query;
pub mod server;
pub mod sse;
