//! `GET /v1/payments/:id/refunds` and `POST /v1/payments/:id/refund`.
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{Fake, error_body};

impl Fake {
    pub(super) fn list_refunds(&self, id: &str, query: &str) -> (u16, Value) {
        let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<usize>().ok());
        let (count, skip) = (param("count").unwrap_or(10), param("skip").unwrap_or(0));
        if count > 100 {
            return (400, error_body("The count may not be greater than 100."));
        }
        let items: Vec<Value> = self.refunds_of(id).into_iter().skip(skip).take(count).collect();
        (200, json!({ "entity": "collection", "count": items.len(), "items": items }))
    }

    pub(super) fn create_refund(&self, id: &str, headers: &HeaderMap, body: &Value) -> (u16, Value) {
        let Some(payment) = self.payments.lock().unwrap().get(id).cloned() else {
            return (400, error_body("The id provided does not exist"));
        };
        // https://razorpay.com/docs/api/refunds/normal-refunds-idempotent
        let key = headers.get("x-refund-idempotency").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Some(key) = &key {
            if key.len() < 10 || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return (400, error_body("The idempotency key is invalid."));
            }
            if let Some((first_body, refund)) = self.refund_keys.lock().unwrap().get(key) {
                if first_body != body {
                    return (400, error_body("Different request with the same idempotency key has already been processed."));
                }
                return (200, refund.clone());
            }
        }
        let refunded: i64 = self.refunds_of(id).iter().filter_map(|r| r["amount"].as_i64()).sum();
        let Some(amount) = body["amount"].as_i64() else {
            return (400, error_body("The amount must be an integer."));
        };
        if amount <= 0 || amount + refunded > payment["amount"].as_i64().unwrap_or_default() {
            return (400, error_body("The refund amount provided is greater than amount captured"));
        }
        let status = self.refund_status.lock().unwrap().unwrap_or("processed");
        let refund = json!({
            "id": self.id("rfnd"),
            "entity": "refund",
            "amount": amount,
            "currency": payment["currency"],
            "payment_id": id,
            "notes": body["notes"],
            "receipt": body["receipt"],
            "acquirer_data": { "arn": null },
            "created_at": 1_597_078_866,
            "batch_id": null,
            "status": status,
            "speed_processed": "normal",
            "speed_requested": body["speed"],
        });
        self.refunds.lock().unwrap().push(refund.clone());
        if let Some(key) = key {
            self.refund_keys.lock().unwrap().insert(key, (body.clone(), refund.clone()));
        }
        (200, refund)
    }
}
