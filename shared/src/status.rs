//! Building the gRPC statuses of docs/design.md, Error model, with their
//! `google.rpc` details. Each service's `error.rs` maps its domain errors
//! through these helpers, and every helper goes through
//! [`proto::error::status`], so every status carries `ErrorInfo` with an
//! [`ErrorReason`], travels with that reason's one code, and every status of
//! one kind looks the same on the wire.
use std::time::Duration;

pub use proto::error::{ERROR_DOMAIN, ErrorReason};
use tonic::Status;
use tonic_types::{ErrorDetails, FieldViolation};

use crate::db::DbError;

/// INVALID_ARGUMENT `INVALID_FIELD` with BadRequest field violations.
pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    let msg = violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
    let first = violations.first().map(|v| ("field", v.field.clone()));
    proto::error::status(ErrorReason::InvalidField, msg, first, ErrorDetails::with_bad_request(violations))
}

/// INVALID_ARGUMENT `INVALID_FIELD` for one field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid(vec![FieldViolation::new(field, description)])
}

/// NOT_FOUND `RESOURCE_NOT_FOUND` with ResourceInfo.
pub fn not_found(resource_type: &str, name: &str) -> Status {
    proto::error::status(
        ErrorReason::ResourceNotFound,
        format!("{resource_type} {name} not found"),
        [("resource_type", resource_type.to_owned()), ("resource_name", name.to_owned())],
        ErrorDetails::with_resource_info(resource_type, name, "", "no such resource"),
    )
}

/// ALREADY_EXISTS with ResourceInfo: a create whose id is taken.
pub fn already_exists(reason: ErrorReason, resource_type: &str, name: &str) -> Status {
    proto::error::status(
        reason,
        format!("{resource_type} {name} already exists"),
        [("resource_type", resource_type.to_owned()), ("resource_name", name.to_owned())],
        ErrorDetails::with_resource_info(resource_type, name, "", "the id is taken"),
    )
}

/// FAILED_PRECONDITION with one PreconditionFailure violation whose type is
/// the reason's name; metadata `subject` plus `metadata`.
pub fn precondition(
    reason: ErrorReason,
    subject: &str,
    description: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
) -> Status {
    let description = description.into();
    let details = ErrorDetails::with_precondition_failure_violation(reason.as_str_name(), subject, description.clone());
    let metadata = std::iter::once(("subject", subject.to_owned())).chain(metadata);
    proto::error::status(reason, description, metadata, details)
}

/// RESOURCE_EXHAUSTED with QuotaFailure {subject} and ErrorInfo{reason, metadata}.
pub fn quota_exceeded(
    reason: ErrorReason,
    subject: &str,
    description: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
) -> Status {
    let description = description.into();
    let details = ErrorDetails::with_quota_failure_violation(subject, description.clone());
    proto::error::status(reason, description, metadata, details)
}

/// A status that needs nothing but its reason (bad signature, reused
/// idempotency key, a missing token...).
pub fn with_reason(reason: ErrorReason, message: impl Into<String>) -> Status {
    proto::error::plain(reason, message)
}

/// UNAVAILABLE with RetryInfo `retry_after`.
pub fn unavailable(
    reason: ErrorReason,
    message: impl Into<String>,
    retry_after: Duration,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
) -> Status {
    proto::error::status(reason, message, metadata, ErrorDetails::with_retry_info(Some(retry_after)))
}

/// ABORTED: a conflict the caller should retry at once (the reason's
/// RetryInfo, 50 ms).
pub fn aborted(reason: ErrorReason, message: impl Into<String>) -> Status {
    proto::error::plain(reason, message)
}

/// INTERNAL: a bug. The cause is logged with the trace id; the caller gets an
/// opaque message carrying the same id (also metadata `trace_id`) so the two
/// can be matched.
pub fn internal(cause: &dyn std::fmt::Display) -> Status {
    let trace_id = crate::telemetry::current_trace_id().unwrap_or_default();
    tracing::error!(error = %cause, trace_id = %trace_id, "internal error");
    proto::error::status(
        ErrorReason::InternalError,
        format!("internal error (trace id {trace_id})"),
        [("trace_id", trace_id)],
        ErrorDetails::new(),
    )
}

/// The database half of the mapping, shared by both services.
pub fn from_db(e: &DbError) -> Status {
    match e {
        DbError::Unavailable(m) => {
            tracing::warn!(error = %m, "database unavailable");
            unavailable(ErrorReason::DatabaseUnavailable, "database unavailable, retry later", Duration::from_secs(1), [])
        }
        DbError::Conflict(m) => {
            tracing::info!(error = %m, "transaction conflict");
            aborted(ErrorReason::ConcurrentUpdate, "concurrent update, retry")
        }
        DbError::Timeout(m) => {
            tracing::info!(error = %m, "database wait past its bound");
            aborted(ErrorReason::RowBusy, "the data is busy (a lock wait or statement ran past its bound), retry")
        }
        DbError::InvalidInput(m) => {
            let mut m = m.clone();
            m.truncate(m.floor_char_boundary(MAX_DETAIL));
            let description = format!("a value cannot be stored: {m}");
            proto::error::status(
                ErrorReason::ValueNotStorable,
                format!("request: {description}"),
                [("field", "request".to_owned())],
                ErrorDetails::with_bad_request(vec![FieldViolation::new("request", description)]),
            )
        }
        DbError::UniqueViolation { constraint } => {
            tracing::info!(constraint = %constraint, "unexpected unique violation");
            aborted(ErrorReason::ConcurrentUpdate, format!("concurrent update ({constraint}), retry"))
        }
        DbError::Other(m) => internal(m),
    }
}

/// Checks a repeated field's length before its items are looked at, so a
/// huge list is refused at once, without walking it.
pub fn check_count(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max { Err(invalid_field(field, format!("at most {max} items (got {len})"))) } else { Ok(()) }
}

/// Collects field violations so one response lists the bad fields. Only the
/// first [`MAX_VIOLATIONS`] are kept (plus a count of the rest), each cut to
/// [`MAX_DETAIL`] bytes, so an error stays a few KB whatever the request.
#[derive(Default, Debug)]
pub struct Violations {
    kept: Vec<FieldViolation>,
    dropped: usize,
}

/// Longest id accepted in a request.
pub const MAX_ID_LEN: usize = 128;
/// Violations listed in one error.
pub const MAX_VIOLATIONS: usize = 10;
/// Longest field name or description in an error detail.
pub const MAX_DETAIL: usize = 200;

fn clip(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        s.truncate(s.floor_char_boundary(MAX_DETAIL));
        s.push('…');
    }
    s
}

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid (at most [`MAX_VIOLATIONS`] are kept).
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        if self.kept.len() < MAX_VIOLATIONS {
            self.kept.push(FieldViolation::new(clip(field.to_owned()), clip(description.into())));
        } else {
            self.dropped += 1;
        }
    }

    /// Whether no violation was recorded.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Required text of 1..=max characters without control characters.
    pub fn text<'a>(&mut self, field: &str, value: &'a str, max: usize) -> &'a str {
        if value.trim().is_empty() {
            self.add(field, "is required");
        } else if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if value.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
        }
        value
    }

    /// Required UUID; returns nil on error (never used, since `finish` fails).
    pub fn uuid(&mut self, field: &str, value: &str) -> uuid::Uuid {
        if value.is_empty() {
            self.add(field, "is required");
            return uuid::Uuid::nil();
        }
        match uuid::Uuid::parse_str(value) {
            Ok(u) => u,
            Err(_) => {
                self.add(field, "must be a UUID");
                uuid::Uuid::nil()
            }
        }
    }

    /// Integer within [min, max].
    pub fn range(&mut self, field: &str, value: i64, min: i64, max: i64) -> i64 {
        if value < min || value > max {
            self.add(field, format!("must be between {min} and {max}"));
        }
        value
    }

    /// INVALID_ARGUMENT with the recorded violations, or `Ok` when there are none.
    pub fn finish(mut self) -> Result<(), Status> {
        if self.kept.is_empty() {
            return Ok(());
        }
        if self.dropped > 0 {
            self.kept.push(FieldViolation::new("*", format!("and {} more violations", self.dropped)));
        }
        Err(invalid(self.kept))
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn violations_list_every_bad_field() {
        let mut v = Violations::new();
        v.uuid("id", "nope");
        v.text("user_id", "", MAX_ID_LEN);
        v.text("plan_id", "ok", MAX_ID_LEN);
        let status = v.finish().err();
        let fields: Vec<String> = status
            .map(|s| {
                s.get_error_details()
                    .bad_request()
                    .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        assert_eq!(fields, vec!["id".to_owned(), "user_id".to_owned()]);
    }

    #[test]
    fn database_failures_carry_their_reasons() {
        let cases = [
            (DbError::Unavailable("down".into()), ErrorReason::DatabaseUnavailable),
            (DbError::Conflict("40001".into()), ErrorReason::ConcurrentUpdate),
            (DbError::UniqueViolation { constraint: "c".into() }, ErrorReason::ConcurrentUpdate),
            (DbError::Timeout("lock".into()), ErrorReason::RowBusy),
            (DbError::InvalidInput("date out of range".into()), ErrorReason::ValueNotStorable),
            (DbError::Other("bug".into()), ErrorReason::InternalError),
        ];
        for (e, want) in cases {
            let s = from_db(&e);
            assert_eq!((s.code(), proto::error::reason_of(&s)), (want.code(), Some(want)), "{e:?}");
        }
        let s = from_db(&DbError::InvalidInput("date out of range".into()));
        let field = s.get_error_details().bad_request().and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
        assert_eq!(field.as_deref(), Some("request"), "BadRequest stays");
    }

    #[test]
    fn errors_stay_small_whatever_the_request() {
        let mut v = Violations::new();
        let long = "x".repeat(100_000);
        for _ in 0..100_000 {
            v.text(&long, "", MAX_ID_LEN);
        }
        let status = v.finish().err().unwrap_or_else(|| Status::ok(""));
        let details = status.get_error_details();
        let listed = details.bad_request().map(|b| b.field_violations.len()).unwrap_or_default();
        assert_eq!(listed, MAX_VIOLATIONS + 1, "ten violations and a count");
        assert!(status.message().len() + status.details().len() < 8 * 1024, "{} bytes", status.details().len());
        assert!(status.message().contains("99990 more"), "{}", status.message());
    }
}
