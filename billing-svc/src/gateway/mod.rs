//! The payment gateway seen from billing: one async trait with the
//! operations billing needs, and its implementations (the built-in sandbox;
//! a real gateway's adapter sits beside it). Errors say only what a caller
//! can act on: UNAVAILABLE (timeouts, 5xx, 429: retry later) or a refusal
//! (4xx: the request itself is wrong or not allowed), never INTERNAL.
mod razorpay;
mod sandbox;

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
pub use razorpay::Razorpay;
pub use sandbox::{MadeRefund, Sandbox, SandboxRefunds};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// An order to create at the gateway.
#[derive(Debug, Clone, Copy)]
pub struct NewOrder<'a> {
    pub amount_minor: i64,
    pub currency: &'a str,
    /// Our reference (the checkout session id): the gateway's `receipt`, also
    /// how a retried create finds the order a timed-out attempt created.
    pub receipt: &'a str,
    pub user_id: &'a str,
    pub plan_id: &'a str,
    /// A purchase that also registers a recurring card mandate for later
    /// automatic renewals (Razorpay: an order with `customer_id`,
    /// `method: card` and a `token` block); None for a plain order.
    pub mandate: Option<Mandate<'a>>,
}

/// The recurring mandate a purchase order registers: whom it belongs to and
/// the limits the customer consents to. Later charges must stay within them.
#[derive(Debug, Clone, Copy)]
pub struct Mandate<'a> {
    /// The gateway's customer (created once per user, see `create_customer`).
    pub customer_id: &'a str,
    /// The most one later charge may take, in minor units.
    pub max_amount_minor: i64,
    /// When the mandate ends (unix seconds).
    pub expire_at: i64,
    /// The plan's billing period: how often the mandate may be debited.
    pub period: crate::plans::Period,
}

/// `GatewayError::Refused` code of a charge that must not be retried with this
/// saved method: its token was revoked, rejected, paused or expired at the
/// gateway, or the method lacks what the gateway requires for a recurring
/// charge. The caller stops automatic charging; the customer pays through a
/// (renewal) checkout instead.
pub const METHOD_UNUSABLE: &str = "METHOD_UNUSABLE";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayOrder {
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Created,
    Authorized,
    Captured,
    Refunded,
    Failed,
}

/// A payment as the gateway records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPayment {
    pub id: String,
    pub order_id: Option<String>,
    pub status: PaymentStatus,
    pub amount_minor: i64,
    pub currency: String,
    /// The method the customer saved with this payment for recurring
    /// charges (customer and token), when the gateway reports one.
    pub saved_method: Option<SavedMethod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    /// Accepted by the gateway, not yet settled with the bank.
    Pending,
    Processed,
    Failed,
}

/// A refund as the gateway records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRefund {
    /// The gateway's refund id (`rfnd_…`).
    pub id: String,
    pub status: RefundStatus,
    pub amount_minor: i64,
}

/// A payment method the customer saved at the gateway for later charges
/// (Razorpay: a customer and its recurring token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMethod {
    pub customer_id: String,
    pub token_id: String,
    /// The customer's email and phone from the payment entity, which
    /// Razorpay's recurring-payment call requires.
    pub email: Option<String>,
    pub contact: Option<String>,
}

impl SavedMethod {
    pub fn new(customer_id: String, token_id: String) -> Self {
        Self { customer_id, token_id, email: None, contact: None }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    /// Timeout, connection failure, 5xx or 429: try again later.
    #[error("payment gateway unavailable: {message}")]
    Unavailable { message: String, retry_after: Option<Duration> },
    /// The gateway refused the request (4xx): retrying will not help.
    #[error("payment gateway refused the request ({code}): {message}")]
    Refused { code: String, message: String },
}

#[tonic::async_trait]
pub trait Gateway: Send + Sync + std::fmt::Debug {
    /// The gateway's name as callers see it ("sandbox", "razorpay"):
    /// CreateOrder hands it out beside the key id so a frontend knows which
    /// checkout widget to open.
    fn name(&self) -> &'static str;
    /// Public key id handed to the customer's checkout widget.
    fn key_id(&self) -> &str;
    /// Checks a payment signature. `order_id` must be the *stored* order id.
    fn payment_signature_valid(&self, order_id: &str, payment_id: &str, signature_hex: &str) -> bool;
    /// Checks a webhook signature over the raw body bytes.
    fn webhook_signature_valid(&self, body: &[u8], signature_hex: &str) -> bool;
    /// Creates an order. Called with no database connection held; a retry
    /// after a timeout must not leave two orders for one receipt.
    async fn create_order(&self, order: &NewOrder<'_>) -> Result<GatewayOrder, GatewayError>;
    /// The gateway's record of a payment, to confirm a capture's amount and
    /// currency against the order; `None` when the gateway keeps no records
    /// billing can read (the sandbox).
    async fn fetch_payment(&self, payment_id: &str) -> Result<Option<GatewayPayment>, GatewayError>;
    /// Refunds `amount_minor` (full or partial) of a captured payment.
    /// `refund_key` is billing's own id of the refund, sent along so the
    /// gateway's record names it (and, where the gateway supports it, so a
    /// retried call cannot refund twice). Not retried here: the caller
    /// retries with the same key.
    async fn refund(&self, payment_id: &str, amount_minor: i64, refund_key: &str) -> Result<GatewayRefund, GatewayError>;
    /// The refund of `payment_id` the gateway made under `refund_key`, if
    /// any: how billing learns the outcome of a refund whose answer it never
    /// got (docs/design.md, Invariants 22) before it asks again or records
    /// it FAILED. A read, safe to retry.
    async fn find_refund(&self, payment_id: &str, refund_key: &str) -> Result<Option<GatewayRefund>, GatewayError>;
    /// Charges a saved payment method for the gateway order `order_id`
    /// (created with `create_order` for this charge; one order takes one
    /// successful payment, which is what makes a retried charge safe).
    /// A declined charge is `Refused`; one whose method can never be charged
    /// again is `Refused` with code [`METHOD_UNUSABLE`].
    async fn charge_saved_method(
        &self,
        method: &SavedMethod,
        amount_minor: i64,
        currency: &str,
        order_id: &str,
        receipt: &str,
    ) -> Result<GatewayPayment, GatewayError>;
    /// The payments the gateway records against `order_id` (any state), so a
    /// charge whose outcome is unknown (a timeout or 5xx after the request
    /// may have reached the gateway) is found before a second one is tried.
    /// `None` when the gateway keeps no records billing can read.
    async fn payments_of_order(&self, order_id: &str) -> Result<Option<Vec<GatewayPayment>>, GatewayError>;
    /// Captures an authorized payment (auto-capture off or failed) for
    /// exactly `amount_minor`. A payment that is already captured is
    /// returned as it is (idempotent); any other state is `Refused`.
    async fn capture_payment(&self, payment_id: &str, amount_minor: i64, currency: &str) -> Result<GatewayPayment, GatewayError>;
    /// The gateway's customer for `user_id`, which a recurring mandate
    /// belongs to, created when needed and never one of another user's (a
    /// retry may create another one: the caller stores the first and keeps
    /// it); `None` when the gateway registers no mandates (the sandbox).
    async fn create_customer(&self, user_id: &str) -> Result<Option<String>, GatewayError>;
}

/// The idempotency key sent with the refund billing knows as `refund_key`
/// (Razorpay's `X-Refund-Idempotency` takes 10 or more of `[A-Za-z0-9_-]`).
/// Deterministic: a retry of one refund always sends the same key.
///
/// A refund id that met the rule earlier releases sent as it is (10..=128
/// of `[A-Za-z0-9_-]`) is still sent as it is, so that during a rolling
/// deploy an older replica and a newer one retrying the same PENDING refund
/// send the same key and Razorpay makes it once. Any other id (a short
/// caller id, reconciliation's `discrepancy:<id>`), which earlier releases
/// sent without a key, carries hex SHA-256 of it (40 characters).
pub fn refund_idempotency_key(refund_key: &str) -> String {
    let as_is =
        (10..=128).contains(&refund_key.len()) && refund_key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if as_is {
        return refund_key.to_owned();
    }
    use sha2::Digest;
    let digest = Sha256::digest(format!("billing-refund:{refund_key}").as_bytes());
    hex::encode(digest)[..40].to_owned()
}

/// Hex HMAC-SHA256 of `data` (payment and webhook signatures).
pub(crate) fn hmac_hex(secret: &str, data: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(data);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Constant-time comparison of two hex digests (case-insensitive).
pub(crate) fn hex_eq(expected_hex: &str, given_hex: &str) -> bool {
    let (Ok(a), Ok(b)) = (hex::decode(expected_hex), hex::decode(given_hex.trim().to_ascii_lowercase())) else {
        return false;
    };
    !a.is_empty() && a.len() == b.len() && bool::from(a.ct_eq(&b))
}
