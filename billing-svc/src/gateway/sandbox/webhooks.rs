//! Signatures and webhook bodies like Razorpay's, for tests and
//! `billing-svc sandbox pay` to send billing.

use super::Sandbox;
use crate::gateway::{RefundStatus, hmac_hex};

impl Sandbox {
    /// A `refund.processed` / `refund.failed` webhook body like Razorpay's,
    /// for the refund `gateway_refund_id` made under billing's `refund_key`.
    pub fn refund_event_body(
        status: RefundStatus,
        gateway_refund_id: &str,
        payment_id: &str,
        amount_minor: i64,
        refund_key: &str,
    ) -> Vec<u8> {
        let (event, status) = match status {
            RefundStatus::Failed => ("refund.failed", "failed"),
            RefundStatus::Processed => ("refund.processed", "processed"),
            RefundStatus::Pending => ("refund.created", "pending"),
        };
        serde_json::json!({
            "entity": "event",
            "event": event,
            "payload": { "refund": { "entity": {
                "id": gateway_refund_id,
                "entity": "refund",
                "payment_id": payment_id,
                "amount": amount_minor,
                "notes": { "refund_key": refund_key },
                "status": status,
            }}}
        })
        .to_string()
        .into_bytes()
    }

    /// What the gateway hands the customer after a successful payment.
    pub fn sign_payment(&self, order_id: &str, payment_id: &str) -> String {
        hmac_hex(self.config.key_secret.expose(), format!("{order_id}|{payment_id}").as_bytes())
    }

    /// The `X-Razorpay-Signature` of a webhook body.
    pub fn sign_webhook(&self, body: &[u8]) -> String {
        hmac_hex(self.config.webhook_secret.expose(), body)
    }

    /// A `payment.captured` webhook body like Razorpay's.
    pub fn captured_event_body(order_id: &str, payment_id: &str, amount_minor: i64, currency: &str) -> Vec<u8> {
        Self::captured_event_body_saving(order_id, payment_id, amount_minor, currency, None)
    }

    /// Like [`Sandbox::captured_event_body`]; with `saved` = (customer id,
    /// token id), the payment also saved a card for recurring charges (the
    /// way Razorpay reports a recurring-enabled first payment).
    pub fn captured_event_body_saving(
        order_id: &str,
        payment_id: &str,
        amount_minor: i64,
        currency: &str,
        saved: Option<(&str, &str)>,
    ) -> Vec<u8> {
        let mut body = serde_json::json!({
            "entity": "event",
            "event": "payment.captured",
            "payload": { "payment": { "entity": {
                "id": payment_id,
                "order_id": order_id,
                "amount": amount_minor,
                "currency": currency,
                "status": "captured",
            }}}
        });
        if let Some((customer, token)) = saved {
            body["payload"]["payment"]["entity"]["customer_id"] = customer.into();
            body["payload"]["payment"]["entity"]["token_id"] = token.into();
        }
        body.to_string().into_bytes()
    }

    /// A `payment.authorized` webhook body like Razorpay's (auto-capture off
    /// or failed: the payment waits for a capture).
    pub fn authorized_event_body(order_id: &str, payment_id: &str, amount_minor: i64, currency: &str) -> Vec<u8> {
        serde_json::json!({
            "entity": "event",
            "event": "payment.authorized",
            "contains": ["payment"],
            "payload": { "payment": { "entity": {
                "id": payment_id,
                "entity": "payment",
                "order_id": order_id,
                "amount": amount_minor,
                "currency": currency,
                "status": "authorized",
                "captured": false,
            }}}
        })
        .to_string()
        .into_bytes()
    }

    /// A `token.*` webhook body like Razorpay's recurring-token events
    /// (`event` is e.g. `token.cancelled`).
    pub fn token_event_body(event: &str, customer_id: &str, token_id: &str) -> Vec<u8> {
        let status = event.strip_prefix("token.").unwrap_or(event);
        serde_json::json!({
            "entity": "event",
            "event": event,
            "contains": ["token"],
            "payload": { "token": { "entity": {
                "id": token_id,
                "entity": "token",
                "customer_id": customer_id,
                "method": "card",
                "recurring": true,
                "recurring_details": { "status": status, "failure_reason": null },
            }}}
        })
        .to_string()
        .into_bytes()
    }
}
