//! Test harness and tools shared by the system tests, `stack` and `loadgen`.
//!
//! [`spawn_app`] starts billing-svc and checkout-svc in-process on
//! 127.0.0.1:0, each against a fresh database created from a migrated
//! template, with a manual clock, and returns authenticated gRPC clients.

pub mod clients;
pub mod harness;
pub mod helpers;
pub mod loadgen;
pub mod options;

pub use clients::{BillingClient, CheckoutClient, billing_client, checkout_client};
pub use harness::{TestApp, spawn_app, spawn_app_with};
