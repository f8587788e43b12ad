//! Route: from a decoded change to frames on the right sockets' queues.
//!
//! The [`router`] is the registry of sockets and topics, and fans frames out to them: changes
//! to the channels the [`bindings`] index finds for them (`postgres_changes` subscriptions,
//! indexed by table), broadcasts and presence diffs ([`presence`]) to the members of a
//! [`topic`]. A socket is known here by its id and its bounded outbound [`queue`]. [`filter`]
//! parses and evaluates `column=op.value` filters by column type; [`policy`] holds read
//! policies and private channel rules, evaluated in memory; [`live`] re-runs live aggregate
//! queries after a change and pushes their results as broadcasts; [`deliver`] is the loop
//! that feeds ingest's changes to the router. With several relays sharing Redis, [`outbox`]
//! queues what this relay's clients broadcast and track for the others, and [`remote`]
//! applies the other relays' presences.
//!
//! May use: `ingest` (the `Change` type and the stream of changes), `db`, and the small
//! cross-cutting modules. Never `realtime` or `http`: sockets register here, not the reverse.

pub mod bindings;
pub mod deliver;
pub mod filter;
pub mod live;
pub mod outbox;
pub mod policy;
pub mod presence;
pub mod queue;
pub mod remote;
pub mod router;
pub mod topic;
