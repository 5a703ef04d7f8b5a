//! A fake Razorpay on 127.0.0.1:0: routes, scripted failures, what it saw,
//! and the small builders the tests share.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod customers;
mod orders;
mod payments;
mod refunds;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use billing_svc::{
    config::{GatewayConfig, GatewayKind},
    gateway::{GatewayError, NewOrder, Razorpay, SavedMethod},
};
use serde_json::{Value, json};

pub const KEY_ID: &str = "rzp_test_1DP5mmOlF5G5ag";
pub const KEY_SECRET: &str = "thisisthekeysecretvalue";
pub const WEBHOOK_SECRET: &str = "thisisthewebhooksecret";
pub const TIMEOUT: Duration = Duration::from_millis(300);

/// What the fake does with the next request to one `METHOD /path`.
pub enum Script {
    /// Answer this status, Retry-After and body without doing anything.
    Answer(u16, Option<&'static str>, String),
    /// Do nothing and answer after this long (the request never "arrived").
    Stall(Duration),
    /// Do the work at once, answer after this long (the reply is lost).
    Slow(Duration),
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
pub struct Fake {
    pub orders: Mutex<Vec<Value>>,
    pub payments: Mutex<HashMap<String, Value>>,
    pub refunds: Mutex<Vec<Value>>,
    pub customers: Mutex<Vec<Value>>,
    /// Token entities by token id (recurring mandates registered).
    pub tokens: Mutex<HashMap<String, Value>>,
    /// `X-Refund-Idempotency` key -> (request body, refund made), as
    /// Razorpay keeps them: a retry with the same key and body gets the same
    /// refund back.
    pub refund_keys: Mutex<HashMap<String, (Value, Value)>>,
    /// The status the next refunds get ("processed" when unset).
    pub refund_status: Mutex<Option<&'static str>>,
    pub seen: Mutex<Vec<Seen>>,
    pub scripts: Mutex<HashMap<String, VecDeque<Script>>>,
    pub next_id: Mutex<u64>,
}

impl Fake {
    pub fn script(&self, route: &str, s: Script) {
        self.scripts.lock().unwrap().entry(route.to_owned()).or_default().push_back(s);
    }

    pub fn seen(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.method.as_str() == method && s.path == path).cloned().collect()
    }

    pub fn orders_with_receipt(&self, receipt: &str) -> Vec<Value> {
        self.orders.lock().unwrap().iter().filter(|o| o["receipt"] == receipt).cloned().collect()
    }

    pub fn add_payment(&self, id: &str, order_id: &str, amount: i64, currency: &str, status: &str) {
        self.payments.lock().unwrap().insert(id.to_owned(), payment_entity(id, order_id, amount, currency, status));
    }

    /// A card mandate registered for `customer_id` (what a successful
    /// authorisation payment leaves at Razorpay).
    pub fn add_token(&self, customer_id: &str, token_id: &str, max_amount: i64) {
        let token = json!({
            "id": token_id,
            "entity": "token",
            "token": "EhYXHrLsJdwRhM",
            "bank": null,
            "wallet": null,
            "method": "card",
            "card": { "entity": "card", "name": "Gaurav Kumar", "last4": "1111", "network": "Visa", "type": "debit" },
            "recurring": true,
            "recurring_details": { "status": "confirmed", "failure_reason": null },
            "auth_type": null,
            "mrn": null,
            "used_at": 1_629_779_657,
            "created_at": 1_629_779_657,
            "expired_at": 2_709_971_120_i64,
            "max_amount": max_amount,
            "customer_id": customer_id,
        });
        self.tokens.lock().unwrap().insert(token_id.to_owned(), token);
    }

    /// Moves a token's mandate to `status` (cancelled, rejected, paused).
    pub fn set_token_status(&self, token_id: &str, status: &str) {
        if let Some(t) = self.tokens.lock().unwrap().get_mut(token_id) {
            t["recurring_details"]["status"] = json!(status);
        }
    }

    pub fn payments_of(&self, order_id: &str) -> Vec<Value> {
        self.payments.lock().unwrap().values().filter(|p| p["order_id"] == order_id).cloned().collect()
    }

    pub fn id(&self, prefix: &str) -> String {
        let mut n = self.next_id.lock().unwrap();
        *n += 1;
        format!("{prefix}_Fk{:012}", *n)
    }

    /// Refunds made of `payment_id`.
    pub fn refunds_of(&self, payment_id: &str) -> Vec<Value> {
        self.refunds.lock().unwrap().iter().filter(|r| r["payment_id"] == payment_id).cloned().collect()
    }

    /// Razorpay's behaviour for one request.
    pub fn answer(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        auth: Option<&str>,
        headers: &HeaderMap,
        body: &Value,
    ) -> (u16, Value) {
        if auth != Some(expected_authorization().as_str()) {
            return (401, error_body("Authentication failed"));
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("POST", ["v1", "orders"]) => self.create_order(body),
            ("GET", ["v1", "orders"]) => self.list_orders(query),
            ("GET", ["v1", "orders", id, "payments"]) => self.order_payments(id),
            ("POST", ["v1", "customers"]) => self.create_customer(body),
            ("GET", ["v1", "customers", customer, "tokens", token]) => self.fetch_token(customer, token),
            ("POST", ["v1", "payments", id, "capture"]) => self.capture_payment(id, body),
            ("GET", ["v1", "payments", id]) => self.fetch_payment(id),
            ("POST", ["v1", "payments", "create", "recurring"]) => self.create_recurring_payment(body),
            ("GET", ["v1", "payments", id, "refunds"]) => self.list_refunds(id, query),
            ("POST", ["v1", "payments", id, "refund"]) => self.create_refund(id, headers, body),
            _ => (400, error_body("The requested URL was not found on the server.")),
        }
    }
}

pub fn error_body(description: &str) -> Value {
    json!({ "error": {
        "code": "BAD_REQUEST_ERROR",
        "description": description,
        "source": "business",
        "step": "payment_initiation",
        "reason": "input_validation_failed",
        "metadata": {},
    }})
}

pub fn payment_entity(id: &str, order_id: &str, amount: i64, currency: &str, status: &str) -> Value {
    json!({
        "id": id,
        "entity": "payment",
        "amount": amount,
        "currency": currency,
        "status": status,
        "order_id": order_id,
        "invoice_id": null,
        "international": false,
        "method": "card",
        "amount_refunded": 0,
        "refund_status": null,
        "captured": status == "captured",
        "description": null,
        "card_id": "card_DG4ZdUO3xABb20",
        "bank": null,
        "wallet": null,
        "vpa": null,
        "email": "gaurav.kumar@example.com",
        "contact": "+919000090000",
        "notes": [],
        "fee": 0,
        "tax": 0,
        "error_code": null,
        "error_description": null,
        "created_at": 1_567_674_599,
    })
}

pub async fn handle(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    let json_body =
        if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::String("<not json>".into())) };
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    fake.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        authorization: authorization.clone(),
        headers: headers.clone(),
        body: json_body.clone(),
    });
    let script = fake.scripts.lock().unwrap().get_mut(&format!("{method} {path}")).and_then(VecDeque::pop_front);
    let (status, body) = match script {
        Some(Script::Answer(status, retry_after, body)) => {
            let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
            if let Some(secs) = retry_after {
                resp.headers_mut().insert("retry-after", secs.parse().unwrap());
            }
            return resp;
        }
        Some(Script::Stall(d)) => {
            tokio::time::sleep(d).await;
            (200, json!({}))
        }
        Some(Script::Slow(d)) => {
            let answer = fake.answer(&method, &path, &query, authorization.as_deref(), &headers, &json_body);
            tokio::time::sleep(d).await;
            answer
        }
        None => fake.answer(&method, &path, &query, authorization.as_deref(), &headers, &json_body),
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

pub async fn start_fake() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(handle).with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (fake, format!("http://{addr}/"))
}

pub fn config(base: &str) -> GatewayConfig {
    GatewayConfig {
        key_id: KEY_ID.into(),
        key_secret: KEY_SECRET.into(),
        webhook_secret: WEBHOOK_SECRET.into(),
        kind: GatewayKind::Razorpay,
        api_base_url: base.into(),
        timeout: TIMEOUT,
        ..Default::default()
    }
}

pub async fn razorpay() -> (Arc<Fake>, Razorpay) {
    let (fake, base) = start_fake().await;
    let gateway = Razorpay::new(config(&base));
    (fake, gateway)
}

pub fn expected_authorization() -> String {
    format!("Basic {}", base64(format!("{KEY_ID}:{KEY_SECRET}").as_bytes()))
}

pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn new_order(receipt: &str) -> NewOrder<'_> {
    NewOrder { amount_minor: 49_900, currency: "INR", receipt, user_id: "user-7", plan_id: "basic-monthly", mandate: None }
}

pub fn card() -> SavedMethod {
    SavedMethod {
        customer_id: "cust_4xbQrmEoA5WJ0G".into(),
        token_id: "token_4lsdksD31GaZ09".into(),
        email: Some("gaurav.kumar@example.com".into()),
        contact: Some("+919000090000".into()),
    }
}

pub fn unavailable(r: Result<impl std::fmt::Debug, GatewayError>) -> (String, Option<Duration>) {
    match r {
        Err(GatewayError::Unavailable { message, retry_after }) => (message, retry_after),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

pub fn refused(r: Result<impl std::fmt::Debug, GatewayError>) -> (String, String) {
    match r {
        Err(GatewayError::Refused { code, message }) => (code, message),
        other => panic!("expected Refused, got {other:?}"),
    }
}
