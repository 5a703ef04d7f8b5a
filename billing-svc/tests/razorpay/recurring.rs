//! Recurring payments on card mandates: the documented flow, customers
//! and tokens, mandates that are gone and keys that are refused.
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

/// A mandate cancelled at Razorpay: the recurring call's 400 is told apart
/// from a declined debit by asking for the token, and reported as unusable
/// (never retried); a saved method without email or contact never reaches
/// Razorpay at all.
#[tokio::test]
async fn a_cancelled_mandate_is_unusable_not_a_decline() {
    let (fake, gw) = razorpay().await;
    fake.add_token("cust_4xbQrmEoA5WJ0G", "token_4lsdksD31GaZ09", 49_900);
    let order = gw.create_order(&new_order("renew-0002")).await.unwrap();
    fake.set_token_status("token_4lsdksD31GaZ09", "cancelled");
    let (code, _) = refused(gw.charge_saved_method(&card(), 49_900, "INR", &order.id, "renew-0002").await);
    assert_eq!(code, billing_svc::gateway::METHOD_UNUSABLE);
    assert_eq!(fake.seen("GET", "/v1/customers/cust_4xbQrmEoA5WJ0G/tokens/token_4lsdksD31GaZ09").len(), 1);
    assert!(fake.payments_of(&order.id).is_empty());

    let no_contact = billing_svc::gateway::SavedMethod { contact: None, ..card() };
    let before = fake.seen.lock().unwrap().len();
    let (code, _) = refused(gw.charge_saved_method(&no_contact, 49_900, "INR", &order.id, "renew-0002").await);
    assert_eq!(code, billing_svc::gateway::METHOD_UNUSABLE);
    assert_eq!(fake.seen.lock().unwrap().len(), before, "not sent: Razorpay requires email and contact");
}

/// docs/design.md, Invariant 29: only Razorpay's own word that a mandate is
/// gone (cancelled, rejected or paused, expired, or the token unknown) makes
/// a saved method unusable. A token check that fails (our key refused with
/// 401, throttled, 5xx) or a mandate in another state keeps the decline as
/// it was; a recurring call refused for our credentials is UNAVAILABLE.
#[tokio::test]
async fn only_a_mandate_razorpay_says_is_gone_is_unusable() {
    let (fake, gw) = razorpay().await;
    let token_path = "/v1/customers/cust_4xbQrmEoA5WJ0G/tokens/token_4lsdksD31GaZ09";
    fake.add_token("cust_4xbQrmEoA5WJ0G", "token_4lsdksD31GaZ09", 49_900);
    let order = gw.create_order(&new_order("renew-0003")).await.unwrap();
    let declined = error_body("Payment failed").to_string();
    let unauthorized = error_body("Authentication failed").to_string();
    let charge = async || gw.charge_saved_method(&card(), 49_900, "INR", &order.id, "renew-0003").await;

    // The token check is refused for our credentials: the decline stays a decline.
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.clone()));
    fake.script(&format!("GET {token_path}"), Script::Answer(401, None, unauthorized.clone()));
    assert_eq!(refused(charge().await), ("BAD_REQUEST_ERROR".to_owned(), "Payment failed".to_owned()));
    // Throttled, or down: the same.
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.clone()));
    fake.script(&format!("GET {token_path}"), Script::Answer(429, Some("1"), "{}".into()));
    assert_eq!(refused(charge().await).0, "BAD_REQUEST_ERROR");
    for state in ["initiated", "something_new"] {
        fake.set_token_status("token_4lsdksD31GaZ09", state);
        fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.clone()));
        assert_eq!(refused(charge().await).0, "BAD_REQUEST_ERROR", "{state}: not known to be gone");
    }
    // The recurring call itself refused for our credentials (a rotated
    // key): UNAVAILABLE, retried on schedule, never "the mandate is gone".
    fake.script("POST /v1/payments/create/recurring", Script::Answer(401, None, unauthorized.clone()));
    let (message, _) = unavailable(charge().await);
    assert!(message.contains("401"), "{message}");
    assert!(fake.payments_of(&order.id).is_empty());

    // What Razorpay says is gone is unusable: paused, expired, unknown (400
    // "does not exist", or 404).
    fake.set_token_status("token_4lsdksD31GaZ09", "paused");
    assert_eq!(refused(charge().await).0, billing_svc::gateway::METHOD_UNUSABLE);
    fake.set_token_status("token_4lsdksD31GaZ09", "confirmed");
    fake.tokens.lock().unwrap().get_mut("token_4lsdksD31GaZ09").unwrap()["expired_at"] = json!(1_600_000_000);
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.clone()));
    assert_eq!(refused(charge().await).0, billing_svc::gateway::METHOD_UNUSABLE);
    fake.tokens.lock().unwrap().remove("token_4lsdksD31GaZ09");
    assert_eq!(refused(charge().await).0, billing_svc::gateway::METHOD_UNUSABLE);
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined));
    fake.script(&format!("GET {token_path}"), Script::Answer(404, None, "<html>not found</html>".into()));
    assert_eq!(refused(charge().await).0, billing_svc::gateway::METHOD_UNUSABLE);
}

/// A key rotated or misconfigured at Razorpay answers 401 to everything:
/// the renewal job keeps every saved method and retries on schedule instead
/// of forgetting the cards in bulk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_never_forgets_saved_methods() {
    let (fake, base) = start_fake().await;
    let (app, clock, db, server) = app_with_fake(&base).await;
    let (sub, customer) =
        subscribe_with_mandate(&fake, &app, &base, "user-key-401", "pay_KeyRotated001", "token_KeyRotated01").await;
    let unauthorized = error_body("Authentication failed").to_string();
    fake.script("POST /v1/payments/create/recurring", Script::Answer(401, None, unauthorized.clone()));
    let token_path = format!("GET /v1/customers/{customer}/tokens/token_KeyRotated01");
    for _ in 0..2 {
        fake.script(&token_path, Script::Answer(401, None, unauthorized.clone()));
    }
    clock.set(sub.period_end - chrono::Duration::hours(72));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    let kept = billing_svc::subscriptions::get(&mut app.conn().await.unwrap(), sub.id).await.unwrap();
    assert_eq!(kept.gateway_token_id.as_deref(), Some("token_KeyRotated01"), "the saved method is kept");
    assert_eq!(
        scalar(&app, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL AND next_charge_at IS NOT NULL")
            .await,
        1,
        "charged again on schedule"
    );
    // The key is fixed: the next attempt charges the card.
    clock.set(sub.period_end - chrono::Duration::hours(48));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 charges captured"), "{out}");

    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// A subscription saved before email and contact were stored (the columns
/// came NULL): its first renewal reads them from the payment that saved the
/// card (`GET /v1/payments/:id`), stores them and charges, instead of
/// forgetting a working card. Only when that payment has none either is the
/// method unusable and the renewal left to a checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_saved_without_email_or_contact_is_completed_from_its_payment() {
    let (fake, base) = start_fake().await;
    let (app, clock, db, server) = app_with_fake(&base).await;
    let (old, _) =
        subscribe_with_mandate(&fake, &app, &base, "user-pre-migration", "pay_PreMigration1", "token_PreMigrate01").await;
    let (bare, _) =
        subscribe_with_mandate(&fake, &app, &base, "user-no-contact", "pay_NoContact0001", "token_NoContact001").await;
    scalar(
        &app,
        "WITH u AS (UPDATE subscriptions SET gateway_email = NULL, gateway_contact = NULL \
          WHERE gateway_token_id IS NOT NULL RETURNING 1) SELECT count(*) AS n FROM u",
    )
    .await;
    // The second one's payment carries no contact at Razorpay either.
    fake.payments.lock().unwrap().get_mut("pay_NoContact0001").unwrap()["contact"] = serde_json::Value::Null;

    clock.set(old.period_end - chrono::Duration::hours(72));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("2 renewal orders created, 1 charges captured, 1 not captured"), "{out}");
    let recurring = fake.seen("POST", "/v1/payments/create/recurring");
    assert_eq!(recurring.len(), 1, "only the completed method is charged");
    let b = &recurring[0].body;
    assert_eq!(b["token"], "token_PreMigrate01");
    assert_eq!((b["email"].as_str(), b["contact"].as_str()), (Some("gaurav.kumar@example.com"), Some("+919000090000")));
    let mut conn = app.conn().await.unwrap();
    let completed = billing_svc::subscriptions::get(&mut conn, old.id).await.unwrap();
    assert_eq!(
        (completed.gateway_token_id.as_deref(), completed.gateway_email.as_deref(), completed.gateway_contact.as_deref()),
        (Some("token_PreMigrate01"), Some("gaurav.kumar@example.com"), Some("+919000090000")),
        "stored for the next renewals"
    );
    let forgotten = billing_svc::subscriptions::get(&mut conn, bare.id).await.unwrap();
    assert_eq!(forgotten.gateway_token_id, None, "nothing to charge it with: paid through checkout");
    drop(conn);
    assert_eq!(
        scalar(
            &app,
            &format!("SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}' AND next_charge_at IS NULL", bare.id)
        )
        .await,
        1
    );

    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// A purchase order with a token block is a card-mandate authorisation
/// order, which Razorpay's checkout can only pay by card. So mandates are
/// registered only with `RAZORPAY_CARD_MANDATES=true`; by default (false) a
/// purchase is a plain order every payment method can pay (no customer is
/// created), and its renewals are paid through a renewal checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_mandates_are_registered_only_when_configured() {
    let (fake, base) = start_fake().await;
    assert!(!billing_svc::Config::from_env().unwrap().gateway.card_mandates, "off unless configured");
    let (app, clock, db, server) = app_with_fake_mandates(&base, false).await;
    let order = billing_svc::checkout_orders::create(&app, &order_request("user-upi", "basic-monthly")).await.unwrap();
    let posted = &fake.seen("POST", "/v1/orders")[0].body;
    for field in ["method", "token", "customer_id"] {
        assert!(posted[field].is_null(), "a plain order: no {field} in {posted}");
    }
    assert!(fake.seen("POST", "/v1/customers").is_empty(), "no customer without a mandate");
    assert_eq!(order.mandate_max_amount_minor, None);
    // Paid by UPI: a plain captured payment.
    fake.add_payment("pay_UpiPayment001", &order.id, 49_900, "INR", "captured");
    fake.payments.lock().unwrap().get_mut("pay_UpiPayment001").unwrap()["method"] = json!("upi");
    let sig = Sandbox::new(config(&base)).sign_payment(&order.id, "pay_UpiPayment001");
    let sub = billing_svc::payments::verify(&app, &order_id(&order.id), "pay_UpiPayment001", &sig).await.unwrap().subscription;
    assert_eq!(sub.gateway_token_id, None);
    clock.set(sub.period_end - chrono::Duration::hours(72));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 renewal orders created, 0 charges captured, 0 not captured"), "{out}");
    assert!(fake.seen("POST", "/v1/payments/create/recurring").is_empty());
    assert_eq!(
        scalar(&app, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL AND next_charge_at IS NULL")
            .await,
        1,
        "the renewal is paid through checkout"
    );
    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();

    // Configured: the purchase registers a card mandate.
    let (app, _clock, db, server) = app_with_fake_mandates(&base, true).await;
    let order = billing_svc::checkout_orders::create(&app, &order_request("user-card", "basic-monthly")).await.unwrap();
    let posted = fake.seen("POST", "/v1/orders").last().unwrap().body.clone();
    assert_eq!(posted["method"], "card");
    assert_eq!(posted["token"]["max_amount"], 49_900);
    assert_eq!(fake.seen("POST", "/v1/customers").len(), 1);
    assert_eq!(order.mandate_max_amount_minor, Some(49_900));
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// Razorpay finds an "existing" customer (`fail_existing: "0"`) by email and
/// contact; billing sends neither, so two users never share a customer, and
/// a customer Razorpay hands back that is not the user's (its
/// `notes.user_key` differs) is never used: the purchase is a plain order
/// and nothing is stored, so one user's saved cards can never be charged
/// for, or shown to, another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_is_never_shared_between_users() {
    let (fake, base) = start_fake().await;
    let (app, _clock, db, server) = app_with_fake(&base).await;
    let long = "u".repeat(60);
    let (a, b) = (format!("{long}-a"), format!("{long}-b"));
    billing_svc::checkout_orders::create(&app, &order_request(&a, "basic-monthly")).await.unwrap();
    billing_svc::checkout_orders::create(&app, &order_request(&b, "basic-monthly")).await.unwrap();
    let posts = fake.seen("POST", "/v1/customers");
    assert_eq!(posts.len(), 2);
    for p in &posts {
        assert!(p.body["email"].is_null() && p.body["contact"].is_null(), "nothing Razorpay could match another user on");
    }
    let orders = fake.orders.lock().unwrap().clone();
    assert_ne!(orders[0]["customer_id"], orders[1]["customer_id"], "users whose ids share 50 characters");

    // Razorpay answers with another user's customer: not used, not stored.
    let foreign = fake.customers.lock().unwrap()[0].clone();
    fake.script("POST /v1/customers", Script::Answer(200, None, foreign.to_string()));
    let order = billing_svc::checkout_orders::create(&app, &order_request("user-c", "basic-monthly")).await.unwrap();
    assert_eq!(order.mandate_max_amount_minor, None, "a plain order");
    assert!(fake.seen("POST", "/v1/orders").last().unwrap().body["customer_id"].is_null());
    assert_eq!(scalar(&app, "SELECT count(*) AS n FROM gateway_customers WHERE user_id = 'user-c'").await, 0);
    assert_eq!(scalar(&app, "SELECT count(DISTINCT customer_id) AS n FROM gateway_customers").await, 2);
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// A yearly plan's purchase asks Razorpay for a mandate debited yearly (the
/// plan's billing period), not monthly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yearly_plan_registers_a_yearly_mandate() {
    let (fake, base) = start_fake().await;
    let (app, _clock, _db, _server) = app_with_fake(&base).await;
    // A yearly plan and its version 1, as CreatePlan makes them.
    scalar(
        &app,
        "WITH p AS (INSERT INTO plans (id, name, price_minor, currency, period, credits_per_period, \
                        deduction_interval_seconds, max_sessions_per_period, max_minutes_per_period, max_upload_bytes, \
                        active, created_at, current_version) \
                    VALUES ('team-yearly', 'Team yearly', 1200000, 'INR', 'yearly', 4000, 600, 0, 0, 1073741824, true, now(), 1) \
                    RETURNING id), \
              v AS (INSERT INTO plan_versions (plan_id, version, price_minor, currency, period, credits_per_period, \
                        max_upload_bytes, created_at) \
                    SELECT id, 1, 1200000, 'INR', 'yearly', 4000, 1073741824, now() FROM p RETURNING 1) \
         SELECT count(*) AS n FROM v",
    )
    .await;
    billing_svc::checkout_orders::create(&app, &order_request("user-yearly", "team-yearly")).await.unwrap();
    let posted = &fake.seen("POST", "/v1/orders")[0].body;
    assert_eq!(
        (posted["token"]["frequency"].as_str(), posted["token"]["max_amount"].as_i64()),
        (Some("yearly"), Some(1_200_000))
    );
}
