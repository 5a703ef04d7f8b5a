//! checkout-svc's one error enum and its one mapping to gRPC statuses (DESIGN §7).
use std::time::Duration;

use shared::{db::DbError, idempotency::IdempotencyError, status};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {description}")]
    InvalidArgument { field: &'static str, description: String },
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("{description}")]
    FailedPrecondition { kind: &'static str, subject: String, description: String },
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this idempotency key is still in flight")]
    IdempotencyKeyInFlight,
    /// billing answered with a client error about our caller's input (bad
    /// signature, unknown plan...): passed through with its details.
    #[error("billing: {0}")]
    Billing(Status),
    /// billing unreachable, overloaded or out of time.
    #[error("billing unavailable: {0}")]
    BillingUnavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Db(e.into())
    }
}

impl From<IdempotencyError> for Error {
    fn from(e: IdempotencyError) -> Self {
        match e {
            IdempotencyError::Reused => Error::IdempotencyKeyReused,
            IdempotencyError::InFlight => Error::IdempotencyKeyInFlight,
            IdempotencyError::Db(d) => Error::Db(d),
        }
    }
}

impl Error {
    pub fn not_found(resource: &'static str, id: impl ToString) -> Self {
        Error::NotFound { resource, id: id.to_string() }
    }

    pub fn precondition(kind: &'static str, subject: impl ToString, description: impl Into<String>) -> Self {
        Error::FailedPrecondition { kind, subject: subject.to_string(), description: description.into() }
    }

    /// Classifies a status from billing.
    pub fn from_billing(s: Status) -> Self {
        match s.code() {
            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::ResourceExhausted => Error::Billing(s),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::Unknown => {
                Error::BillingUnavailable(format!("{:?}: {}", s.code(), s.message()))
            }
            // UNAUTHENTICATED / PERMISSION_DENIED / INTERNAL: our configuration
            // or billing's bug, not the caller's fault.
            _ => Error::Internal(format!("billing answered {:?}: {}", s.code(), s.message())),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Db(DbError::Conflict(_)) | Error::Db(DbError::UniqueViolation { .. }))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument { field, description } => status::invalid_field(field, description),
            Error::NotFound { resource, id } => status::not_found(resource, &id),
            Error::FailedPrecondition { kind, subject, description } => status::precondition(kind, &subject, description),
            Error::IdempotencyKeyReused => status::with_reason(
                Code::InvalidArgument,
                "IDEMPOTENCY_KEY_REUSED",
                "idempotency key was used with a different request",
            ),
            Error::IdempotencyKeyInFlight => status::aborted("a request with this idempotency key is in flight, retry"),
            // Rebuilt so billing's transport metadata does not leak through.
            Error::Billing(s) => Status::with_details(s.code(), s.message().to_owned(), s.details().to_vec().into()),
            Error::BillingUnavailable(m) => {
                tracing::warn!(error = %m, "billing unavailable");
                status::unavailable("billing unavailable, retry later", Duration::from_secs(1))
            }
            Error::Db(e) => status::from_db(&e),
            Error::Internal(m) => status::internal(&m),
        }
    }
}

/// Attempts of a transaction that lost a race before ABORTED goes out.
pub const TX_ATTEMPTS: u32 = 5;
