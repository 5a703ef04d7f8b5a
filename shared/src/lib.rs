//! Plumbing shared by checkout-svc and billing-svc: configuration, the
//! database pool and migrations, the PostgreSQL bootstrap (feature
//! `pg-bootstrap`, for `stack` and the tests only), the clock,
//! telemetry and metrics, gRPC server assembly (health, reflection, auth,
//! load shedding, graceful shutdown), error helpers, client retries and
//! periodic jobs.

pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod gate;
pub mod idempotency;
pub mod ids;
pub mod jobs;
pub mod metrics;
pub mod pg;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod text_enum;
pub mod time;

pub use clock::Clock;
