#![allow(clippy::unwrap_used, clippy::expect_used)]
// The tests also read the deprecated text twins of proto enums (outcome,
// Finding.kind), which stay filled.
#![allow(deprecated)]
//! The system tests, one binary (one link of the whole stack instead of one
//! per file): both services over real sockets, fresh PostgreSQL databases,
//! the injected clock. A module per concern; `tests/tests/telemetry.rs`
//! stays its own binary because it installs process-wide tracing and
//! metrics providers.
mod cancellation;
mod checkout_races;
mod checkout_sessions;
mod completion_sync;
mod deduct_batch;
mod error_reasons;
mod guards;
mod hardening_billing;
mod hardening_checkout;
mod lifecycle;
mod pagination;
mod payments;
mod refund_outcome;
mod refunds;
mod reopening;
mod retired_orders;
mod schema;
mod secrets;
mod smoke;
mod subscriptions;
mod usage;
mod webhook_http;
