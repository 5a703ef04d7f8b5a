//! billing-svc's one error enum and its one mapping to gRPC statuses
//! (docs/design.md, Error model). The failures both services share are
//! [`ServiceError`], mapped in `shared`; only billing's own are mapped here.
use std::time::Duration;

use shared::{
    db::DbError,
    error::ServiceError,
    status::{self, ErrorReason},
};
use tonic::Status;

use crate::gateway::GatewayError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A plan limit or an empty balance: RESOURCE_EXHAUSTED with QuotaFailure
    /// and ErrorInfo {reason, plan, current_usage, limit}.
    #[error("{description}")]
    QuotaExceeded { reason: ErrorReason, plan: String, current_usage: i64, limit: i64, description: String },
    #[error("gateway signature does not match")]
    BadSignature,
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// CreatePlan with an id in use: ALREADY_EXISTS `PLAN_EXISTS`.
    #[error("plan {id} already exists")]
    PlanExists { id: String },
}

shared::service_error_conversions!(Error);

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Service(e) => e.into(),
            Error::QuotaExceeded { reason, plan, current_usage, limit, description } => {
                let metadata = [("plan", plan), ("current_usage", current_usage.to_string()), ("limit", limit.to_string())];
                status::quota_exceeded(reason, reason.as_str_name(), description, metadata)
            }
            Error::BadSignature => {
                tracing::warn!("rejected a bad gateway signature");
                status::with_reason(ErrorReason::BadSignature, "gateway signature does not match")
            }
            Error::Gateway(GatewayError::Unavailable { message, retry_after }) => {
                tracing::warn!(error = %message, "payment gateway unavailable");
                status::unavailable(
                    ErrorReason::GatewayUnavailable,
                    "payment gateway unavailable, retry later",
                    retry_after.unwrap_or(Duration::from_secs(1)),
                    [],
                )
            }
            Error::PlanExists { id } => status::already_exists(ErrorReason::PlanExists, "plan", &id),
            Error::Gateway(GatewayError::Refused { code, message }) => {
                tracing::warn!(%code, %message, "payment gateway refused a request");
                status::precondition(ErrorReason::GatewayRefused, &code, message, [("gateway_code", code.clone())])
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
