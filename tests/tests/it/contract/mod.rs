//! The API's contract: auth and the error shape, bad input that is never
//! INTERNAL, keyset pagination, and table definitions that match the
//! migrations.
mod api;
mod bad_input;
mod pagination;
mod schema;
