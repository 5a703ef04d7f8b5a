//! CancelSubscription (docs/design.md, "Subscription lifecycle"): at period
//! end, now, and racing a renewal payment; the ledger explains every
//! balance afterwards.
use super::{spend, subscribe_with_saved_card, ts, usage};
use crate::support::precondition_type;
use chrono::Duration;
use proto::billing::v1 as bpb;
use tests::{
    helpers::{assert_ledger_matches_balances, scalar},
    spawn_app,
};
use tonic::Code;

/// CancelSubscription at period end: no renewal order, the credits stay
/// until period_end, then CANCELLED and the free plan. Idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_at_period_end_ends_it_then_and_falls_back_to_free() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "leaver", "basic-monthly").await;
    let end = ts(&sub.period_end);
    let cancel = |policy: bpb::CancellationPolicy| {
        let mut b = app.billing.clone();
        let id = sub.id.clone();
        async move {
            b.cancel_subscription(bpb::CancelSubscriptionRequest {
                id,
                user_id: "leaver".into(),
                policy: policy as i32,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    let first = cancel(bpb::CancellationPolicy::AtPeriodEnd).await.unwrap();
    let s = first.subscription.unwrap();
    assert!(!first.replayed && s.cancel_at_period_end);
    assert_eq!((s.status, s.credits_remaining), (bpb::SubscriptionStatus::Active as i32, 300));
    assert!(cancel(bpb::CancellationPolicy::AtPeriodEnd).await.unwrap().replayed, "a repeat replays");

    app.clock.set(end - Duration::hours(24));
    assert!(app.run_job("renewals").await.contains("0 renewal orders created, 0 charges captured"));
    app.clock.set(end + Duration::minutes(1));
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Cancelled as i32, "reads show it at once");
    let u = usage(&app, "leaver").await;
    assert_eq!((u.plan_id.as_str(), u.credits_remaining), ("free", 30));
    // The first use after the end starts on the free plan.
    let us = app.start_usage("leaver", bpb::UsageKind::Text).await.unwrap();
    assert_ne!(us.subscription_id, sub.id);
    let ended = app.subscription(&sub.id).await;
    assert_eq!((ended.status, ended.credits_remaining), (bpb::SubscriptionStatus::Cancelled as i32, 0));
    assert_eq!(ts(&ended.ended_at), end);
    assert!(cancel(bpb::CancellationPolicy::Immediately).await.unwrap().replayed, "cancelling a cancelled one replays");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// CancelSubscription now: CANCELLED, the remaining credits forfeited
/// through a ledger row (ledger == balances); the open renewal cancelled.
/// Someone else's, an unknown or a free subscription cannot be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_now_forfeits_the_credits_through_the_ledger() {
    let app = spawn_app().await;
    let sub = app.subscribe("quitter", "basic-monthly").await;
    spend(&app, "quitter", 5).await;
    app.clock.set(ts(&sub.period_end) - Duration::hours(10));
    app.run_job("renewals").await;
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    let mut b = app.billing.clone();
    let req = |id: &str, user: &str| bpb::CancelSubscriptionRequest {
        id: id.into(),
        user_id: user.into(),
        policy: bpb::CancellationPolicy::Immediately as i32,
        ..Default::default()
    };

    assert_eq!(b.cancel_subscription(req(&sub.id, "someone-else")).await.unwrap_err().code(), Code::NotFound);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(b.cancel_subscription(req(&unknown, "quitter")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(b.cancel_subscription(req("not-a-uuid", "quitter")).await.unwrap_err().code(), Code::InvalidArgument);

    let r = b.cancel_subscription(req(&sub.id, "quitter")).await.unwrap().into_inner();
    let s = r.subscription.unwrap();
    assert_eq!((s.status, s.credits_remaining, r.replayed), (bpb::SubscriptionStatus::Cancelled as i32, 0, false));
    assert!(b.cancel_subscription(req(&sub.id, "quitter")).await.unwrap().into_inner().replayed);
    let order = b.get_order(bpb::GetOrderRequest { id: renewal }).await.unwrap().into_inner().order.unwrap();
    assert_eq!(order.status, bpb::OrderStatus::Cancelled as i32);

    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT credits AS n FROM ledger WHERE kind = 'FORFEITED' AND subscription_id = '{}'", sub.id))
            .await,
        295
    );
    assert_ledger_matches_balances(&mut db).await;
    // The free plan: nothing to cancel.
    let free = app.start_usage("quitter", bpb::UsageKind::Text).await.unwrap().subscription_id;
    let e = b.cancel_subscription(req(&free, "quitter")).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "FREE_PLAN"));
}

/// A renewal payment racing a cancellation: either the payment lands first
/// (the period is paid, then the cancellation ends it now) or the order is
/// already cancelled (the payment is a refundable discrepancy). Never both a
/// cancelled subscription and a captured renewal that bought nothing, and
/// the ledger holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_payment_racing_a_cancellation_is_either_captured_or_a_discrepancy() {
    let app = spawn_app().await;
    for round in 0..6 {
        let user = format!("racer-{round}");
        let sub = app.subscribe(&user, "basic-monthly").await;
        app.clock.set(ts(&sub.period_end) - Duration::hours(12));
        app.run_job("renewals").await;
        let renewal = app.subscription(&sub.id).await.renewal_order_id;
        let (p, sig) = app.pay(&renewal);
        let mut b1 = app.billing.clone();
        let mut b2 = app.billing.clone();
        let pay = b1.verify_payment(bpb::VerifyPaymentRequest { order_id: renewal.clone(), payment_id: p, signature: sig });
        let cancel = b2.cancel_subscription(bpb::CancelSubscriptionRequest {
            id: sub.id.clone(),
            user_id: user.clone(),
            policy: if round % 2 == 0 { bpb::CancellationPolicy::AtPeriodEnd } else { bpb::CancellationPolicy::Immediately }
                as i32,
            ..Default::default()
        });
        let (paid, cancelled) = tokio::join!(pay, cancel);
        cancelled.unwrap();
        let mut db = app.billing_db().await;
        let kind =
            |k: &str| format!("SELECT count(*) AS n FROM payment_discrepancies WHERE order_id = '{renewal}' AND kind = '{k}'");
        let cancelled_first = scalar(&mut db, &kind("ORDER_CANCELLED")).await;
        let ended_after = scalar(&mut db, &kind("SUBSCRIPTION_ENDED")).await;
        let captured =
            scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{renewal}' AND status = 'PAID'")).await;
        assert_eq!(paid.is_ok(), captured == 1, "round {round}: {paid:?}");
        // Captured first: the cancellation (now or at period end) makes the
        // renewal money owed back. Cancelled first: the payment is refused.
        let expected = if captured == 1 { (0, 1) } else { (1, 0) };
        assert_eq!((cancelled_first, ended_after), expected, "round {round}");
        app.clock.set(ts(&sub.period_end) + Duration::hours(1));
        let s = app.subscription(&sub.id).await;
        assert_eq!(
            (s.status, s.credits_remaining),
            (bpb::SubscriptionStatus::Cancelled as i32, 0),
            "round {round}: no paid month opens"
        );
        assert_ledger_matches_balances(&mut db).await;
        app.clock.set(app.clock.now() + Duration::days(40));
    }
    // Every renewal payment that bought nothing is refunded by reconcile,
    // once; a second run finds nothing.
    let fix =
        app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    assert!(fix.findings.iter().all(|f| f.kind == "PAYMENT_DISCREPANCY" && f.fixed), "{:?}", fix.findings);
    assert_eq!(fix.findings.len(), 6);
    let again =
        app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert!(again.findings.is_empty(), "{:?}", again.findings);
}
