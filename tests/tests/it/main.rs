#![allow(clippy::unwrap_used, clippy::expect_used)]
// The tests also read the deprecated text twins of proto enums (outcome,
// Finding.kind), which stay filled.
#![allow(deprecated)]
//! The system tests, one binary (one link of the whole stack instead of one
//! per file): both services over real sockets, fresh PostgreSQL databases,
//! the injected clock. A module per area, a file per concern in it:
//! `catalogue` (plans, price versions, subscribers pinned to theirs),
//! `checkout` (sessions, races and idempotency keys, completion sync, retired
//! orders), `payments` (captures and discrepancies), `subscriptions`
//! (periods, renewals, cancellation, reopening), `refunds`, `usage` (limits,
//! deductions, balances), `webhooks`, `reconcile`, `events` (the event
//! streams: order, versions, watching, retention), `contract` (the API's
//! error shape, bad input, pagination, the schema) and `ops` (serving,
//! held rows, jobs, secrets, the `stack` binary). Each area's `guards.rs`
//! holds one test per defence (helpers in `support::guards`).
//! `tests/tests/telemetry.rs` stays its own binary because it installs
//! process-wide tracing and metrics providers.
mod catalogue;
mod checkout;
mod contract;
mod events;
mod ops;
mod payments;
mod reconcile;
mod refunds;
mod subscriptions;
mod support;
mod usage;
mod webhooks;
