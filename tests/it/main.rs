#![allow(unreachable_pub, clippy::unwrap_used)]

//! One integration-test binary: a module per feature, `support` for the shared harness.
//! Every test runs against a real PostgreSQL in a database of its own.

mod support;

mod cli;
mod delivery;
mod faults;
mod filters;
mod lifecycle;
mod ops;
mod protocol;
mod sse;
