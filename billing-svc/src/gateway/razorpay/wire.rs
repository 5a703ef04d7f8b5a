//! Razorpay's wire formats: the entities billing reads from its answers,
//! and how an HTTP answer or failure becomes a [`GatewayError`]. Nothing here
//! panics on a body that is not what the documentation shows.
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde::Deserialize;

use super::{MAX_BODY, MAX_RETRY_AFTER};
use crate::gateway::{GatewayError, PaymentStatus, RefundStatus};

#[derive(Deserialize)]
pub(super) struct ErrorBody {
    pub(super) error: ErrorDetail,
}

#[derive(Deserialize)]
pub(super) struct ErrorDetail {
    pub(super) code: Option<String>,
    pub(super) description: Option<String>,
}

/// The order entity (fields billing reads).
#[derive(Deserialize)]
pub(super) struct OrderEntity {
    pub(super) id: String,
    pub(super) amount: i64,
    pub(super) currency: String,
    pub(super) receipt: Option<String>,
    #[serde(default)]
    pub(super) created_at: i64,
}

#[derive(Deserialize)]
pub(super) struct Collection<T> {
    pub(super) items: Vec<T>,
}

/// The payment entity (fields billing reads).
#[derive(Deserialize)]
pub(super) struct PaymentEntity {
    pub(super) id: String,
    pub(super) amount: i64,
    pub(super) currency: String,
    pub(super) status: String,
    pub(super) order_id: Option<String>,
    /// Set on payments that saved a card or mandate for recurring charges.
    #[serde(default)]
    pub(super) customer_id: Option<String>,
    #[serde(default)]
    pub(super) token_id: Option<String>,
    /// The customer's email and phone as entered for the payment; a
    /// recurring charge must send them again.
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) contact: Option<String>,
}

/// The customer entity (`POST /v1/customers`).
#[derive(Deserialize)]
pub(super) struct CustomerEntity {
    pub(super) id: String,
    /// An object of strings, or `[]` when the customer has none.
    #[serde(default)]
    pub(super) notes: serde_json::Value,
}

/// The token entity (`GET /v1/customers/:customer_id/tokens/:token_id`):
/// whether its recurring mandate may still be charged.
#[derive(Deserialize)]
pub(super) struct TokenEntity {
    #[serde(default)]
    pub(super) recurring_details: Option<RecurringDetails>,
    /// Unix seconds; the token cannot be charged after it.
    #[serde(default)]
    pub(super) expired_at: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct RecurringDetails {
    pub(super) status: Option<String>,
}

/// The refund entity (fields billing reads).
#[derive(Deserialize)]
pub(super) struct RefundEntity {
    pub(super) id: String,
    pub(super) amount: i64,
    pub(super) status: String,
    /// An object of strings, or `[]` when the refund has none.
    #[serde(default)]
    pub(super) notes: serde_json::Value,
}

impl RefundEntity {
    /// Billing's refund id this refund was made under (`notes.refund_key`).
    pub(super) fn refund_key(&self) -> Option<&str> {
        self.notes.get("refund_key").and_then(serde_json::Value::as_str)
    }
}

/// The answer of `POST /v1/payments/create/recurring`: the payment's id
/// (as for a checkout, with the order id and a signature), or for some
/// banks the payment entity itself in the `created` state.
#[derive(Deserialize)]
pub(super) struct RecurringAnswer {
    pub(super) razorpay_payment_id: Option<String>,
    pub(super) id: Option<String>,
}

pub(super) fn payment_status(s: &str) -> PaymentStatus {
    match s {
        "captured" => PaymentStatus::Captured,
        "authorized" => PaymentStatus::Authorized,
        "refunded" => PaymentStatus::Refunded,
        "failed" => PaymentStatus::Failed,
        // "created", "pending" and states this code does not know: not
        // (yet) money billing may grant anything for.
        _ => PaymentStatus::Created,
    }
}

pub(super) fn refund_status(s: &str) -> RefundStatus {
    match s {
        "processed" => RefundStatus::Processed,
        "failed" => RefundStatus::Failed,
        // "pending" and anything newer: not final yet.
        _ => RefundStatus::Pending,
    }
}

/// Ids go into URL paths: Razorpay's are `prefix_alphanumerics`.
pub(super) fn check_id(what: &str, id: &str) -> Result<(), GatewayError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(GatewayError::Refused { code: "BAD_REQUEST_ERROR".into(), message: format!("invalid {what}") })
    }
}

pub(super) fn unavailable(message: &str, retry_after: Option<Duration>) -> GatewayError {
    GatewayError::Unavailable { message: format!("razorpay: {message}"), retry_after }
}

pub(super) fn unexpected(method: &Method, path: &str, status: StatusCode) -> GatewayError {
    unavailable(&format!("{method} {path}: unexpected response (HTTP {})", status.as_u16()), None)
}

/// A failure to talk to the gateway at all. Only the kind is kept: the
/// error's text is not needed and says nothing a log must not show, but the
/// kind is what an operator acts on.
pub(super) fn transport_error(method: &Method, path: &str, e: &reqwest::Error) -> GatewayError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    unavailable(&format!("{method} {path}: {kind}"), None)
}

/// The body, or None when it is larger than `MAX_BODY`.
pub(super) async fn read_body(mut resp: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Retry-After in whole seconds (the form Razorpay sends), clamped.
pub(super) fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// At most `max` characters, control characters dropped.
pub(super) fn bounded(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::razorpay::MAX_DESCRIPTION;

    #[test]
    fn statuses_map_conservatively() {
        assert_eq!(payment_status("captured"), PaymentStatus::Captured);
        assert_eq!(payment_status("authorized"), PaymentStatus::Authorized);
        assert_eq!(payment_status("pending"), PaymentStatus::Created);
        assert_eq!(payment_status("something_new"), PaymentStatus::Created);
        assert_eq!(refund_status("processed"), RefundStatus::Processed);
        assert_eq!(refund_status("something_new"), RefundStatus::Pending);
    }

    #[test]
    fn ids_in_paths_are_plain() {
        assert!(check_id("payment id", "pay_29QQoUBi66xm2f").is_ok());
        for bad in ["", "../orders", "pay_1/refund", "pay 1", "pay_1?x=1", &"p".repeat(65)] {
            assert!(check_id("payment id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn descriptions_are_bounded() {
        assert_eq!(bounded(&"é".repeat(500), MAX_DESCRIPTION).chars().count(), MAX_DESCRIPTION);
        assert_eq!(bounded("a\nb\0c", 10), "abc");
    }
}
