//! Orders and payments: creating an order (found again by receipt rather than
//! made twice), fetching, listing and capturing payments.

use reqwest::Method;
use serde_json::json;

use super::wire::{Collection, OrderEntity, PaymentEntity, bounded, check_id, payment_status, unavailable};
use super::{BACKOFF, CREATE_ATTEMPTS, MAX_RECEIPT, Razorpay, mandate_frequency};
use crate::gateway::{GatewayError, GatewayOrder, GatewayPayment, NewOrder, PaymentStatus, SavedMethod};

impl Razorpay {
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
                "frequency": mandate_frequency(m.period),
            });
        }
        let created: OrderEntity = self.call(Method::POST, "/v1/orders", &[], Some(&body), &[]).await?;
        if created.amount != order.amount_minor || !created.currency.eq_ignore_ascii_case(order.currency) {
            return Err(unavailable("POST /v1/orders: the created order's amount or currency differs from the request", None));
        }
        Ok(GatewayOrder { id: created.id })
    }

    pub(super) async fn get_payment(&self, payment_id: &str) -> Result<GatewayPayment, GatewayError> {
        let p: PaymentEntity = self.get(&format!("/v1/payments/{payment_id}"), &[]).await?;
        Ok(payment(p))
    }

    pub(super) async fn create_order(&self, order: &NewOrder<'_>) -> Result<GatewayOrder, GatewayError> {
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

    pub(super) async fn capture_payment(
        &self,
        payment_id: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<GatewayPayment, GatewayError> {
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
}

/// A payment entity as billing sees it; the saved method carries the
/// customer's email and contact, which later recurring charges must send.
pub(super) fn payment(p: PaymentEntity) -> GatewayPayment {
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
