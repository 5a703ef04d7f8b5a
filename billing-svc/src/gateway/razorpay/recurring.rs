//! Recurring card payments: customers, the token's mandate state, and the
//! recurring charge of a saved method.

use reqwest::Method;
use serde_json::json;

use super::http::{Failure, does_not_exist};
use super::wire::{CustomerEntity, RecurringAnswer, TokenEntity, bounded, check_id, unavailable};
use super::{MAX_CUSTOMER_NAME, Razorpay};
use crate::gateway::{GatewayError, GatewayPayment, METHOD_UNUSABLE, PaymentStatus, SavedMethod};

impl Razorpay {
    pub(super) async fn charge_saved_method(
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

    pub(super) async fn create_customer(&self, user_id: &str) -> Result<Option<String>, GatewayError> {
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

/// Names a user exactly in the customer's notes: hex SHA-256 of the user id,
/// 40 characters (user ids may be longer than a note or a name allows).
fn customer_key(user_id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("billing-customer:{user_id}").as_bytes()))[..40].to_owned()
}
