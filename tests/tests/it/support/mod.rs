//! Helpers shared by more than one area.
pub(crate) mod guards;
pub(crate) mod lost_response;

use tonic_types::StatusExt;

/// The type of the first PreconditionFailure violation of `s` (empty when
/// there is none).
pub(crate) fn precondition_type(s: &tonic::Status) -> String {
    s.get_error_details().precondition_failure().and_then(|p| p.violations.first().map(|v| v.r#type.clone())).unwrap_or_default()
}
