//! The API's contract: auth and the error shape (every error reason,
//! `error_reasons`), bad input that is never
//! INTERNAL, keyset pagination, and table definitions that match the
//! migrations.
mod api;
mod bad_input;
mod error_reasons;
mod etags;
mod order_views;
mod pagination;
mod schema;
