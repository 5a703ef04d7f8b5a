//! The failures both services share and their one mapping to gRPC statuses
//! (docs/design.md, Error model). Each service's error enum wraps
//! [`ServiceError`] and adds only what is its own (billing's quota and
//! gateway failures, checkout's answers from billing);
//! [`service_error_conversions!`](crate::service_error_conversions) gives it
//! the shared conversions and constructors.
use tonic::Status;

use crate::{
    db::DbError,
    gate::Busy,
    idempotency::IdempotencyError,
    status::{self, ErrorReason},
};

/// Dynamic values of an error, sent as `ErrorInfo.metadata`.
pub type Metadata = Vec<(&'static str, String)>;

/// A failure either service can answer with; [`Status`] maps it to its gRPC
/// status and details.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is invalid: INVALID_ARGUMENT with a field violation.
    #[error("{field}: {description}")]
    InvalidArgument {
        /// The field, as the request names it.
        field: &'static str,
        /// What is wrong with it.
        description: String,
    },
    /// The named resource does not exist: NOT_FOUND with resource info.
    #[error("{resource} {id} not found")]
    NotFound {
        /// The resource type, e.g. `order`.
        resource: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A wrong state: `reason` is one of the FAILED_PRECONDITION reasons.
    #[error("{description}")]
    FailedPrecondition {
        /// Why, as `ErrorInfo.reason`.
        reason: ErrorReason,
        /// What it is about (an id).
        subject: String,
        /// For the caller to read.
        description: String,
        /// Dynamic values, as `ErrorInfo.metadata`.
        metadata: Metadata,
    },
    /// An idempotency key was reused with another request: INVALID_ARGUMENT.
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    /// The first request with this idempotency key is still running: ABORTED.
    #[error("a request with this idempotency key is still in flight")]
    IdempotencyKeyInFlight,
    /// A mutating request's etag no longer names the resource as it is:
    /// ABORTED `ETAG_MISMATCH` (read it again, then decide again).
    #[error("{resource} {id} changed since the etag was read")]
    EtagMismatch {
        /// The resource type, e.g. `subscription`.
        resource: &'static str,
        /// Its id.
        id: String,
    },
    /// A database failure, mapped by its kind.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A bug: INTERNAL.
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError {
    /// [`ServiceError::InvalidArgument`].
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        ServiceError::InvalidArgument { field, description: description.into() }
    }

    /// [`ServiceError::NotFound`].
    pub fn not_found(resource: &'static str, id: impl ToString) -> Self {
        ServiceError::NotFound { resource, id: id.to_string() }
    }

    /// [`ServiceError::FailedPrecondition`] without metadata.
    pub fn precondition(reason: ErrorReason, subject: impl ToString, description: impl Into<String>) -> Self {
        Self::precondition_with(reason, subject, description, Metadata::new())
    }

    /// A wrong state with dynamic values for `ErrorInfo.metadata` (the
    /// refundable amount...).
    pub fn precondition_with(
        reason: ErrorReason,
        subject: impl ToString,
        description: impl Into<String>,
        metadata: Metadata,
    ) -> Self {
        debug_assert_eq!(reason.code(), tonic::Code::FailedPrecondition, "{reason:?}");
        ServiceError::FailedPrecondition { reason, subject: subject.to_string(), description: description.into(), metadata }
    }

    /// [`ServiceError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        ServiceError::Internal(message.into())
    }
}

impl From<diesel::result::Error> for ServiceError {
    fn from(e: diesel::result::Error) -> Self {
        ServiceError::Db(e.into())
    }
}

impl From<IdempotencyError> for ServiceError {
    fn from(e: IdempotencyError) -> Self {
        match e {
            IdempotencyError::Reused => ServiceError::IdempotencyKeyReused,
            IdempotencyError::InFlight => ServiceError::IdempotencyKeyInFlight,
            IdempotencyError::Db(d) => ServiceError::Db(d),
        }
    }
}

/// A full per-row admission queue is answered like a lock wait past its
/// bound: ABORTED, retry with backoff.
impl From<Busy> for ServiceError {
    fn from(e: Busy) -> Self {
        ServiceError::Db(DbError::Timeout(e.to_string()))
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::InvalidArgument { field, description } => status::invalid_field(field, description),
            ServiceError::NotFound { resource, id } => status::not_found(resource, &id),
            ServiceError::FailedPrecondition { reason, subject, description, metadata } => {
                status::precondition(reason, &subject, description, metadata)
            }
            ServiceError::IdempotencyKeyReused => {
                status::with_reason(ErrorReason::IdempotencyKeyReused, "idempotency key was used with a different request")
            }
            ServiceError::IdempotencyKeyInFlight => {
                status::aborted(ErrorReason::IdempotencyKeyInFlight, "a request with this idempotency key is in flight, retry")
            }
            ServiceError::EtagMismatch { resource, id } => {
                let message = format!("{resource} {id} changed since the etag was read; read it again and retry");
                proto::error::status(
                    ErrorReason::EtagMismatch,
                    message,
                    [("resource", resource.to_owned()), ("id", id)],
                    tonic_types::ErrorDetails::new(),
                )
            }
            ServiceError::Db(e) => status::from_db(&e),
            ServiceError::Internal(m) => status::internal(&m),
        }
    }
}

/// An error that may carry a database failure: what [`retry_tx!`](crate::retry_tx)
/// looks at to tell a lost race from a real failure.
pub trait AsDbError {
    /// The database failure inside, if any.
    fn as_db_error(&self) -> Option<&DbError>;
}

impl AsDbError for DbError {
    fn as_db_error(&self) -> Option<&DbError> {
        Some(self)
    }
}

impl AsDbError for ServiceError {
    fn as_db_error(&self) -> Option<&DbError> {
        match self {
            ServiceError::Db(e) => Some(e),
            _ => None,
        }
    }
}

/// For a service error enum `$t` with a `#[from] ServiceError` variant: the
/// conversions from database, idempotency and admission failures, and the
/// constructors of the shared variants (`$t::invalid`, `not_found`,
/// `precondition`, `internal`), so both services build them the same way.
#[macro_export]
macro_rules! service_error_conversions {
    ($t:ty) => {
        impl From<$crate::db::DbError> for $t {
            fn from(e: $crate::db::DbError) -> Self {
                $crate::error::ServiceError::from(e).into()
            }
        }

        impl From<diesel::result::Error> for $t {
            fn from(e: diesel::result::Error) -> Self {
                $crate::error::ServiceError::from(e).into()
            }
        }

        impl From<$crate::idempotency::IdempotencyError> for $t {
            fn from(e: $crate::idempotency::IdempotencyError) -> Self {
                $crate::error::ServiceError::from(e).into()
            }
        }

        impl From<$crate::gate::Busy> for $t {
            fn from(e: $crate::gate::Busy) -> Self {
                $crate::error::ServiceError::from(e).into()
            }
        }

        impl $t {
            pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
                $crate::error::ServiceError::invalid(field, description).into()
            }

            pub fn not_found(resource: &'static str, id: impl ToString) -> Self {
                $crate::error::ServiceError::not_found(resource, id).into()
            }

            pub fn precondition(
                reason: $crate::status::ErrorReason,
                subject: impl ToString,
                description: impl Into<String>,
            ) -> Self {
                $crate::error::ServiceError::precondition(reason, subject, description).into()
            }

            pub fn precondition_with(
                reason: $crate::status::ErrorReason,
                subject: impl ToString,
                description: impl Into<String>,
                metadata: $crate::error::Metadata,
            ) -> Self {
                $crate::error::ServiceError::precondition_with(reason, subject, description, metadata).into()
            }

            pub fn internal(message: impl Into<String>) -> Self {
                $crate::error::ServiceError::internal(message).into()
            }
        }
    };
}
