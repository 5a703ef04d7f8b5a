//! billing-svc: plans, gateway orders, idempotent payment capture and
//! webhooks, subscriptions with billing periods, plan limits, usage sessions
//! with locked credit deductions, a ledger and reconciliation.

pub mod app;
pub mod audit;
pub mod catalogue_cli;
pub mod checkout_orders;
pub mod config;
pub mod cross_check;
pub mod deductions;
pub mod discrepancies;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod jobs;
pub mod limits;
pub mod money;
pub mod orders;
pub mod payments;
pub mod plan_changes;
pub mod plans;
pub mod reconcile;
pub mod refunds;
pub mod renewals;
pub mod row;
pub mod schema;
pub mod stats;
pub mod subscriptions;
pub mod trials;
pub mod usage;
pub mod views;
pub mod webhooks;

pub use app::{App, MIGRATIONS, serve, serve_app};
pub use config::Config;
pub use error::{Error, Result};
