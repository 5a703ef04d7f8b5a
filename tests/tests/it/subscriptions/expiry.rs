//! A period that ends unpaid: no new credits, expiry to the free plan after
//! the grace period, or reactivation through a renewal checkout.
use super::*;

/// docs/design.md, Invariants 20: a paid user whose period ends unpaid gets no new credits;
/// after the grace period the subscription is EXPIRED, its renewal order
/// cancelled (a late payment of it is a discrepancy), and the user is on the
/// free plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpaid_period_end_grants_nothing_then_expires_to_the_free_plan() {
    let app = spawn_app().await;
    let sub = app.subscribe("lapsed", "basic-monthly").await;
    let end = ts(&sub.period_end);
    spend(&app, "lapsed", 10).await;
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    assert!(!renewal.is_empty());

    app.clock.set(end - Duration::minutes(10));
    let running = app.start_usage("lapsed", bpb::UsageKind::Text).await.unwrap();
    app.clock.set(end + Duration::minutes(5));
    let read = app.subscription(&sub.id).await;
    assert_eq!(
        (read.status, read.credits_remaining),
        (bpb::SubscriptionStatus::PastDue as i32, 0),
        "reads show it before the job"
    );
    assert!(app.run_job("rollover").await.contains(": 1 subscriptions"));
    let past_due = app.subscription(&sub.id).await;
    assert_eq!(past_due.status, bpb::SubscriptionStatus::PastDue as i32);
    assert_eq!((past_due.credits_remaining, ts(&past_due.period_end)), (0, end), "no new credits, no new period");
    // A session that was running draws nothing: its units are unpaid.
    let d = app
        .billing
        .clone()
        .deduct(bpb::DeductRequest { usage_session_id: running.id.clone(), deduction_id: "past-due".into(), units: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.units_charged, d.units_unpaid), (0, 3), "nothing to spend while past due");
    app.end_usage(&running.id, 0).await.unwrap();
    assert_eq!(usage(&app, "lapsed").await.credits_remaining, 0);
    let e = app.start_usage("lapsed", bpb::UsageKind::Text).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "no new sessions without credits: {e:?}");

    // Still unpaid at the end of the grace period (72 hours).
    app.clock.set(end + Duration::hours(71));
    assert!(app.run_job("renewals").await.contains("0 expired"));
    app.clock.set(end + Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("1 expired"));
    let expired = app.subscription(&sub.id).await;
    assert_eq!(expired.status, bpb::SubscriptionStatus::Expired as i32);
    assert!(expired.ended_at.is_some());
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: renewal.clone() }).await.unwrap().into_inner();
    assert_eq!(order.order.unwrap().status, bpb::OrderStatus::Cancelled as i32);
    let u = usage(&app, "lapsed").await;
    assert_eq!((u.plan_id.as_str(), u.credits_remaining), ("free", 30), "back on the free plan");
    app.start_usage("lapsed", bpb::UsageKind::Text).await.unwrap();

    // The renewal paid now buys nothing: an open discrepancy to refund.
    let (p, sig) = app.pay(&renewal);
    let e = app
        .billing
        .clone()
        .verify_payment(bpb::VerifyPaymentRequest { order_id: renewal, payment_id: p, signature: sig })
        .await
        .unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_CANCELLED"));
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'lapsed' AND status = 'ACTIVE'").await,
        1
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// Paid during the grace period, through a renewal checkout (checkout's
/// CreateSession for the plan the user has): ACTIVE again, the new period
/// anchored at the old period end, with the plan's credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_in_grace_through_a_renewal_checkout_reactivates_at_the_old_period_end() {
    let app = spawn_app().await;
    let sub = app.subscribe("late-payer", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.clock.set(end - Duration::hours(72));
    app.run_job("renewals").await;
    app.clock.set(end + Duration::hours(30));
    app.run_job("rollover").await;
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::PastDue as i32);
    let renewal = app.subscription(&sub.id).await.renewal_order_id;

    let session = app.create_session("late-payer", "basic-monthly").await;
    assert_eq!(session.order_id, renewal, "the renewal checkout pays the renewal order");
    let (p, sig) = app.pay(&session.order_id);
    let done = app.complete(&session.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!(done.status, cpb::SessionStatus::Completed as i32);
    assert_eq!(done.subscription_id, sub.id, "the same subscription, renewed");

    let renewed = app.subscription(&sub.id).await;
    assert_eq!(renewed.status, bpb::SubscriptionStatus::Active as i32);
    assert_eq!(ts(&renewed.period_start), end, "anchored at the old period end, not at the payment");
    assert_eq!(ts(&renewed.period_end), ts(&sub.period_start) + Months::new(2));
    assert_eq!((renewed.credits_granted, renewed.credits_remaining), (300, 300));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'late-payer'").await, 1);
    assert_ledger_matches_balances(&mut db).await;
}
