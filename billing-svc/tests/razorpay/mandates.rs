//! Registering card mandates: only when configured, the customer's
//! contact completed from its payment, one customer per user, and the
//! mandate's frequency from the plan's period.
use super::*;

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
