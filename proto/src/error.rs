//! The error contract of both services (docs/design.md, Error model): the
//! reasons of `payments.errors.v1.ErrorReason`, the one gRPC code and the
//! retry advice each reason travels with, and the one builder every error
//! status goes through, so a reason can never travel with another code nor
//! lose its `ErrorInfo`.
use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::payments::errors::v1::ErrorReason;

/// `ErrorInfo.domain` of every error of both services.
pub const ERROR_DOMAIN: &str = "payments.internal";

/// Longest metadata value in an `ErrorInfo`: errors stay a few KB.
pub const MAX_METADATA_VALUE: usize = 200;

/// Metadata key of the retry delay, in milliseconds, beside RetryInfo.
pub const RETRY_AFTER_MS: &str = "retry_after_ms";

impl ErrorReason {
    /// The code this reason always travels with. Exhaustive on purpose: a
    /// value added to the proto enum does not build until it has one.
    pub const fn code(self) -> Code {
        use ErrorReason as R;
        match self {
            R::Unspecified => Code::Unknown,
            R::InvalidField | R::MalformedRequest | R::ValueNotStorable | R::BadSignature | R::IdempotencyKeyReused => {
                Code::InvalidArgument
            }
            R::ResourceNotFound => Code::NotFound,
            R::PlanExists => Code::AlreadyExists,
            R::SessionCompleted
            | R::SessionNotActive
            | R::SessionChanged
            | R::SessionActive
            | R::SessionTooOld
            | R::ReplacementChainTooLong
            | R::PlanNotPurchasable
            | R::TrialNotAvailable
            | R::SubscriptionPastDue
            | R::PlanChangeNotAllowed
            | R::OrderExists
            | R::OrderCancelled
            | R::OrderPaid
            | R::OrderSuperseded
            | R::SecondPayment
            | R::AmountMismatch
            | R::UnknownOrder
            | R::RecordedBeforeClassification
            | R::PaymentUsed
            | R::PaymentOrderMismatch
            | R::PaymentNotCaptured
            | R::GatewayRefused
            | R::SessionEnded
            | R::SubscriptionEnded
            | R::FreePlan
            | R::OrderNotPaid
            | R::RefundExceedsCaptured
            | R::RefundIdReused
            | R::CursorExpired => Code::FailedPrecondition,
            R::SessionLimitExceeded | R::MinutesLimitExceeded | R::NoCredits | R::UploadTooLarge | R::WatchersExhausted => {
                Code::ResourceExhausted
            }
            R::IdempotencyKeyInFlight | R::ConcurrentUpdate | R::RowBusy | R::EtagMismatch => Code::Aborted,
            R::DatabaseUnavailable | R::GatewayUnavailable | R::BillingUnavailable | R::Overloaded => Code::Unavailable,
            R::TokenMissing | R::TokenInvalid => Code::Unauthenticated,
            R::AdminRequired => Code::PermissionDenied,
            R::InternalError => Code::Internal,
            R::DeadlineExceeded => Code::DeadlineExceeded,
        }
    }

    /// The RetryInfo delay this reason carries unless its error gives a
    /// better one (the gateway's Retry-After); `None`: retrying the same
    /// request does not help.
    pub const fn retry_after(self) -> Option<Duration> {
        use ErrorReason as R;
        match self {
            // A conflict another attempt can win at once.
            R::IdempotencyKeyInFlight | R::ConcurrentUpdate | R::RowBusy => Some(Duration::from_millis(50)),
            R::DatabaseUnavailable | R::GatewayUnavailable | R::BillingUnavailable | R::Overloaded | R::WatchersExhausted => {
                Some(Duration::from_secs(1))
            }
            // The gateway has not captured the payment yet; its webhook
            // usually arrives within seconds.
            R::PaymentNotCaptured => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_METADATA_VALUE {
        s.truncate(s.floor_char_boundary(MAX_METADATA_VALUE));
    }
    s
}

/// The one builder of an error status: the reason's code, `details` plus
/// `ErrorInfo{reason, domain, metadata}`, and RetryInfo (with
/// `retry_after_ms` in the metadata) when the reason invites a retry.
/// `details` may already hold a RetryInfo with a better delay.
pub fn status(
    reason: ErrorReason,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
    mut details: ErrorDetails,
) -> Status {
    let mut meta: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_owned(), clip(v))).collect();
    let retry = details.retry_info().and_then(|r| r.retry_delay).or(reason.retry_after());
    if let Some(d) = retry {
        details.set_retry_info(Some(d));
        meta.insert(RETRY_AFTER_MS.to_owned(), d.as_millis().to_string());
    }
    details.set_error_info(reason.as_str_name(), ERROR_DOMAIN, meta);
    Status::with_error_details(reason.code(), message, details)
}

/// [`status`] without metadata or other details.
pub fn plain(reason: ErrorReason, message: impl Into<String>) -> Status {
    status(reason, message, [], ErrorDetails::new())
}

/// The reason of a status built by [`status`] (or by a peer that follows
/// the same contract): `None` when it carries no ErrorInfo of this domain or
/// a reason this build does not know.
pub fn reason_of(s: &Status) -> Option<ErrorReason> {
    let details = s.get_error_details();
    let info = details.error_info()?;
    (info.domain == ERROR_DOMAIN).then(|| ErrorReason::from_str_name(&info.reason)).flatten()
}

/// Every value of the enum, in number order (for exhaustive checks).
pub fn all_reasons() -> impl Iterator<Item = ErrorReason> {
    (1..).map_while(|n| ErrorReason::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_name_on_the_wire_and_a_real_code() {
        let all: Vec<ErrorReason> = all_reasons().collect();
        assert!(all.len() >= 48, "{} reasons", all.len());
        for r in all {
            let s = plain(r, "x");
            assert_eq!(s.code(), r.code(), "{r:?}");
            assert_ne!(s.code(), Code::Ok, "{r:?}");
            assert_ne!(s.code(), Code::Unknown, "{r:?}");
            assert_eq!(reason_of(&s), Some(r), "{r:?}");
            assert_eq!(ErrorReason::from_str_name(r.as_str_name()), Some(r));
            assert!(!r.as_str_name().starts_with("ERROR_REASON_"), "{r:?}");
        }
    }

    #[test]
    fn every_retryable_code_carries_retry_info() {
        for r in all_reasons() {
            let s = plain(r, "x");
            let retry = s.get_error_details().retry_info().and_then(|i| i.retry_delay);
            // ETAG_MISMATCH is ABORTED because the caller must restart its
            // read-modify-write: resending the same request cannot succeed,
            // so it must not carry RetryInfo.
            if r == ErrorReason::EtagMismatch {
                assert_eq!(retry, None, "{r:?}");
            } else if matches!(r.code(), Code::Unavailable | Code::Aborted) {
                assert!(retry.is_some(), "{r:?} invites a retry without RetryInfo");
            }
            let meta = s.get_error_details().error_info().map(|i| i.metadata.clone()).unwrap_or_default();
            assert_eq!(retry.map(|d| d.as_millis().to_string()), meta.get(RETRY_AFTER_MS).cloned(), "{r:?}");
        }
        assert!(ErrorReason::PaymentNotCaptured.retry_after().is_some());
        // Quota errors do not invite a retry before the period or plan changes.
        assert_eq!(ErrorReason::NoCredits.retry_after(), None);
    }

    #[test]
    fn a_better_delay_wins_and_metadata_stays_small() {
        let s = status(
            ErrorReason::GatewayUnavailable,
            "x",
            [("k", "v".repeat(10_000))],
            ErrorDetails::with_retry_info(Some(Duration::from_secs(30))),
        );
        let d = s.get_error_details();
        assert_eq!(d.retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(30)));
        let meta = d.error_info().map(|i| i.metadata.clone()).unwrap_or_default();
        assert_eq!(meta.get(RETRY_AFTER_MS).map(String::as_str), Some("30000"));
        assert_eq!(meta.get("k").map(String::len), Some(MAX_METADATA_VALUE));
    }
}
