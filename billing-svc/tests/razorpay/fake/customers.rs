//! `POST /v1/customers` and `GET /v1/customers/:id/tokens/:id`.
use serde_json::{Value, json};

use super::{Fake, error_body};

impl Fake {
    pub(super) fn create_customer(&self, body: &Value) -> (u16, Value) {
        let Some(name) = body["name"].as_str() else {
            return (400, error_body("The name field is required."));
        };
        // Razorpay matches an existing customer on email and contact
        // (the name need not be unique): a request with neither
        // matches nobody.
        let identified = !body["email"].is_null() || !body["contact"].is_null();
        let existing = self
            .customers
            .lock()
            .unwrap()
            .iter()
            .find(|c| identified && c["email"] == body["email"] && c["contact"] == body["contact"])
            .cloned();
        match existing {
            Some(c) if body["fail_existing"] == "0" => (200, c),
            Some(_) => (400, error_body("Customer already exists for the merchant")),
            None => {
                let c = json!({
                    "id": self.id("cust"),
                    "entity": "customer",
                    "name": name,
                    "email": body["email"],
                    "contact": body["contact"],
                    "gstin": null,
                    "notes": body["notes"],
                    "created_at": 1_582_033_731,
                });
                self.customers.lock().unwrap().push(c.clone());
                (200, c)
            }
        }
    }

    pub(super) fn fetch_token(&self, customer: &str, token: &str) -> (u16, Value) {
        match self.tokens.lock().unwrap().get(token).filter(|t| t["customer_id"] == *customer) {
            Some(t) => (200, t.clone()),
            None => (400, error_body("The id provided does not exist")),
        }
    }
}
