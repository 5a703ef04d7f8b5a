//! Razorpay's REST API behind the gateway trait (`GATEWAY=razorpay`).
//!
//! Request and response shapes follow Razorpay's public API documentation:
//! - Orders, create: <https://razorpay.com/docs/api/orders/create>
//! - Orders, fetch all (the `receipt` filter): <https://razorpay.com/docs/api/orders/fetch-all>
//! - Payments, fetch with id: <https://razorpay.com/docs/api/payments/fetch-with-id>
//! - Refunds, create a normal refund: <https://razorpay.com/docs/api/refunds/create-normal>
//! - Refunds, idempotent request (`X-Refund-Idempotency`):
//!   <https://razorpay.com/docs/api/refunds/normal-refunds-idempotent>
//! - Refunds entity (statuses): <https://razorpay.com/docs/api/refunds/entity>
//! - Recurring payments for cards (<https://razorpay.com/docs/api/payments/recurring-payments/cards/>):
//!   create a customer (`POST /v1/customers`; see `create_customer` for what
//!   `fail_existing` matches on), the authorisation order (`POST
//!   /v1/orders` with `customer_id`, `method: card` and a `token` block of
//!   `max_amount`, `expire_at`, `frequency`), subsequent payments (a new
//!   order each time, then `POST /v1/payments/create/recurring` with
//!   `email`, `contact`, `customer_id`, `token`, `recurring: "1"`), and the
//!   token's state (`GET /v1/customers/:customer_id/tokens/:token_id`,
//!   `recurring_details.status`). For cards Razorpay sends the pre-debit
//!   notification itself and debits about 36 hours later, so a charge made
//!   now is captured (or fails) a day and a half later.
//! - Orders, fetch payments of an order (`GET /v1/orders/:id/payments`):
//!   <https://razorpay.com/docs/api/orders/fetch-payments>
//! - Payments, capture (`POST /v1/payments/:id/capture`):
//!   <https://razorpay.com/docs/api/payments/capture>
//! - Refunds of a payment (`count` up to 100, `skip`):
//!   <https://razorpay.com/docs/api/refunds/fetch-multiple-refund-payment>
//! - Recurring payments, create subsequent payments (`POST /v1/payments/create/recurring`):
//!   <https://razorpay.com/docs/api/payments/recurring-payments/cards/create-subsequent-payments>
//!
//! Every call: basic auth with the key id and key secret, JSON bodies,
//! amounts in the currency's minor unit (paise), one timeout per call
//! (`GATEWAY_TIMEOUT_MS`), no redirects followed (the credentials go to the
//! configured host only). Errors: a timeout, a connection failure, a 5xx, a
//! 408 or a 429 is `Unavailable` (429 and 503 carry the gateway's
//! Retry-After); a 409 (a request with the same idempotency key still in
//! progress) is `Unavailable` too; another 4xx is `Refused` with Razorpay's `error.code` and a
//! bounded description; a body that is not what the documentation shows is
//! `Unavailable` ("unexpected response"), never a panic. A recurring charge
//! refused for our credentials (401/403) is `Unavailable` instead: it says
//! nothing about the customer's mandate (`charge_saved_method`).
//!
//! Retries stay where the gateway makes them safe: fetching a payment is
//! retried a bounded number of times; creating an order is retried only
//! together with a look-up of the orders carrying our receipt, before the
//! first attempt and after every failed one, so a create that timed out but
//! reached Razorpay is found and reused instead of being made twice.
//! Refunds and recurring charges are not retried here (the caller retries
//! with the same refund key; a recurring charge is retried only after the
//! payments of its order were looked up, see `payments_of_order`).
use std::time::Duration;

use super::{Gateway, GatewayError, GatewayOrder, GatewayPayment, GatewayRefund, NewOrder, SavedMethod, hex_eq, hmac_hex};
use crate::config::GatewayConfig;

mod http;
mod orders;
mod recurring;
mod refunds;
mod wire;

use orders::payment;
use wire::{Collection, PaymentEntity, check_id};

/// Attempts of an idempotent read (fetching a payment, looking orders up).
const READ_ATTEMPTS: u32 = 2;
/// Create-order attempts, each followed by a look-up by receipt on failure.
const CREATE_ATTEMPTS: u32 = 2;
/// Pause between attempts.
const BACKOFF: Duration = Duration::from_millis(200);
/// Longest Retry-After passed on (a larger one is clamped).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Pause asked of callers after a 429 without Retry-After.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(1);
/// Longest description of a refusal passed on to callers.
const MAX_DESCRIPTION: usize = 200;
/// Longest error code passed on.
const MAX_CODE: usize = 64;
/// Largest response body read; anything longer is an unexpected response.
const MAX_BODY: usize = 1 << 20;
/// Razorpay's limit on `receipt`.
const MAX_RECEIPT: usize = 40;
/// Razorpay's limit on a customer's `name` (we send the user id).
const MAX_CUSTOMER_NAME: usize = 50;
/// How often a card mandate may be debited: once per billing period.
fn mandate_frequency(period: crate::plans::Period) -> &'static str {
    match period {
        crate::plans::Period::Monthly => "monthly",
        crate::plans::Period::Yearly => "yearly",
    }
}
/// Refunds per page of a payment's refund list (Razorpay's maximum `count`).
const REFUND_PAGE: usize = 100;
/// Pages read before a look-up gives up.
const MAX_REFUND_PAGES: usize = 10;

pub struct Razorpay {
    /// None when the HTTP client could not be built (then every call is
    /// `Unavailable`; the reason was logged once).
    http: Option<reqwest::Client>,
    /// `GATEWAY_API_BASE_URL` without a trailing slash.
    base: String,
    config: GatewayConfig,
}

impl std::fmt::Debug for Razorpay {
    // Never print the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Razorpay")
            .field("base_url", &self.base)
            .field("key_id", &self.config.key_id)
            .field("timeout", &self.config.timeout)
            .finish_non_exhaustive()
    }
}

/// Razorpay's error body: `{"error": {"code": …, "description": …, …}}`.
impl Razorpay {
    pub fn new(config: GatewayConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("billing-svc/", env!("CARGO_PKG_VERSION")))
            .build();
        let http = match http {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client for Razorpay; every gateway call will be UNAVAILABLE");
                None
            }
        };
        let base = config.api_base_url.trim_end_matches('/').to_owned();
        Self { http, base, config }
    }
}

#[tonic::async_trait]
impl Gateway for Razorpay {
    fn name(&self) -> &'static str {
        "razorpay"
    }

    fn key_id(&self) -> &str {
        &self.config.key_id
    }

    /// Razorpay's checkout signature: hex HMAC-SHA256 of
    /// "order_id|payment_id" with the key secret.
    fn payment_signature_valid(&self, order_id: &str, payment_id: &str, signature_hex: &str) -> bool {
        hex_eq(&hmac_hex(self.config.key_secret.expose(), format!("{order_id}|{payment_id}").as_bytes()), signature_hex)
    }

    /// `X-Razorpay-Signature`: hex HMAC-SHA256 of the raw body with the
    /// webhook secret.
    fn webhook_signature_valid(&self, body: &[u8], signature_hex: &str) -> bool {
        hex_eq(&hmac_hex(self.config.webhook_secret.expose(), body), signature_hex)
    }

    async fn create_order(&self, order: &NewOrder<'_>) -> Result<GatewayOrder, GatewayError> {
        Razorpay::create_order(self, order).await
    }

    async fn fetch_payment(&self, payment_id: &str) -> Result<Option<GatewayPayment>, GatewayError> {
        check_id("payment id", payment_id)?;
        self.get_payment(payment_id).await.map(Some)
    }

    async fn refund(&self, payment_id: &str, amount_minor: i64, refund_key: &str) -> Result<GatewayRefund, GatewayError> {
        Razorpay::refund(self, payment_id, amount_minor, refund_key).await
    }

    async fn find_refund(&self, payment_id: &str, refund_key: &str) -> Result<Option<GatewayRefund>, GatewayError> {
        Razorpay::find_refund(self, payment_id, refund_key).await
    }

    async fn charge_saved_method(
        &self,
        method: &SavedMethod,
        amount_minor: i64,
        currency: &str,
        order_id: &str,
        receipt: &str,
    ) -> Result<GatewayPayment, GatewayError> {
        Razorpay::charge_saved_method(self, method, amount_minor, currency, order_id, receipt).await
    }

    async fn payments_of_order(&self, order_id: &str) -> Result<Option<Vec<GatewayPayment>>, GatewayError> {
        check_id("order id", order_id)?;
        let found: Collection<PaymentEntity> = self.get(&format!("/v1/orders/{order_id}/payments"), &[]).await?;
        Ok(Some(found.items.into_iter().map(payment).collect()))
    }

    async fn capture_payment(&self, payment_id: &str, amount_minor: i64, currency: &str) -> Result<GatewayPayment, GatewayError> {
        Razorpay::capture_payment(self, payment_id, amount_minor, currency).await
    }

    async fn create_customer(&self, user_id: &str) -> Result<Option<String>, GatewayError> {
        Razorpay::create_customer(self, user_id).await
    }
}
