//! A fake Razorpay on 127.0.0.1:0: routes, scripted failures, what it saw,
//! and the small builders the tests share.
#![allow(clippy::unwrap_used, clippy::expect_used)]
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
            ("POST", ["v1", "orders"]) => {
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
            ("GET", ["v1", "orders"]) => {
                let receipt = query.split('&').find_map(|kv| kv.strip_prefix("receipt=")).unwrap_or_default();
                let items: Vec<Value> = self.orders_with_receipt(receipt);
                (200, json!({ "entity": "collection", "count": items.len(), "items": items }))
            }
            ("GET", ["v1", "orders", id, "payments"]) => {
                let items = self.payments_of(id);
                (200, json!({ "entity": "collection", "count": items.len(), "items": items }))
            }
            ("POST", ["v1", "customers"]) => {
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
            ("GET", ["v1", "customers", customer, "tokens", token]) => {
                match self.tokens.lock().unwrap().get(*token).filter(|t| t["customer_id"] == *customer) {
                    Some(t) => (200, t.clone()),
                    None => (400, error_body("The id provided does not exist")),
                }
            }
            ("POST", ["v1", "payments", id, "capture"]) => {
                let mut payments = self.payments.lock().unwrap();
                let Some(p) = payments.get_mut(*id) else {
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
            ("GET", ["v1", "payments", id]) => match self.payments.lock().unwrap().get(*id) {
                Some(p) => (200, p.clone()),
                None => (400, error_body("The id provided does not exist")),
            },
            ("POST", ["v1", "payments", "create", "recurring"]) => {
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
            ("GET", ["v1", "payments", id, "refunds"]) => {
                let param =
                    |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<usize>().ok());
                let (count, skip) = (param("count").unwrap_or(10), param("skip").unwrap_or(0));
                if count > 100 {
                    return (400, error_body("The count may not be greater than 100."));
                }
                let items: Vec<Value> = self.refunds_of(id).into_iter().skip(skip).take(count).collect();
                (200, json!({ "entity": "collection", "count": items.len(), "items": items }))
            }
            ("POST", ["v1", "payments", id, "refund"]) => {
                let Some(payment) = self.payments.lock().unwrap().get(*id).cloned() else {
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
                            return (
                                400,
                                error_body("Different request with the same idempotency key has already been processed."),
                            );
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
