//! `POST /v1/orders`, `GET /v1/orders?receipt=`, `GET /v1/orders/:id/payments`.
use serde_json::{Value, json};

use super::{Fake, error_body};

impl Fake {
    pub(super) fn create_order(&self, body: &Value) -> (u16, Value) {
        let (Some(amount), Some(currency), Some(receipt)) =
            (body["amount"].as_i64(), body["currency"].as_str(), body["receipt"].as_str())
        else {
            return (400, error_body("amount, currency and receipt are required"));
        };
        if amount < 100 {
            return (400, error_body("The amount must be at least INR 1.00"));
        }
        if currency.len() != 3 || receipt.len() > 40 || !body["notes"].is_object() {
            return (400, error_body("invalid currency, receipt or notes"));
        }
        // The authorisation order of a card mandate.
        if !body["token"].is_null() {
            let t = &body["token"];
            let customer_known =
                body["customer_id"].as_str().is_some_and(|c| self.customers.lock().unwrap().iter().any(|k| k["id"] == c));
            if !customer_known || body["method"] != "card" {
                return (400, error_body("customer_id of an existing customer and method card are required"));
            }
            let frequencies = ["weekly", "monthly", "yearly", "as_presented"];
            if t["max_amount"].as_i64().is_none_or(|m| m < amount)
                || t["expire_at"].as_i64().is_none()
                || !t["frequency"].as_str().is_some_and(|f| frequencies.contains(&f))
            {
                return (400, error_body("token.max_amount, token.expire_at and token.frequency are invalid"));
            }
        }
        let order = json!({
            "id": self.id("order"),
            "entity": "order",
            "amount": amount,
            "amount_paid": 0,
            "amount_due": amount,
            "currency": currency,
            "receipt": receipt,
            "offer_id": null,
            "status": "created",
            "attempts": 0,
            "notes": body["notes"],
            "created_at": 1_582_628_071 + self.orders.lock().unwrap().len(),
            "customer_id": body["customer_id"],
            "method": body["method"],
            "token": body["token"],
        });
        self.orders.lock().unwrap().push(order.clone());
        (200, order)
    }

    pub(super) fn list_orders(&self, query: &str) -> (u16, Value) {
        let receipt = query.split('&').find_map(|kv| kv.strip_prefix("receipt=")).unwrap_or_default();
        let items: Vec<Value> = self.orders_with_receipt(receipt);
        (200, json!({ "entity": "collection", "count": items.len(), "items": items }))
    }

    pub(super) fn order_payments(&self, id: &str) -> (u16, Value) {
        let items = self.payments_of(id);
        (200, json!({ "entity": "collection", "count": items.len(), "items": items }))
    }
}
