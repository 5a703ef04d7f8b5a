//! billing-svc's one error enum and its one mapping to gRPC statuses
//! (docs/design.md, Error model). The failures both services share are
//! [`ServiceError`], mapped in `shared`; only billing's own are mapped here.
use std::{collections::HashMap, time::Duration};

use shared::{db::DbError, error::ServiceError, status};
use tonic::{Code, Status};

use crate::gateway::GatewayError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A plan limit or an empty balance: RESOURCE_EXHAUSTED with QuotaFailure
    /// and ErrorInfo {reason, plan, current_usage, limit}.
    #[error("{description}")]
    QuotaExceeded { reason: &'static str, plan: String, current_usage: i64, limit: i64, description: String },
    #[error("gateway signature does not match")]
    BadSignature,
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

shared::service_error_conversions!(Error);

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Service(e) => e.into(),
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
            Error::Gateway(GatewayError::Unavailable { message, retry_after }) => {
                tracing::warn!(error = %message, "payment gateway unavailable");
                status::unavailable("payment gateway unavailable, retry later", retry_after.unwrap_or(Duration::from_secs(1)))
            }
            Error::Gateway(GatewayError::Refused { code, message }) => {
                tracing::warn!(%code, %message, "payment gateway refused a request");
                status::precondition("GATEWAY_REFUSED", &code, message)
            }
        }
    }
}

impl shared::error::AsDbError for Error {
    fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Error::Service(e) => e.as_db_error(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
