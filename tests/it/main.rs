#![allow(unreachable_pub, clippy::unwrap_used)]

//! One integration-test binary: a module per feature, `support` for the shared harness.
//! Every test runs against a real PostgreSQL in a database of its own.

mod support;

mod cleanup;
mod cli;
mod delivery;
mod faults;
mod filters;
mod holds;
mod lifecycle;
mod ops;
mod protocol;
mod realtime;
mod sse;
