//! `POST /v1/payments/:id/capture`, `GET /v1/payments/:id` and
//! `POST /v1/payments/create/recurring`.
use serde_json::{Value, json};

use super::{Fake, error_body};

impl Fake {
    pub(super) fn capture_payment(&self, id: &str, body: &Value) -> (u16, Value) {
        let mut payments = self.payments.lock().unwrap();
        let Some(p) = payments.get_mut(id) else {
            return (400, error_body("The id provided does not exist"));
        };
        if p["status"] != "authorized" {
            return (400, error_body("This payment has already been captured"));
        }
        if body["amount"] != p["amount"] || body["currency"] != p["currency"] {
            return (400, error_body("Capture amount must be equal to the amount authorized"));
        }
        p["status"] = json!("captured");
        p["captured"] = json!(true);
        (200, p.clone())
    }

    pub(super) fn fetch_payment(&self, id: &str) -> (u16, Value) {
        match self.payments.lock().unwrap().get(id) {
            Some(p) => (200, p.clone()),
            None => (400, error_body("The id provided does not exist")),
        }
    }

    pub(super) fn create_recurring_payment(&self, body: &Value) -> (u16, Value) {
        for field in ["order_id", "customer_id", "token", "currency", "email", "contact"] {
            if !body[field].is_string() {
                return (400, error_body(&format!("The {field} field is required.")));
            }
        }
        if body["recurring"] != "1" || body["amount"].as_i64().is_none_or(|a| a < 100) {
            return (400, error_body("recurring must be 1 and amount at least 100"));
        }
        let amount = body["amount"].as_i64().unwrap_or_default();
        let token = self.tokens.lock().unwrap().get(body["token"].as_str().unwrap_or_default()).cloned();
        match token {
            Some(t) if t["customer_id"] == body["customer_id"] && t["recurring_details"]["status"] == "confirmed" => {
                if t["max_amount"].as_i64().is_some_and(|m| amount > m) {
                    return (400, error_body("Amount exceeds the maximum amount allowed for the token"));
                }
            }
            _ => return (400, error_body("The token is invalid or not active")),
        }
        let id = self.id("pay");
        let order_id = body["order_id"].as_str().unwrap_or_default();
        self.add_payment(&id, order_id, amount, body["currency"].as_str().unwrap_or_default(), "captured");
        if let Some(p) = self.payments.lock().unwrap().get_mut(&id) {
            p["customer_id"] = body["customer_id"].clone();
            p["token_id"] = body["token"].clone();
            p["email"] = body["email"].clone();
            p["contact"] = body["contact"].clone();
            p["recurring"] = json!(true);
        }
        (
            200,
            json!({ "razorpay_payment_id": id, "razorpay_order_id": order_id, "razorpay_signature": "9ef4dffbfd84f1318f6739a3ce19f9d85851857ae648f114332d8401e0949a3d" }),
        )
    }
}
