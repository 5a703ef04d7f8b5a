//! Razorpay's REST API behind the gateway trait (`GATEWAY=razorpay`).
//!
//! Request and response shapes follow Razorpay's public API documentation:
//! - Orders, create: https://razorpay.com/docs/api/orders/create
//! - Orders, fetch all (the `receipt` filter): https://razorpay.com/docs/api/orders/fetch-all
//! - Payments, fetch with id: https://razorpay.com/docs/api/payments/fetch-with-id
//! - Refunds, create a normal refund: https://razorpay.com/docs/api/refunds/create-normal
//! - Refunds, idempotent request (`X-Refund-Idempotency`):
//!   https://razorpay.com/docs/api/refunds/normal-refunds-idempotent
//! - Refunds entity (statuses): https://razorpay.com/docs/api/refunds/entity
//! - Recurring payments for cards (https://razorpay.com/docs/api/payments/recurring-payments/cards/):
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
//!   https://razorpay.com/docs/api/orders/fetch-payments
//! - Payments, capture (`POST /v1/payments/:id/capture`):
//!   https://razorpay.com/docs/api/payments/capture
//! - Refunds of a payment (`count` up to 100, `skip`):
//!   https://razorpay.com/docs/api/refunds/fetch-multiple-refund-payment
//! - Recurring payments, create subsequent payments (`POST /v1/payments/create/recurring`):
//!   https://razorpay.com/docs/api/payments/recurring-payments/cards/create-subsequent-payments
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

use reqwest::{Method, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{
    Gateway, GatewayError, GatewayOrder, GatewayPayment, GatewayRefund, METHOD_UNUSABLE, NewOrder, PaymentStatus, SavedMethod,
    hex_eq, hmac_hex, refund_idempotency_key,
};
use crate::config::GatewayConfig;

mod wire;

use wire::{
    Collection, CustomerEntity, ErrorBody, ErrorDetail, OrderEntity, PaymentEntity, RecurringAnswer, RefundEntity, TokenEntity,
    bounded, check_id, payment_status, read_body, refund_status, retry_after, transport_error, unavailable, unexpected,
};

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
/// How often a card mandate may be debited: once per monthly period.
const MANDATE_FREQUENCY: &str = "monthly";
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

    /// One HTTP exchange: the parsed 2xx body, or the error it maps to.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Result<T, GatewayError> {
        self.exchange(method, path, query, body, headers).await.map_err(|f| f.error)
    }

    /// Like `call`, keeping the HTTP status Razorpay answered with, for the
    /// callers that must tell "this does not exist" from "we are not let in".
    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Result<T, Failure> {
        let Some(http) = &self.http else {
            return Err(Failure::no_answer(unavailable("no HTTP client", None)));
        };
        let mut req = http
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth(&self.config.key_id, Some(self.config.key_secret.expose()))
            .header(header::ACCEPT, "application/json");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(|e| Failure::no_answer(transport_error(&method, path, &e)))?;
        let status = resp.status();
        let answered = |error| Failure { status: Some(status), error };
        let retry_after = retry_after(resp.headers());
        let bytes = read_body(resp).await.map_err(|e| answered(transport_error(&method, path, &e)))?;
        let Some(bytes) = bytes else {
            return Err(answered(unexpected(&method, path, status)));
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|_| answered(unexpected(&method, path, status)));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Always with a pause, so that no layer retries a throttled call at once.
            let pause = retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
            return Err(answered(unavailable(&format!("{method} {path}: rate limited (429)"), Some(pause))));
        }
        if status == StatusCode::CONFLICT {
            // Razorpay's answer while a request with the same idempotency
            // key is still being processed: the outcome is not known yet,
            // so it is never a refusal (docs/design.md, Invariants 22).
            let pause = retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
            return Err(answered(unavailable(
                &format!("{method} {path}: a request with this key is in progress (409)"),
                Some(pause),
            )));
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Err(answered(unavailable(&format!("{method} {path}: answered {}", status.as_u16()), retry_after)));
        }
        if status.is_client_error() {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(ErrorBody { error: ErrorDetail { code, description } }) => (
                    code.filter(|c| !c.is_empty()).unwrap_or_else(|| format!("HTTP_{}", status.as_u16())),
                    description.unwrap_or_default(),
                ),
                Err(_) => (format!("HTTP_{}", status.as_u16()), "unexpected response".to_owned()),
            };
            if status == StatusCode::UNAUTHORIZED {
                tracing::error!(path, "Razorpay refused our credentials (401): check GATEWAY_KEY_ID and GATEWAY_KEY_SECRET");
            }
            return Err(answered(GatewayError::Refused {
                code: bounded(&code, MAX_CODE),
                message: bounded(&message, MAX_DESCRIPTION),
            }));
        }
        Err(answered(unexpected(&method, path, status)))
    }

    /// An idempotent GET, retried a bounded number of times when the gateway
    /// is unavailable (not when it throttles: that is passed on at once).
    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, GatewayError> {
        self.get_answered(path, query).await.map_err(|f| f.error)
    }

    /// `get`, keeping the HTTP status of the last answer.
    async fn get_answered<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, Failure> {
        let mut attempt = 1;
        loop {
            match self.exchange(Method::GET, path, query, None, &[]).await {
                Err(Failure { error: GatewayError::Unavailable { retry_after: None, .. }, .. }) if attempt < READ_ATTEMPTS => {
                    tokio::time::sleep(BACKOFF * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The oldest order carrying exactly this receipt, amount and currency.
    async fn find_order(&self, order: &NewOrder<'_>) -> Result<Option<GatewayOrder>, GatewayError> {
        let found: Collection<OrderEntity> = self.get("/v1/orders", &[("receipt", order.receipt)]).await?;
        Ok(found
            .items
            .into_iter()
            .filter(|o| {
                o.receipt.as_deref() == Some(order.receipt)
                    && o.amount == order.amount_minor
                    && o.currency.eq_ignore_ascii_case(order.currency)
            })
            .min_by_key(|o| o.created_at)
            .map(|o| GatewayOrder { id: o.id }))
    }

    async fn post_order(&self, order: &NewOrder<'_>) -> Result<GatewayOrder, GatewayError> {
        let mut body = json!({
            "amount": order.amount_minor,
            "currency": order.currency,
            "receipt": order.receipt,
            "payment_capture": true,
            "notes": {
                "checkout_session_id": order.receipt,
                "user_id": order.user_id,
                "plan_id": order.plan_id,
            },
        });
        // The authorisation order of a card mandate: the customer's first
        // payment also registers the token later renewals charge.
        if let Some(m) = &order.mandate {
            body["customer_id"] = json!(m.customer_id);
            body["method"] = json!("card");
            body["token"] = json!({
                "max_amount": m.max_amount_minor,
                "expire_at": m.expire_at,
                "frequency": MANDATE_FREQUENCY,
            });
        }
        let created: OrderEntity = self.call(Method::POST, "/v1/orders", &[], Some(&body), &[]).await?;
        if created.amount != order.amount_minor || !created.currency.eq_ignore_ascii_case(order.currency) {
            return Err(unavailable("POST /v1/orders: the created order's amount or currency differs from the request", None));
        }
        Ok(GatewayOrder { id: created.id })
    }

    async fn get_payment(&self, payment_id: &str) -> Result<GatewayPayment, GatewayError> {
        let p: PaymentEntity = self.get(&format!("/v1/payments/{payment_id}"), &[]).await?;
        Ok(payment(p))
    }

    /// What Razorpay says of the token's mandate, asked after it refused a
    /// charge, to tell a declined debit (retried on schedule) from a mandate
    /// that is gone. Only Razorpay's own word makes it gone: a cancelled,
    /// rejected or paused mandate, a past `expired_at`, or a token it does not
    /// know (404, or its documented "does not exist"). A check that fails
    /// (our key refused, throttled, 5xx, a timeout) or a state this code does
    /// not know proves nothing (docs/design.md, Invariant 29).
    async fn mandate_state(&self, method: &SavedMethod) -> Mandate {
        if check_id("customer id", &method.customer_id).is_err() || check_id("token id", &method.token_id).is_err() {
            return Mandate::Unknown;
        }
        let path = format!("/v1/customers/{}/tokens/{}", method.customer_id, method.token_id);
        let t: TokenEntity = match self.get_answered(&path, &[]).await {
            Ok(t) => t,
            Err(f) if does_not_exist(&f) => return Mandate::Gone("Razorpay does not know the token".into()),
            Err(f) => {
                tracing::warn!(token_id = %method.token_id, error = %f.error, "the recurring token's state could not be read");
                return Mandate::Unknown;
            }
        };
        let status = t.recurring_details.and_then(|d| d.status).unwrap_or_default();
        if ["cancelled", "rejected", "paused"].contains(&status.as_str()) {
            return Mandate::Gone(format!("the mandate is {status}"));
        }
        if t.expired_at.is_some_and(|at| at > 0 && at <= chrono::Utc::now().timestamp()) {
            return Mandate::Gone("the token has expired".into());
        }
        Mandate::Unknown
    }
}

/// What the token check found out ([`Razorpay::mandate_state`]).
enum Mandate {
    /// Razorpay says the mandate can never be charged again (why).
    Gone(String),
    /// Confirmed, in another state, or not known: the refusal stands as it is.
    Unknown,
}

/// A failed exchange: the error, and the HTTP status when Razorpay answered.
struct Failure {
    status: Option<StatusCode>,
    error: GatewayError,
}

impl Failure {
    fn no_answer(error: GatewayError) -> Self {
        Failure { status: None, error }
    }

    /// Razorpay refused our credentials (401, 403): nothing is known about
    /// the request itself.
    fn credentials_refused(&self) -> bool {
        matches!(self.status, Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
    }
}

/// Razorpay says the entity does not exist: a 404, or the 400 its API
/// documents for an unknown id ("The id provided does not exist").
fn does_not_exist(f: &Failure) -> bool {
    match (&f.error, f.status) {
        (GatewayError::Refused { .. }, Some(StatusCode::NOT_FOUND)) => true,
        (GatewayError::Refused { message, .. }, Some(StatusCode::BAD_REQUEST)) => {
            message.to_ascii_lowercase().contains("does not exist")
        }
        _ => false,
    }
}

/// A payment entity as billing sees it; the saved method carries the
/// customer's email and contact, which later recurring charges must send.
fn payment(p: PaymentEntity) -> GatewayPayment {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    GatewayPayment {
        id: p.id,
        order_id: nonempty(p.order_id),
        status: payment_status(&p.status),
        amount_minor: p.amount,
        currency: p.currency,
        saved_method: match (nonempty(p.customer_id), nonempty(p.token_id)) {
            (Some(customer_id), Some(token_id)) => Some(SavedMethod {
                customer_id,
                token_id,
                email: nonempty(p.email).map(|e| bounded(&e, 254)),
                contact: nonempty(p.contact).map(|c| bounded(&c, 32)),
            }),
            _ => None,
        },
    }
}

#[tonic::async_trait]
impl Gateway for Razorpay {
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
        if order.receipt.is_empty() || order.receipt.len() > MAX_RECEIPT {
            return Err(GatewayError::Refused {
                code: "BAD_REQUEST_ERROR".into(),
                message: format!("receipt must be 1 to {MAX_RECEIPT} characters"),
            });
        }
        if let Some(existing) = self.find_order(order).await? {
            return Ok(existing);
        }
        let mut attempt = 1;
        loop {
            let failure = match self.post_order(order).await {
                Ok(created) => return Ok(created),
                // Refused, or throttled: nothing was created, and hammering a
                // throttling gateway helps nobody.
                Err(e @ (GatewayError::Refused { .. } | GatewayError::Unavailable { retry_after: Some(_), .. })) => {
                    return Err(e);
                }
                Err(e) => e,
            };
            // The attempt may have reached the gateway (a timeout, a reset, a
            // 5xx after the write): look before creating again.
            tokio::time::sleep(BACKOFF * attempt).await;
            if let Some(existing) = self.find_order(order).await? {
                tracing::info!(receipt = order.receipt, order_id = %existing.id, "reusing the order a failed create left at Razorpay");
                return Ok(existing);
            }
            if attempt >= CREATE_ATTEMPTS {
                return Err(failure);
            }
            attempt += 1;
        }
    }

    async fn fetch_payment(&self, payment_id: &str) -> Result<Option<GatewayPayment>, GatewayError> {
        check_id("payment id", payment_id)?;
        self.get_payment(payment_id).await.map(Some)
    }

    async fn refund(&self, payment_id: &str, amount_minor: i64, refund_key: &str) -> Result<GatewayRefund, GatewayError> {
        check_id("payment id", payment_id)?;
        let mut body = json!({
            "amount": amount_minor,
            "speed": "normal",
            "notes": { "refund_key": refund_key },
        });
        if !refund_key.is_empty() && refund_key.len() <= MAX_RECEIPT {
            body["receipt"] = json!(refund_key);
        }
        // Always sent, billing's refund id or derived from it (see
        // refund_idempotency_key), so that a retried refund (same key, same
        // body) is never made twice at Razorpay.
        let key = refund_idempotency_key(refund_key);
        let r: RefundEntity = self
            .call(
                Method::POST,
                &format!("/v1/payments/{payment_id}/refund"),
                &[],
                Some(&body),
                &[("X-Refund-Idempotency", key.as_str())],
            )
            .await?;
        Ok(GatewayRefund { id: r.id, status: refund_status(&r.status), amount_minor: r.amount })
    }

    /// `GET /v1/payments/:id/refunds`, page by page, for the refund whose
    /// `notes.refund_key` is billing's refund id.
    async fn find_refund(&self, payment_id: &str, refund_key: &str) -> Result<Option<GatewayRefund>, GatewayError> {
        check_id("payment id", payment_id)?;
        let path = format!("/v1/payments/{payment_id}/refunds");
        for page in 0..MAX_REFUND_PAGES {
            let skip = (page * REFUND_PAGE).to_string();
            let count = REFUND_PAGE.to_string();
            let found: Collection<RefundEntity> = self.get(&path, &[("count", &count), ("skip", &skip)]).await?;
            let last = found.items.len() < REFUND_PAGE;
            if let Some(r) = found.items.into_iter().find(|r| r.refund_key() == Some(refund_key)) {
                return Ok(Some(GatewayRefund { id: r.id, status: refund_status(&r.status), amount_minor: r.amount }));
            }
            if last {
                return Ok(None);
            }
        }
        // More refunds of one payment than billing ever makes: not a
        // "none" billing could act on.
        Err(unavailable(&format!("GET {path}: more than {} refunds", MAX_REFUND_PAGES * REFUND_PAGE), None))
    }

    async fn charge_saved_method(
        &self,
        method: &SavedMethod,
        amount_minor: i64,
        currency: &str,
        order_id: &str,
        receipt: &str,
    ) -> Result<GatewayPayment, GatewayError> {
        check_id("order id", order_id)?;
        // Razorpay requires both; without them every charge would be a 400,
        // retried until the subscription expires.
        let (Some(email), Some(contact)) = (&method.email, &method.contact) else {
            return Err(GatewayError::Refused {
                code: METHOD_UNUSABLE.into(),
                message: "the saved method has no email or contact, which a recurring payment requires".into(),
            });
        };
        let body = json!({
            "email": email,
            "contact": contact,
            "amount": amount_minor,
            "currency": currency,
            "order_id": order_id,
            "customer_id": method.customer_id,
            "token": method.token_id,
            "recurring": "1",
            "description": "subscription renewal",
            "notes": { "receipt": receipt },
        });
        let answer: RecurringAnswer = match self
            .exchange(Method::POST, "/v1/payments/create/recurring", &[], Some(&body), &[])
            .await
        {
            Ok(a) => a,
            // Our key refused (rotated, misconfigured): says nothing of
            // the mandate. Retried on schedule; the 401 is logged as an
            // error for the operator.
            Err(f) if f.credentials_refused() => {
                let status = f.status.map_or(0, |s| s.as_u16());
                return Err(unavailable(&format!("POST /v1/payments/create/recurring: credentials refused ({status})"), None));
            }
            Err(Failure { error: GatewayError::Refused { code, message }, .. }) => {
                // A declined debit is retried on schedule; a mandate that
                // Razorpay says is gone never is.
                return Err(match self.mandate_state(method).await {
                    Mandate::Gone(why) => {
                        GatewayError::Refused { code: METHOD_UNUSABLE.into(), message: format!("{why} ({code}: {message})") }
                    }
                    Mandate::Unknown => GatewayError::Refused { code, message },
                });
            }
            Err(f) => return Err(f.error),
        };
        let Some(payment_id) = answer.razorpay_payment_id.or(answer.id).filter(|id| check_id("payment id", id).is_ok()) else {
            return Err(unavailable("POST /v1/payments/create/recurring: unexpected response", None));
        };
        // The charge exists now; its state is read back. When that read
        // fails the payment is reported as created (not yet captured): its
        // webhook or a later fetch tells the outcome.
        match self.get_payment(&payment_id).await {
            Ok(p) => Ok(p),
            Err(e) => {
                tracing::warn!(payment_id, error = %e, "recurring payment created; its state could not be read back");
                Ok(GatewayPayment {
                    id: payment_id,
                    order_id: Some(order_id.to_owned()),
                    status: PaymentStatus::Created,
                    amount_minor,
                    currency: currency.to_owned(),
                    saved_method: None,
                })
            }
        }
    }

    async fn payments_of_order(&self, order_id: &str) -> Result<Option<Vec<GatewayPayment>>, GatewayError> {
        check_id("order id", order_id)?;
        let found: Collection<PaymentEntity> = self.get(&format!("/v1/orders/{order_id}/payments"), &[]).await?;
        Ok(Some(found.items.into_iter().map(payment).collect()))
    }

    async fn capture_payment(&self, payment_id: &str, amount_minor: i64, currency: &str) -> Result<GatewayPayment, GatewayError> {
        check_id("payment id", payment_id)?;
        let body = json!({ "amount": amount_minor, "currency": currency });
        match self.call::<PaymentEntity>(Method::POST, &format!("/v1/payments/{payment_id}/capture"), &[], Some(&body), &[]).await
        {
            Ok(p) => Ok(payment(p)),
            // Captured already (an earlier call whose answer was lost, or
            // auto-capture after all): the payment as it is, if so. Only
            // Razorpay's record saying it is not captured makes this a
            // refusal; a look-up that fails leaves the outcome unknown, so
            // the caller retries (docs/design.md, Invariants 28).
            Err(refused @ GatewayError::Refused { .. }) => match self.get_payment(payment_id).await {
                Ok(p) if p.status == PaymentStatus::Captured => Ok(p),
                Ok(_) => Err(refused),
                Err(e) => {
                    tracing::warn!(payment_id, error = %e, "capture refused; whether the payment is captured could not be read");
                    Err(unavailable(
                        &format!("capture of {payment_id} refused ({refused}) and its state could not be read ({e})"),
                        None,
                    ))
                }
            },
            // A timeout may have captured it: the caller retries, and the
            // retry finds it captured.
            Err(e) => Err(e),
        }
    }

    async fn create_customer(&self, user_id: &str) -> Result<Option<String>, GatewayError> {
        // Razorpay finds an existing customer (`fail_existing: "0"`) by email
        // and contact; the name need not be unique. None is sent, so no
        // other user's customer can match: a retried create (its answer
        // lost) makes a second customer, which is harmless because the
        // first id stored in `gateway_customers` wins and the other never
        // gets a token. `user_key` names the user exactly (the name and
        // `user_id` are bounded), and a customer answered without ours is
        // never used: another user's saved cards must never be reachable.
        let key = customer_key(user_id);
        let body = json!({
            "name": bounded(user_id, MAX_CUSTOMER_NAME),
            "fail_existing": "0",
            "notes": { "user_id": bounded(user_id, 256), "user_key": key },
        });
        let c: CustomerEntity = self.call(Method::POST, "/v1/customers", &[], Some(&body), &[]).await?;
        check_id("customer id", &c.id).map_err(|_| unavailable("POST /v1/customers: unexpected customer id", None))?;
        if c.notes.get("user_key").and_then(serde_json::Value::as_str) != Some(key.as_str()) {
            tracing::error!(user_id, customer_id = %c.id, "Razorpay answered with a customer that is not this user's; not used");
            return Err(GatewayError::Refused {
                code: "CUSTOMER_MISMATCH".into(),
                message: "the gateway answered with another user's customer".into(),
            });
        }
        Ok(Some(c.id))
    }
}

/// Names a user exactly in the customer's notes: hex SHA-256 of the user id,
/// 40 characters (user ids may be longer than a note or a name allows).
fn customer_key(user_id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("billing-customer:{user_id}").as_bytes()))[..40].to_owned()
}
