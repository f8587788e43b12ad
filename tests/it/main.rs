#![allow(unreachable_pub, clippy::unwrap_used)]

//! One integration-test binary: a module per feature, `support` for the shared harness.
//! Every test runs against a real PostgreSQL in a database of its own.

mod support;

mod abuse;
mod api;
mod auth;
mod cleanup;
mod cli;
mod compose;
mod delivery;
mod demo;
mod docs;
mod faults;
mod filters;
mod fuzz;
mod holds;
mod hostile;
mod ingest;
mod inspector;
mod lifecycle;
mod live;
mod ops;
mod poll_admin;
mod protocol;
mod realtime;
mod replica;
mod security;
mod sse;
mod startup;
mod toolchain;
mod uninstall;
mod votes;
