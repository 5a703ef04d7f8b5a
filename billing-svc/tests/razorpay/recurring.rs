//! Recurring payments on card mandates: a charge of a saved method, and
//! Razorpay's documented flow end to end (mandates: `mandates.rs`; saved
//! methods that stop working: `saved_methods.rs`).
use super::*;

#[tokio::test]
async fn charge_saved_method_creates_a_recurring_payment() {
    let (fake, gw) = razorpay().await;
    fake.add_token("cust_4xbQrmEoA5WJ0G", "token_4lsdksD31GaZ09", 49_900);
    let order = gw.create_order(&new_order("renew-0001")).await.unwrap();
    let p = gw.charge_saved_method(&card(), 49_900, "INR", &order.id, "renew-0001").await.unwrap();
    assert!(p.id.starts_with("pay_"), "{p:?}");
    assert_eq!(p.status, PaymentStatus::Captured);
    assert_eq!((p.amount_minor, p.currency.as_str(), p.order_id.as_deref()), (49_900, "INR", Some(order.id.as_str())));

    let posts = fake.seen("POST", "/v1/payments/create/recurring");
    assert_eq!(posts.len(), 1);
    let b = &posts[0].body;
    assert_eq!(posts[0].authorization.as_deref(), Some(expected_authorization().as_str()));
    assert_eq!(b["amount"], 49_900);
    assert_eq!(b["currency"], "INR");
    assert_eq!(b["order_id"], order.id.as_str());
    assert_eq!(b["customer_id"], "cust_4xbQrmEoA5WJ0G");
    assert_eq!(b["token"], "token_4lsdksD31GaZ09");
    assert_eq!(b["recurring"], "1");
    assert_eq!(b["email"], "gaurav.kumar@example.com");
    assert_eq!(b["contact"], "+919000090000");
    assert_eq!(b["notes"]["receipt"], "renew-0001");
    // Its state is read back from the payment.
    assert_eq!(fake.seen("GET", &format!("/v1/payments/{}", p.id)).len(), 1);

    // A declined card: Razorpay's BAD_REQUEST_ERROR, not retried.
    let declined =
        error_body("Your payment could not be completed as this business accepts domestic (Indian) card payments only.");
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.to_string()));
    let (code, _) = refused(gw.charge_saved_method(&card(), 49_900, "INR", &order.id, "renew-0001").await);
    assert_eq!(code, "BAD_REQUEST_ERROR");
    assert_eq!(fake.seen("POST", "/v1/payments/create/recurring").len(), 2);
}

/// Razorpay's documented recurring flow for cards, end to end against the
/// fake: the purchase creates a customer (`fail_existing: "0"`) and an
/// authorisation order carrying the mandate's token block; the payment's
/// customer, token, email and contact are stored; the renewal creates a new
/// order and a recurring payment that sends email, contact, customer and
/// token. A recurring call that times out after reaching Razorpay is found
/// through the order's payments before a second one is made (one payment),
/// and a renewal above the mandate's maximum is never attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_cards_follow_razorpays_documented_flow() {
    let (fake, base) = start_fake().await;
    let (app, clock, db, server) = app_with_fake(&base).await;
    let signer = Sandbox::new(config(&base));

    let order = billing_svc::checkout_orders::create(&app, &order_request("user-recurring", "basic-monthly")).await.unwrap();
    let customers = fake.seen("POST", "/v1/customers");
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].body["fail_existing"], "0", "as documented; it matches on email and contact, never sent");
    let posted = &fake.seen("POST", "/v1/orders")[0].body;
    assert_eq!(posted["method"], "card");
    assert!(posted["customer_id"].as_str().unwrap().starts_with("cust_"));
    assert_eq!(posted["token"]["max_amount"], 49_900, "the mandate allows the price the customer agreed to");
    assert_eq!(posted["token"]["frequency"], "monthly");
    assert!(posted["token"]["expire_at"].as_i64().unwrap() > chrono::Utc::now().timestamp());

    let customer = customer_pays_and_registers(&fake, &order.id, "pay_Register0001", "token_Mandate00001");
    let sig = signer.sign_payment(&order.id, "pay_Register0001");
    let captured = billing_svc::payments::verify(&app, &order_id(&order.id), "pay_Register0001", &sig).await.unwrap();
    let sub = captured.subscription;
    assert_eq!(
        (sub.gateway_customer_id.as_deref(), sub.gateway_token_id.as_deref()),
        (Some(customer.as_str()), Some("token_Mandate00001"))
    );
    assert_eq!(
        (sub.gateway_email.as_deref(), sub.gateway_contact.as_deref(), sub.mandate_max_amount_minor),
        (Some("gaurav.kumar@example.com"), Some("+919000090000"), Some(49_900)),
        "what a later charge needs, from the payment entity and the order"
    );
    // A second purchase of the user reuses the stored customer.
    billing_svc::checkout_orders::create(&app, &order_request("user-recurring", "pro-monthly")).await.unwrap();
    assert_eq!(fake.seen("POST", "/v1/customers").len(), 1);

    // Renewal: the recurring call reaches Razorpay, which charges, but the
    // answer is lost (timeout).
    fake.script("POST /v1/payments/create/recurring", Script::Slow(Duration::from_secs(2)));
    clock.set(sub.period_end - chrono::Duration::hours(72));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    let recurring = fake.seen("POST", "/v1/payments/create/recurring");
    assert_eq!(recurring.len(), 1);
    let b = &recurring[0].body;
    let renewal = b["order_id"].as_str().unwrap().to_owned();
    assert_ne!(renewal, order.id, "a new order for every charge");
    assert!(fake.seen("POST", "/v1/orders").last().unwrap().body["token"].is_null(), "a renewal order registers nothing");
    assert_eq!((b["email"].as_str(), b["contact"].as_str()), (Some("gaurav.kumar@example.com"), Some("+919000090000")));
    assert_eq!((b["customer_id"].as_str(), b["token"].as_str()), (Some(customer.as_str()), Some("token_Mandate00001")));
    assert_eq!((b["recurring"].as_str(), b["amount"].as_i64()), (Some("1"), Some(49_900)));
    assert_eq!(fake.payments_of(&renewal).len(), 1, "Razorpay charged");

    // The next attempt finds that payment by the order instead of charging again.
    clock.set(sub.period_end - chrono::Duration::hours(48));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 charges captured"), "{out}");
    assert_eq!(fake.seen("GET", &format!("/v1/orders/{renewal}/payments")).len(), 1);
    assert_eq!(fake.seen("POST", "/v1/payments/create/recurring").len(), 1, "never a second charge");
    assert_eq!(fake.payments_of(&renewal).len(), 1);
    assert_eq!(scalar(&app, &format!("SELECT count(*) AS n FROM orders WHERE id = '{renewal}' AND status = 'PAID'")).await, 1);

    // The subscription moves to a price above the mandate's maximum (a new
    // version of its plan it is moved to, as an operator's migration of
    // subscribers schedules it: next_plan_version, which the next renewal
    // order opened charges): the next renewal is not charged; the customer
    // pays it through a renewal checkout.
    scalar(
        &app,
        "WITH v AS (INSERT INTO plan_versions (plan_id, version, price_minor, currency, period, credits_per_period, \
                        max_sessions_per_period, max_minutes_per_period, max_upload_bytes, created_at) \
                    SELECT plan_id, 2, 59900, currency, period, credits_per_period, max_sessions_per_period, \
                        max_minutes_per_period, max_upload_bytes, now() \
                      FROM plan_versions WHERE plan_id = 'basic-monthly' AND version = 1 RETURNING 1) \
         SELECT count(*) AS n FROM v",
    )
    .await;
    scalar(
        &app,
        "WITH u AS (UPDATE subscriptions SET next_plan_version = 2 WHERE plan_id = 'basic-monthly' RETURNING 1) \
         SELECT count(*) AS n FROM u",
    )
    .await;
    clock.set(sub.period_end + chrono::Duration::days(28));
    billing_svc::jobs::run_once(&app, "rollover").await.unwrap();
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    assert_eq!(fake.seen("POST", "/v1/payments/create/recurring").len(), 1, "above the mandate: never attempted");
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM orders WHERE amount_minor = 59900 AND status = 'CREATED' AND next_charge_at IS NULL"
        )
        .await,
        1,
        "left to a renewal checkout"
    );

    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();
}
