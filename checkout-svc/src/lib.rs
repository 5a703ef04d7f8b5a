//! checkout-svc: checkout sessions (create, renew, recover, complete,
//! cleanup), backed by PostgreSQL and calling billing-svc over gRPC.

pub mod app;
pub mod billing;
pub mod config;
pub mod error;
pub mod grpc;
pub mod jobs;
pub mod schema;
pub mod sessions;

pub use app::{App, MIGRATIONS, serve};
pub use config::Config;
pub use error::{Error, Result};
