//! The documented requests: orders created once (timeouts, retries, the
//! receipt), payments read, ids checked, refunds sent, signatures and
//! secrets kept out of debug output.
use super::*;

#[tokio::test]
async fn create_order_posts_the_documented_request() {
    let (fake, gw) = razorpay().await;
    let order = gw.create_order(&new_order("sess-0001")).await.unwrap();
    assert!(order.id.starts_with("order_"), "{order:?}");

    // First the look-up by receipt, then one create.
    let lookups = fake.seen("GET", "/v1/orders");
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].query, "receipt=sess-0001");
    let posts = fake.seen("POST", "/v1/orders");
    assert_eq!(posts.len(), 1);
    let p = &posts[0];
    assert_eq!(p.authorization.as_deref(), Some(expected_authorization().as_str()));
    assert_eq!(p.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(p.body["amount"], 49_900, "amount in paise, as an integer");
    assert_eq!(p.body["currency"], "INR");
    assert_eq!(p.body["receipt"], "sess-0001");
    assert_eq!(p.body["notes"]["user_id"], "user-7");
    assert_eq!(p.body["notes"]["plan_id"], "basic-monthly");
    assert_eq!(fake.orders_with_receipt("sess-0001")[0]["id"], order.id.as_str());
}

#[tokio::test]
async fn create_order_reuses_the_order_carrying_the_receipt() {
    let (fake, gw) = razorpay().await;
    let first = gw.create_order(&new_order("sess-0002")).await.unwrap();
    let again = gw.create_order(&new_order("sess-0002")).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 1);
    assert_eq!(fake.orders_with_receipt("sess-0002").len(), 1);

    // An order with the receipt but another amount is not ours to reuse.
    let other = gw.create_order(&NewOrder { amount_minor: 149_900, ..new_order("sess-0002") }).await.unwrap();
    assert_ne!(other, first);
}

#[tokio::test]
async fn create_order_timed_out_after_reaching_razorpay_is_found_not_created_twice() {
    let (fake, gw) = razorpay().await;
    // The create is done at Razorpay, but its answer comes after our timeout.
    fake.script("POST /v1/orders", Script::Slow(Duration::from_secs(2)));
    let order = gw.create_order(&new_order("sess-0003")).await.unwrap();
    let at_razorpay = fake.orders_with_receipt("sess-0003");
    assert_eq!(at_razorpay.len(), 1, "exactly one order for the receipt: {at_razorpay:?}");
    assert_eq!(at_razorpay[0]["id"], order.id.as_str());
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 1, "found by receipt, not created again");
}

#[tokio::test]
async fn create_order_timed_out_before_reaching_razorpay_is_created_once_on_retry() {
    let (fake, gw) = razorpay().await;
    fake.script("POST /v1/orders", Script::Stall(Duration::from_secs(2)));
    let order = gw.create_order(&new_order("sess-0004")).await.unwrap();
    let at_razorpay = fake.orders_with_receipt("sess-0004");
    assert_eq!(at_razorpay.len(), 1, "{at_razorpay:?}");
    assert_eq!(at_razorpay[0]["id"], order.id.as_str());
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 2);
}

#[tokio::test]
async fn create_order_that_keeps_timing_out_is_unavailable_with_no_duplicate() {
    let (fake, gw) = razorpay().await;
    for _ in 0..5 {
        fake.script("POST /v1/orders", Script::Stall(Duration::from_secs(2)));
    }
    let started = Instant::now();
    let (message, _) = unavailable(gw.create_order(&new_order("sess-0005")).await);
    assert!(message.contains("timed out"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded: {:?}", started.elapsed());
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 2, "bounded attempts");
    assert!(fake.orders_with_receipt("sess-0005").is_empty());
}

#[tokio::test]
async fn fetch_payment_reads_the_payment_entity() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_29QQoUBi66xm2f", "order_9A33XWu170gUtm", 49_900, "INR", "captured");
    fake.add_payment("pay_DG4ZdRK8ZnXC3k", "order_9A33XWu170gUtm", 49_900, "INR", "authorized");
    let p = gw.fetch_payment("pay_29QQoUBi66xm2f").await.unwrap().unwrap();
    assert_eq!(p.id, "pay_29QQoUBi66xm2f");
    assert_eq!(p.order_id.as_deref(), Some("order_9A33XWu170gUtm"));
    assert_eq!((p.status, p.amount_minor, p.currency.as_str()), (PaymentStatus::Captured, 49_900, "INR"));
    let a = gw.fetch_payment("pay_DG4ZdRK8ZnXC3k").await.unwrap().unwrap();
    assert_eq!(a.status, PaymentStatus::Authorized);

    let gets = fake.seen("GET", "/v1/payments/pay_29QQoUBi66xm2f");
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].authorization.as_deref(), Some(expected_authorization().as_str()));

    // Razorpay answers 400 for an id it does not know.
    let (code, message) = refused(gw.fetch_payment("pay_Unknown000001").await);
    assert_eq!((code.as_str(), message.as_str()), ("BAD_REQUEST_ERROR", "The id provided does not exist"));
}

#[tokio::test]
async fn ids_that_are_not_plain_never_reach_razorpay() {
    let (fake, gw) = razorpay().await;
    for bad in ["../orders", "pay_1/refund", "pay_1?count=100", ""] {
        refused(gw.fetch_payment(bad).await);
        refused(gw.refund(bad, 100, "refund-key-0001").await);
    }
    assert!(fake.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn refund_sends_amount_receipt_notes_and_idempotency_key() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_Refund000001", "order_1", 49_900, "INR", "captured");
    let r = gw.refund("pay_Refund000001", 10_000, "refund-7f3a9c").await.unwrap();
    assert!(r.id.starts_with("rfnd_"), "{r:?}");
    assert_eq!((r.status, r.amount_minor), (RefundStatus::Processed, 10_000));

    let posts = fake.seen("POST", "/v1/payments/pay_Refund000001/refund");
    assert_eq!(posts.len(), 1);
    let p = &posts[0];
    assert_eq!(p.authorization.as_deref(), Some(expected_authorization().as_str()));
    assert_eq!(p.body["amount"], 10_000, "partial refund in paise");
    assert_eq!(p.body["speed"], "normal");
    assert_eq!(p.body["receipt"], "refund-7f3a9c");
    assert_eq!(p.body["notes"]["refund_key"], "refund-7f3a9c");
    // Met the earlier releases' key rule: sent as it is (rolling deploys).
    assert_eq!(p.headers.get("x-refund-idempotency").unwrap(), "refund-7f3a9c");

    *fake.refund_status.lock().unwrap() = Some("pending");
    let pending = gw.refund("pay_Refund000001", 39_900, "refund-8b1c2d").await.unwrap();
    assert_eq!(pending.status, RefundStatus::Pending);

    let (code, _) = refused(gw.refund("pay_Refund000001", 99_999_999, "refund-9d2e3f").await);
    assert_eq!(code, "BAD_REQUEST_ERROR");
}

#[tokio::test]
async fn signatures_use_the_same_formulas_as_the_sandbox() {
    let (_fake, gw) = razorpay().await;
    let sandbox = Sandbox::new(config("http://unused"));
    let sig = sandbox.sign_payment("order_9A33XWu170gUtm", "pay_29QQoUBi66xm2f");
    assert!(gw.payment_signature_valid("order_9A33XWu170gUtm", "pay_29QQoUBi66xm2f", &sig));
    assert!(!gw.payment_signature_valid("order_other", "pay_29QQoUBi66xm2f", &sig));
    let body = Sandbox::captured_event_body("order_9A33XWu170gUtm", "pay_29QQoUBi66xm2f", 49_900, "INR");
    let sig = sandbox.sign_webhook(&body);
    assert!(gw.webhook_signature_valid(&body, &sig));
    assert!(!gw.webhook_signature_valid(b"{}", &sig));
    assert_eq!(gw.key_id(), KEY_ID);
}

#[tokio::test]
async fn debug_output_never_contains_a_secret() {
    let (_fake, gw) = razorpay().await;
    let cfg = config("http://127.0.0.1:9");
    for shown in [
        format!("{gw:?}"),
        format!("{gw:#?}"),
        format!("{cfg:?}"),
        format!("{:?}", Sandbox::new(cfg.clone())),
        format!("{:?}", billing_svc::gateway::GatewayError::Unavailable { message: "x".into(), retry_after: None }),
    ] {
        assert!(!shown.contains(KEY_SECRET) && !shown.contains(WEBHOOK_SECRET), "{shown}");
    }
    assert!(format!("{gw:?}").contains(KEY_ID), "the key id is public and helps operators");
}
