//! The API's contract: auth and the error shape (every error reason,
//! `error_reasons`), bad input that is never
//! INTERNAL, keyset pagination, table definitions that match the
//! migrations, and the example client of docs/integration.md
//! (`integration_example`).
mod api;
mod bad_input;
mod error_reasons;
mod etags;
mod integration_example;
mod order_views;
mod pagination;
mod schema;
