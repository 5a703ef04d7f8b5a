//! billing.v1 subscriptions: replacement with carried-over credits and
//! billing period rollover, each racing itself.
use chrono::{Duration, Months};
use proto::billing::v1 as bpb;
use tests::{
    helpers::{exec, scalar},
    spawn_app,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paying_again_replaces_the_subscription_and_carries_credits_over() {
    let mut app = spawn_app().await;
    let s1 = app.subscribe("upgrader", "basic-monthly").await;
    assert_eq!(s1.credits_remaining, 300);
    let mut db = app.billing_db().await;
    exec(&mut db, &format!("UPDATE subscriptions SET credits_remaining = 290 WHERE id = '{}'", s1.id)).await;
    exec(&mut db, &format!("INSERT INTO ledger (subscription_id, period_start, kind, credits) SELECT id, period_start, 'CARRY_OVER', 10 FROM subscriptions WHERE id = '{}'", s1.id)).await;
    app.clock.advance(Duration::days(3));
    let s2 = app.subscribe("upgrader", "pro-monthly").await;
    assert_eq!(s2.credits_granted, 1500 + 290);
    let subs = app
        .billing
        .list_subscriptions(bpb::ListSubscriptionsRequest { user_id: "upgrader".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    let old = subs.iter().find(|s| s.id == s1.id).unwrap();
    assert_eq!(old.status, bpb::SubscriptionStatus::Replaced as i32);
    assert_eq!(old.credits_remaining, 0);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'upgrader' AND status = 'ACTIVE'").await,
        1
    );
    let r = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert!(r.findings.is_empty(), "the ledger explains both balances: {:?}", r.findings);
}

/// A paid renewal opens the next period at the old period end, once,
/// however many rollover runs meet it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollover_opens_the_next_period_exactly_once() {
    let mut app = spawn_app().await;
    let sub = app.subscribe("roller", "basic-monthly").await;
    let start = sub.period_start.unwrap().seconds;
    let t0 = chrono::DateTime::from_timestamp(start, 0).unwrap();
    assert_eq!(sub.period_end.unwrap().seconds, (t0 + Months::new(1)).timestamp());
    // Spend some credits in the first period.
    let us = app
        .billing
        .start_usage_session(bpb::StartUsageSessionRequest {
            user_id: "roller".into(),
            kind: bpb::UsageKind::Text as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    app.billing
        .deduct(bpb::DeductRequest { usage_session_id: us.id.clone(), deduction_id: "d1".into(), units: 7 })
        .await
        .unwrap();
    // The renewal is due from 72 hours before the period ends; paid early.
    app.clock.advance(Duration::days(29));
    app.run_job("renewals").await;
    app.pay_renewal(&sub.id).await.unwrap();
    app.clock.advance(Duration::days(3));
    let first = billing_svc::jobs::run_once(&app.billing_app, "rollover").await.unwrap();
    let second = billing_svc::jobs::run_once(&app.billing_app, "rollover").await.unwrap();
    assert!(first.contains(": 1 subscriptions"), "{first}");
    assert!(second.contains(": 0 subscriptions"), "{second}");
    let now = app
        .billing
        .get_subscription(bpb::GetSubscriptionRequest { id: sub.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!(now.period_start.unwrap().seconds, (t0 + Months::new(1)).timestamp());
    assert_eq!(now.period_end.unwrap().seconds, (t0 + Months::new(2)).timestamp());
    assert_eq!((now.credits_granted, now.credits_remaining), (300, 300), "a new period starts with fresh credits");
    let r = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    let kinds: Vec<_> = r.findings.iter().map(|f| f.kind.clone()).filter(|k| k != "STUCK_USAGE_SESSION").collect();
    assert!(kinds.is_empty(), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_concurrent_payments_of_one_user_leave_one_active_subscription() {
    let app = spawn_app().await;
    // The free subscription exists first (first use), then five orders are paid at once.
    app.start_usage("multi", bpb::UsageKind::Text).await.unwrap();
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(app.order("multi", "basic-monthly").await);
    }
    let calls = orders.iter().map(|o| {
        let b = app.billing.clone();
        let (payment_id, signature) = app.pay(&o.id);
        let order_id = o.id.clone();
        async move {
            tests::helpers::retrying(|| {
                let req = bpb::VerifyPaymentRequest {
                    order_id: order_id.clone(),
                    payment_id: payment_id.clone(),
                    signature: signature.clone(),
                };
                let mut b = b.clone();
                async move { b.verify_payment(req).await }
            })
            .await
        }
    });
    // A payment that lands after a newer order's is refused as superseded
    // (recorded for a refund); every other one buys its subscription.
    for r in futures::future::join_all(calls).await {
        if let Err(e) = r {
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains("superseded"), "{e:?}");
        }
    }
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'multi' AND status = 'ACTIVE'").await, 1);
    let bought =
        scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'multi' AND order_id IS NOT NULL").await;
    let refused = scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies WHERE kind = 'ORDER_SUPERSEDED'").await;
    assert_eq!(bought + refused, 5, "each payment bought a subscription or awaits a refund");
    assert!(bought >= 1);
    let newest = orders.last().map(|o| o.id.clone()).unwrap_or_default();
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE status = 'ACTIVE' AND order_id = '{newest}'"))
            .await,
        1,
        "the newest order's plan is live"
    );
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'multi' AND status = 'REPLACED'").await,
        bought
    );
    // Every credit is accounted for: 30 free + 300 per subscription bought,
    // all carried into the live one.
    assert_eq!(
        scalar(&mut db, "SELECT credits_remaining AS n FROM subscriptions WHERE user_id = 'multi' AND status = 'ACTIVE'").await,
        30 + bought * 300
    );
    tests::helpers::assert_ledger_matches_balances(&mut db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_concurrent_rollover_runs_open_each_period_once() {
    let app = spawn_app().await;
    let mut subs = Vec::new();
    for i in 0..20 {
        subs.push(app.subscribe(&format!("period-{i}"), "basic-monthly").await);
    }
    // Every renewal paid (the periods end 31 days after 15 March).
    app.clock.advance(Duration::days(29));
    app.run_job("renewals").await;
    for s in &subs {
        app.pay_renewal(&s.id).await.unwrap();
    }
    app.clock.advance(Duration::days(11));
    let runs = futures::future::join_all((0..4).map(|_| billing_svc::jobs::run_once(&app.billing_app, "rollover"))).await;
    let opened: usize = runs
        .into_iter()
        .map(|r| r.unwrap().split(": ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse::<usize>().ok()).unwrap())
        .sum();
    assert_eq!(opened, 20, "each subscription's new period is opened by exactly one run");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM subscriptions WHERE status = 'ACTIVE' AND plan_id = 'basic-monthly' \
             AND period_start = anchor_at + interval '1 month' AND credits_granted = 300 AND credits_remaining = 300"
        )
        .await,
        20,
        "every subscription is in its second period, with one fresh grant"
    );
    tests::helpers::assert_ledger_matches_balances(&mut db).await;
}
