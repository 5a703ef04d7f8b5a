//! Saved methods that stop working: a mandate Razorpay says is gone is
//! unusable (not a decline), anything else is not, and a refused key
//! never makes billing forget a saved method.
use super::*;

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
