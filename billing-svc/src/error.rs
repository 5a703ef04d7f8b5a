//! billing-svc's one error enum and its one mapping to gRPC statuses
//! (docs/design.md, Error model).
use std::{collections::HashMap, time::Duration};

use shared::{db::DbError, status};
use tonic::{Code, Status};

use crate::gateway::GatewayError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {description}")]
    InvalidArgument { field: &'static str, description: String },
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("{description}")]
    FailedPrecondition { kind: &'static str, subject: String, description: String },
    /// A plan limit or an empty balance: RESOURCE_EXHAUSTED with QuotaFailure
    /// and ErrorInfo {reason, plan, current_usage, limit}.
    #[error("{description}")]
    QuotaExceeded { reason: &'static str, plan: String, current_usage: i64, limit: i64, description: String },
    #[error("gateway signature does not match")]
    BadSignature,
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this idempotency key is still in flight")]
    IdempotencyKeyInFlight,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Db(e.into())
    }
}

impl From<shared::gate::Busy> for Error {
    fn from(e: shared::gate::Busy) -> Self {
        Error::Db(DbError::Timeout(e.to_string()))
    }
}

impl Error {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Error::InvalidArgument { field, description: description.into() }
    }
    pub fn not_found(resource: &'static str, id: impl ToString) -> Self {
        Error::NotFound { resource, id: id.to_string() }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument { field, description } => status::invalid_field(field, description),
            Error::NotFound { resource, id } => status::not_found(resource, &id),
            Error::FailedPrecondition { kind, subject, description } => status::precondition(kind, &subject, description),
            Error::QuotaExceeded { reason, plan, current_usage, limit, description } => {
                let metadata = HashMap::from([
                    ("plan".to_owned(), plan),
                    ("current_usage".to_owned(), current_usage.to_string()),
                    ("limit".to_owned(), limit.to_string()),
                ]);
                status::quota_exceeded(reason, reason, description, metadata)
            }
            Error::BadSignature => {
                tracing::warn!("rejected a bad gateway signature");
                status::with_reason(Code::InvalidArgument, "BAD_SIGNATURE", "gateway signature does not match")
            }
            Error::IdempotencyKeyReused => status::with_reason(
                Code::InvalidArgument,
                "IDEMPOTENCY_KEY_REUSED",
                "idempotency key was used with a different request",
            ),
            Error::IdempotencyKeyInFlight => status::aborted("a request with this idempotency key is in flight, retry"),
            Error::Db(e) => status::from_db(&e),
            Error::Gateway(GatewayError::Unavailable { message, retry_after }) => {
                tracing::warn!(error = %message, "payment gateway unavailable");
                status::unavailable("payment gateway unavailable, retry later", retry_after.unwrap_or(Duration::from_secs(1)))
            }
            Error::Gateway(GatewayError::Refused { code, message }) => {
                tracing::warn!(%code, %message, "payment gateway refused a request");
                status::precondition("GATEWAY_REFUSED", &code, message)
            }
            Error::Internal(m) => status::internal(&m),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A conflict another attempt of the same transaction would not hit:
    /// serialization failures, deadlocks and races on unique indexes.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Db(DbError::Conflict(_)) | Error::Db(DbError::UniqueViolation { .. }))
    }
}

/// Attempts of a transaction that lost a race before the error goes out as
/// ABORTED.
pub const TX_ATTEMPTS: u32 = 5;
