//! checkout-svc's one error enum and its one mapping to gRPC statuses
//! (docs/design.md, Error model). The failures both services share are
//! [`ServiceError`], mapped in `shared`; only checkout's own are mapped here.
use std::time::Duration;

use shared::{error::ServiceError, status};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// billing answered with a client error about our caller's input (bad
    /// signature, unknown plan...): passed through with its details.
    #[error("billing: {0}")]
    Billing(Status),
    /// billing unreachable, overloaded or out of time.
    #[error("billing unavailable: {0}")]
    BillingUnavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

shared::service_error_conversions!(Error);

impl Error {
    /// Classifies a status from billing. A failure of the connection (reset,
    /// GOAWAY, timeout) is billing being unreachable, whatever code tonic
    /// gave it: never passed through as if billing had answered it.
    pub fn from_billing(s: Status) -> Self {
        if shared::client::is_transport_failure(&s) {
            return Error::BillingUnavailable(format!("transport {:?}: {}", s.code(), s.message()));
        }
        match s.code() {
            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::ResourceExhausted => Error::Billing(s),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::Unknown => {
                Error::BillingUnavailable(format!("{:?}: {}", s.code(), s.message()))
            }
            // UNAUTHENTICATED / PERMISSION_DENIED / INTERNAL: our configuration
            // or billing's bug, not the caller's fault.
            _ => Error::internal(format!("billing answered {:?}: {}", s.code(), s.message())),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Service(e) => e.into(),
            // Rebuilt so billing's transport metadata does not leak through.
            Error::Billing(s) => Status::with_details(s.code(), s.message().to_owned(), s.details().to_vec().into()),
            Error::BillingUnavailable(m) => {
                tracing::warn!(error = %m, "billing unavailable");
                status::unavailable("billing unavailable, retry later", Duration::from_secs(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::StatusExt;

    use super::*;

    fn answered(s: Status) -> Status {
        Status::from(Error::from_billing(s))
    }

    #[test]
    fn transport_failures_of_billing_calls_are_unavailable_with_retry_info() {
        let io: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::other("broken pipe"));
        for s in [
            Status::new(
                Code::ResourceExhausted,
                "h2 protocol error: connection error received: error code 11 (ENHANCE_YOUR_CALM)",
            ),
            Status::new(Code::Internal, "h2 protocol error: stream error received: unspecific protocol error detected"),
            Status::new(Code::Unknown, "transport error"),
            Status::new(Code::Cancelled, "Timeout expired"),
            Status::new(Code::ResourceExhausted, "Too many active requests for the connection"),
            Status::from_error(io),
        ] {
            let out = answered(s);
            assert_eq!(out.code(), Code::Unavailable, "{out:?}");
            assert!(out.get_error_details().retry_info().is_some(), "{out:?}");
        }
    }

    #[test]
    fn billing_answers_keep_their_meaning() {
        let quota = status::quota_exceeded("PLAN_LIMIT", "plan:basic", "limit reached", HashMap::new());
        let out = answered(quota);
        assert_eq!(out.code(), Code::ResourceExhausted);
        assert!(out.get_error_details().quota_failure().is_some());
        let pre = answered(status::precondition("ORDER_CANCELLED", "checkout_session:x", "cancelled"));
        assert_eq!(pre.code(), Code::FailedPrecondition);
        assert!(pre.get_error_details().precondition_failure().is_some());
        assert_eq!(answered(Status::not_found("plan")).code(), Code::NotFound);
        assert_eq!(answered(Status::unavailable("shed")).code(), Code::Unavailable);
        // billing's own bug stays INTERNAL here (logged with a trace id).
        assert_eq!(answered(Status::internal("internal error (trace id 1)")).code(), Code::Internal);
    }
}
