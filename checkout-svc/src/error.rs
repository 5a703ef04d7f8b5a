//! checkout-svc's one error enum and its one mapping to gRPC statuses
//! (docs/design.md, Error model). The failures both services share are
//! [`ServiceError`], mapped in `shared`; only checkout's own are mapped here.
use std::time::Duration;

use proto::error::reason_of;
use shared::{
    error::ServiceError,
    status::{self, ErrorReason},
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

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
    BillingUnavailable(Unanswered),
}

/// Why a call to billing got no usable answer: what the caller's
/// BILLING_UNAVAILABLE says in its metadata.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub message: String,
    /// The code billing's call ended with (a transport failure's too).
    pub code: Code,
    /// billing's own reason, when it answered with one.
    pub reason: Option<ErrorReason>,
    /// billing's RetryInfo delay, when it gave one.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Unanswered {
    fn of(s: &Status, message: String) -> Self {
        let retry_after = s.get_error_details().retry_info().and_then(|r| r.retry_delay);
        Self { message, code: s.code(), reason: reason_of(s), retry_after }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

shared::service_error_conversions!(Error);

impl Error {
    /// Classifies a status from billing. A failure of the connection (reset,
    /// GOAWAY, timeout) is billing being unreachable, whatever code tonic
    /// gave it: never passed through as if billing had answered it.
    pub fn from_billing(s: Status) -> Self {
        if shared::client::is_transport_failure(&s) {
            return Error::BillingUnavailable(Unanswered::of(&s, format!("transport {:?}: {}", s.code(), s.message())));
        }
        match s.code() {
            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::ResourceExhausted => Error::Billing(s),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::Unknown => {
                Error::BillingUnavailable(Unanswered::of(&s, format!("{:?}: {}", s.code(), s.message())))
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
            Error::Billing(s) => passed_through(&s),
            Error::BillingUnavailable(u) => {
                tracing::warn!(error = %u, "billing unavailable");
                // billing's own delay when longer (a gateway's Retry-After).
                let retry_after = u.retry_after.unwrap_or_default().max(Duration::from_secs(1));
                let mut metadata = vec![("billing_code", format!("{:?}", u.code))];
                metadata.extend(u.reason.map(|r| ("billing_reason", r.as_str_name().to_owned())));
                status::unavailable(ErrorReason::BillingUnavailable, "billing unavailable, retry later", retry_after, metadata)
            }
        }
    }
}

/// billing's client error as checkout's caller gets it: the same code,
/// message and details. A billing that predates ErrorInfo on every error
/// (during a rolling deploy) gets one here, so callers can always branch on
/// the reason: from the PreconditionFailure type (which is the reason's
/// name) or from the code.
fn passed_through(s: &Status) -> Status {
    let unchanged = || Status::with_details(s.code(), s.message().to_owned(), s.details().to_vec().into());
    if s.get_error_details().error_info().is_some() {
        return unchanged();
    }
    let details = s.get_error_details();
    let from_type = details
        .precondition_failure()
        .and_then(|p| p.violations.first())
        .and_then(|v| ErrorReason::from_str_name(&v.r#type).map(|r| (r, v.subject.clone())));
    let (reason, metadata) = match (s.code(), from_type) {
        (Code::FailedPrecondition, Some((r, subject))) if r.code() == Code::FailedPrecondition => (r, vec![("subject", subject)]),
        (Code::NotFound, _) => {
            let meta = details
                .resource_info()
                .map(|r| vec![("resource_type", r.resource_type.clone()), ("resource_name", r.resource_name.clone())])
                .unwrap_or_default();
            (ErrorReason::ResourceNotFound, meta)
        }
        (Code::InvalidArgument, _) => (ErrorReason::InvalidField, vec![]),
        // Nothing to tell the reason by: as billing said it.
        _ => return unchanged(),
    };
    proto::error::status(reason, s.message(), metadata, details)
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, StatusExt};

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
        let quota = status::quota_exceeded(ErrorReason::SessionLimitExceeded, "plan:basic", "limit reached", []);
        let out = answered(quota);
        assert_eq!(out.code(), Code::ResourceExhausted);
        assert!(out.get_error_details().quota_failure().is_some());
        let pre = answered(status::precondition(ErrorReason::OrderCancelled, "checkout_session:x", "cancelled", []));
        assert_eq!(pre.code(), Code::FailedPrecondition);
        assert!(pre.get_error_details().precondition_failure().is_some());
        assert_eq!(answered(Status::not_found("plan")).code(), Code::NotFound);
        assert_eq!(answered(Status::unavailable("shed")).code(), Code::Unavailable);
        assert_eq!(reason_of(&out_of(status::not_found("plan", "gold"))), Some(ErrorReason::ResourceNotFound));
        // billing's own bug stays INTERNAL here (logged with a trace id).
        assert_eq!(answered(Status::internal("internal error (trace id 1)")).code(), Code::Internal);
    }

    fn out_of(s: Status) -> Status {
        answered(s)
    }

    #[test]
    fn a_billing_without_error_info_still_gives_callers_a_reason() {
        // What a billing from before ErrorInfo on every error sent.
        let old = Status::with_error_details(
            Code::FailedPrecondition,
            "cancelled",
            ErrorDetails::with_precondition_failure_violation("ORDER_CANCELLED", "checkout_session:x", "cancelled"),
        );
        let out = answered(old);
        assert_eq!(out.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&out), Some(ErrorReason::OrderCancelled));
        assert!(out.get_error_details().precondition_failure().is_some(), "the old detail is kept");
        let old = Status::with_error_details(
            Code::NotFound,
            "plan gold not found",
            ErrorDetails::with_resource_info("plan", "gold", "", "no such resource"),
        );
        let out = answered(old);
        assert_eq!(reason_of(&out), Some(ErrorReason::ResourceNotFound));
        let meta = out.get_error_details().error_info().map(|i| i.metadata.clone()).unwrap_or_default();
        assert_eq!(meta.get("resource_name").map(String::as_str), Some("gold"));
    }

    #[test]
    fn billing_unavailable_keeps_billing_s_reason_and_longer_delay() {
        let gateway = status::unavailable(ErrorReason::GatewayUnavailable, "gateway down", Duration::from_secs(30), []);
        let out = answered(gateway);
        assert_eq!(out.code(), Code::Unavailable);
        assert_eq!(reason_of(&out), Some(ErrorReason::BillingUnavailable));
        let d = out.get_error_details();
        assert_eq!(d.retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(30)));
        let meta = d.error_info().map(|i| i.metadata.clone()).unwrap_or_default();
        assert_eq!(meta.get("billing_reason").map(String::as_str), Some("GATEWAY_UNAVAILABLE"));
        assert_eq!(meta.get("billing_code").map(String::as_str), Some("Unavailable"));
    }
}
