//! Failures at Razorpay: 400, 401, 429 with Retry-After, 5xx, slow
//! answers and unexpected bodies.
use super::*;

#[tokio::test]
async fn bad_request_is_refused_with_razorpay_code_and_a_bounded_description() {
    let (fake, gw) = razorpay().await;
    let long = "x".repeat(5000);
    fake.script("GET /v1/payments/pay_Long00000001", Script::Answer(400, None, error_body(&long).to_string()));
    let (code, message) = refused(gw.fetch_payment("pay_Long00000001").await);
    assert_eq!(code, "BAD_REQUEST_ERROR");
    assert!(message.chars().count() <= 200, "{} chars", message.chars().count());

    // The documented validation error, through create order.
    let (code, message) = refused(gw.create_order(&NewOrder { amount_minor: 50, ..new_order("sess-0006") }).await);
    assert_eq!((code.as_str(), message.as_str()), ("BAD_REQUEST_ERROR", "The amount must be at least INR 1.00"));
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 1, "a refusal is not retried");

    // A 4xx without Razorpay's error shape is still a refusal, not a panic.
    fake.script("GET /v1/payments/pay_Html00000001", Script::Answer(404, None, "<html>not found</html>".into()));
    let (code, _) = refused(gw.fetch_payment("pay_Html00000001").await);
    assert_eq!(code, "HTTP_404");
}

#[tokio::test]
async fn wrong_credentials_are_refused_401() {
    let (fake, base) = start_fake().await;
    let gw = Razorpay::new(GatewayConfig { key_secret: "not-the-secret".into(), ..config(&base) });
    let (code, message) = refused(gw.create_order(&new_order("sess-0007")).await);
    assert_eq!((code.as_str(), message.as_str()), ("BAD_REQUEST_ERROR", "Authentication failed"));
    assert!(fake.orders.lock().unwrap().is_empty());
    assert_eq!(fake.seen.lock().unwrap().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn rate_limited_calls_honour_retry_after_and_are_not_hammered() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_Throttled001", "order_1", 100, "INR", "captured");
    let too_many = error_body("Too many requests").to_string();
    fake.script("GET /v1/payments/pay_Throttled001", Script::Answer(429, Some("7"), too_many.clone()));
    let (_, retry_after) = unavailable(gw.fetch_payment("pay_Throttled001").await);
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert_eq!(fake.seen("GET", "/v1/payments/pay_Throttled001").len(), 1);

    // Without Retry-After, callers still get a pause.
    fake.script("GET /v1/payments/pay_Throttled001", Script::Answer(429, None, too_many.clone()));
    let (_, retry_after) = unavailable(gw.fetch_payment("pay_Throttled001").await);
    assert!(retry_after.is_some());

    // A throttled create is neither retried nor leaves an order.
    fake.script("POST /v1/orders", Script::Answer(429, Some("3"), too_many));
    let (_, retry_after) = unavailable(gw.create_order(&new_order("sess-0008")).await);
    assert_eq!(retry_after, Some(Duration::from_secs(3)));
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 1);
    assert!(fake.orders_with_receipt("sess-0008").is_empty());
}

#[tokio::test]
async fn server_errors_are_unavailable_reads_retried_writes_not() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_Flaky0000001", "order_1", 100, "INR", "captured");
    let oops = json!({"error": {"code": "SERVER_ERROR", "description": "The server encountered an error."}}).to_string();

    // One 502: the read is retried and succeeds.
    fake.script("GET /v1/payments/pay_Flaky0000001", Script::Answer(502, None, "bad gateway".into()));
    assert!(gw.fetch_payment("pay_Flaky0000001").await.unwrap().is_some());
    assert_eq!(fake.seen("GET", "/v1/payments/pay_Flaky0000001").len(), 2);

    // Failing every time: bounded, then UNAVAILABLE.
    for _ in 0..5 {
        fake.script("GET /v1/payments/pay_Flaky0000001", Script::Answer(500, None, oops.clone()));
    }
    let (message, _) = unavailable(gw.fetch_payment("pay_Flaky0000001").await);
    assert!(message.contains("500"), "{message}");
    assert_eq!(fake.seen("GET", "/v1/payments/pay_Flaky0000001").len(), 4);

    // A refund is a write: one attempt, UNAVAILABLE, the caller retries.
    fake.script("POST /v1/payments/pay_Flaky0000001/refund", Script::Answer(503, Some("2"), oops));
    let (_, retry_after) = unavailable(gw.refund("pay_Flaky0000001", 100, "refund-key-0002").await);
    assert_eq!(retry_after, Some(Duration::from_secs(2)));
    assert_eq!(fake.seen("POST", "/v1/payments/pay_Flaky0000001/refund").len(), 1);
}

#[tokio::test]
async fn slow_answers_time_out_as_unavailable() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_Slow00000001", "order_1", 100, "INR", "captured");
    for _ in 0..2 {
        fake.script("GET /v1/payments/pay_Slow00000001", Script::Stall(Duration::from_secs(3)));
    }
    let started = Instant::now();
    let (message, retry_after) = unavailable(gw.fetch_payment("pay_Slow00000001").await);
    assert!(message.contains("timed out"), "{message}");
    assert_eq!(retry_after, None);
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout bounds the call: {:?}", started.elapsed());

    fake.add_payment("pay_Slow00000002", "order_1", 100, "INR", "captured");
    fake.script("POST /v1/payments/pay_Slow00000002/refund", Script::Slow(Duration::from_secs(3)));
    let (message, _) = unavailable(gw.refund("pay_Slow00000002", 100, "refund-key-0003").await);
    assert!(message.contains("timed out"), "{message}");
}

#[tokio::test]
async fn unexpected_bodies_are_unavailable_not_a_panic() {
    let (fake, gw) = razorpay().await;
    for body in ["<html>maintenance</html>", "{\"id\": 42}", "", "[]"] {
        fake.script("GET /v1/payments/pay_Weird0000001", Script::Answer(200, None, body.into()));
        fake.script("GET /v1/payments/pay_Weird0000001", Script::Answer(200, None, body.into()));
        let (message, _) = unavailable(gw.fetch_payment("pay_Weird0000001").await);
        assert!(message.contains("unexpected response"), "{body}: {message}");
    }
    // A create answered with an unreadable 2xx: looked up by receipt before
    // the retry, so there is exactly one order either way.
    fake.script("POST /v1/orders", Script::Answer(200, None, "{\"entity\": \"order\"}".into()));
    let order = gw.create_order(&new_order("sess-0010")).await.unwrap();
    let at_razorpay = fake.orders_with_receipt("sess-0010");
    assert_eq!(at_razorpay.len(), 1);
    assert_eq!(at_razorpay[0]["id"], order.id.as_str());
    assert_eq!(fake.seen("GET", "/v1/orders").len(), 2, "looked up before the first and the second attempt");
}
