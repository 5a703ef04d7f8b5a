//! Plumbing shared by checkout-svc and billing-svc: configuration, the
//! database pool and migrations, the clock, telemetry and metrics, gRPC
//! server assembly (health, reflection, auth, load shedding, graceful
//! shutdown), the binaries' start-up and `serve` scaffolding, error
//! helpers, client retries and periodic jobs.

// Every pub item says what it is for; CI denies warnings.
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod db;
pub mod deadline;
pub mod error;
pub mod etag;
pub mod events;
pub mod gate;
pub mod idempotency;
pub mod ids;
pub mod jobs;
pub mod metrics;
pub mod server;
pub mod service;
pub mod status;
pub mod telemetry;
pub mod text_enum;
pub mod time;

pub use clock::Clock;
/// For [`text_enum!`]'s expansion in the services.
#[doc(hidden)]
pub use serde;
