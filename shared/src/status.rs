//! Building the gRPC statuses of DESIGN §7 with their `google.rpc` details.
//! Each service's `error.rs` maps its domain errors through these helpers, so
//! every status of one kind looks the same on the wire.
use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::db::DbError;

pub const ERROR_DOMAIN: &str = "payments.internal";

/// INVALID_ARGUMENT with BadRequest field violations.
pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    let msg = violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
    Status::with_error_details(Code::InvalidArgument, msg, ErrorDetails::with_bad_request(violations))
}

/// INVALID_ARGUMENT for one field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid(vec![FieldViolation::new(field, description)])
}

/// NOT_FOUND with ResourceInfo.
pub fn not_found(resource_type: &str, name: &str) -> Status {
    Status::with_error_details(
        Code::NotFound,
        format!("{resource_type} {name} not found"),
        ErrorDetails::with_resource_info(resource_type, name, "", "no such resource"),
    )
}

/// FAILED_PRECONDITION with one PreconditionFailure violation.
pub fn precondition(violation_type: &str, subject: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::FailedPrecondition,
        description.clone(),
        ErrorDetails::with_precondition_failure_violation(violation_type, subject, description),
    )
}

/// RESOURCE_EXHAUSTED with QuotaFailure and ErrorInfo{reason, metadata}.
pub fn quota_exceeded(reason: &str, subject: &str, description: impl Into<String>, metadata: HashMap<String, String>) -> Status {
    let description = description.into();
    let mut details = ErrorDetails::with_quota_failure_violation(subject, description.clone());
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(Code::ResourceExhausted, description, details)
}

/// Any code with an ErrorInfo reason (bad signature, reused idempotency key...).
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()))
}

/// UNAVAILABLE with RetryInfo.
pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(Code::Unavailable, message, ErrorDetails::with_retry_info(Some(retry_after)))
}

/// ABORTED: a conflict the caller should retry at once.
pub fn aborted(message: impl Into<String>) -> Status {
    Status::with_error_details(Code::Aborted, message, ErrorDetails::with_retry_info(Some(Duration::from_millis(50))))
}

/// INTERNAL: a bug. The cause is logged with the trace id; the caller gets an
/// opaque message carrying the same id so the two can be matched.
pub fn internal(cause: &dyn std::fmt::Display) -> Status {
    let trace_id = crate::telemetry::current_trace_id().unwrap_or_default();
    tracing::error!(error = %cause, trace_id = %trace_id, "internal error");
    Status::internal(format!("internal error (trace id {trace_id})"))
}

/// The database half of the mapping, shared by both services.
pub fn from_db(e: &DbError) -> Status {
    match e {
        DbError::Unavailable(m) => {
            tracing::warn!(error = %m, "database unavailable");
            unavailable("database unavailable, retry later", Duration::from_secs(1))
        }
        DbError::Conflict(m) => {
            tracing::info!(error = %m, "transaction conflict");
            aborted("concurrent update, retry")
        }
        DbError::UniqueViolation { constraint } => {
            tracing::info!(constraint = %constraint, "unexpected unique violation");
            aborted(format!("concurrent update ({constraint}), retry"))
        }
        DbError::Other(m) => internal(m),
    }
}

/// Collects field violations so one response lists every bad field.
#[derive(Default, Debug)]
pub struct Violations(Vec<FieldViolation>);

pub const MAX_ID_LEN: usize = 128;

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
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

    pub fn finish(self) -> Result<(), Status> {
        if self.0.is_empty() { Ok(()) } else { Err(invalid(self.0)) }
    }
}

#[cfg(test)]
mod tests {
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
}
