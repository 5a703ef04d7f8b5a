//! Support for `stack` and the tests, kept out of the service binaries:
//! finding or starting a development PostgreSQL ([`pg`]), the check that a
//! service binary without a database URL refuses at once
//! ([`no_database_url`]) and the checks of its `--help` ([`help`]). Only the
//! `tests` crate and the services' own tests depend on this crate.
pub mod help;
pub mod no_database_url;
pub mod pg;
