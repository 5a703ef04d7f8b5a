//! billing.v1 subscriptions: replacement with carried-over credits, billing
//! period rollover, reconciliation, and background jobs across a database
//! outage (docs/design.md, Jobs).
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration as StdDuration,
};

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
        .start_usage_session(bpb::StartUsageSessionRequest { user_id: "roller".into(), kind: bpb::UsageKind::Text as i32 })
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
async fn reconciliation_finds_each_inconsistency_fixes_it_and_then_finds_nothing() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    // 1. A paid order without a subscription.
    let lost = app.order("r-lost", "basic-monthly").await;
    exec(
        &mut db,
        &format!("UPDATE orders SET status = 'PAID', payment_id = 'pay_lost', paid_at = now() WHERE id = '{}'", lost.id),
    )
    .await;
    // 2. A paid-plan subscription without a paid order.
    exec(
        &mut db,
        "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining) \
         VALUES (gen_random_uuid(), 'r-ghost', 'pro-monthly', 'ACTIVE', now(), now(), now() + interval '1 month', 1500, 1500)",
    )
    .await;
    // 3. Two subscriptions for one order (only possible without the constraint).
    let dup = app.order("r-dup", "basic-monthly").await;
    let (p, sig) = app.pay(&dup.id);
    app.billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: dup.id.clone(), payment_id: p, signature: sig })
        .await
        .unwrap();
    exec(&mut db, "ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_order_id_key").await;
    exec(
        &mut db,
        &format!(
            "INSERT INTO subscriptions (id, user_id, plan_id, order_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining, created_at) \
             SELECT gen_random_uuid(), user_id, plan_id, order_id, 'REPLACED', anchor_at, period_start, period_end, 0, 0, created_at + interval '1 second' \
             FROM subscriptions WHERE order_id = '{}'",
            dup.id
        ),
    )
    .await;
    // 4. A webhook whose amount disagrees with its order.
    let odd = app.order("r-odd", "pro-monthly").await;
    let (p, _) = app.pay(&odd.id);
    app.billing.handle_gateway_webhook(app.captured_webhook(&odd.id, &p, 1, "INR", "evt-odd")).await.unwrap();
    // 5. A balance the ledger does not explain.
    exec(
        &mut db,
        &format!(
            "UPDATE subscriptions SET credits_remaining = credits_remaining - 5 WHERE order_id = '{}' AND status = 'ACTIVE'",
            dup.id
        ),
    )
    .await;
    // 6. A usage session stuck ACTIVE.
    app.billing
        .start_usage_session(bpb::StartUsageSessionRequest { user_id: "r-stuck".into(), kind: bpb::UsageKind::Call as i32 })
        .await
        .unwrap();
    app.clock.advance(Duration::hours(25));

    let check = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    let mut kinds: Vec<String> = check.findings.iter().map(|f| f.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        vec![
            "DUPLICATE_SUBSCRIPTIONS_FOR_ORDER",
            "LEDGER_MISMATCH",
            "PAID_ORDER_WITHOUT_SUBSCRIPTION",
            "PAYMENT_DISCREPANCY",
            "STUCK_USAGE_SESSION",
            "SUBSCRIPTION_WITHOUT_PAID_ORDER",
        ]
    );
    assert_eq!(check.fixed, 0);
    let audit_before = scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit").await;
    assert_eq!(audit_before, 0, "check mode changes nothing");

    // The gateway refuses the refund: everything is repaired except money
    // taken without a subscription, which only a refund or an operator's
    // acknowledgement closes.
    app.gateway.set_refunds(billing_svc::gateway::SandboxRefunds::Refuse);
    let fix = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    assert!(fix.findings.iter().all(|f| f.fixed == (f.kind != "PAYMENT_DISCREPANCY")), "{:?}", fix.findings);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit").await, fix.fixed);
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", lost.id)).await, 1);

    let again = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    let open: Vec<_> = again.findings.iter().map(|f| (f.kind.as_str(), f.fixed)).collect();
    assert_eq!(open, vec![("PAYMENT_DISCREPANCY", false)], "only the payment discrepancy stays open: {:?}", again.findings);
    let subject = again.findings[0].subject_id.clone();
    let acked =
        billing_svc::reconcile::acknowledge(&mut db, "PAYMENT_DISCREPANCY", &subject, "refunded by hand", app.clock.now())
            .await
            .unwrap();
    assert!(acked);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit WHERE note = 'refunded by hand'").await,
        1,
        "the acknowledgement is audited with its note"
    );
    let clean = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert!(clean.findings.is_empty(), "clean once acknowledged: {:?}", clean.findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_keeps_running_across_a_database_outage_and_returns_its_connections() {
    let app = spawn_app().await;
    let db_name = app.billing_db_url.rsplit('/').next().unwrap().to_owned();
    let server = tests::harness::pg().await.unwrap();
    let mut admin = tests::harness::connect(&server.admin_url).await;
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let shutdown = shared::server::Shutdown::new();
    let job = {
        let (app, ok, failed) = (app.billing_app.clone(), ok.clone(), failed.clone());
        shared::jobs::spawn_periodic("auto-deduct", StdDuration::from_millis(50), shutdown.clone(), move || {
            let (app, ok, failed) = (app.clone(), ok.clone(), failed.clone());
            async move {
                let r = billing_svc::jobs::run_once(&app, "auto-deduct").await;
                if r.is_ok() {
                    ok.fetch_add(1, Ordering::SeqCst)
                } else {
                    failed.fetch_add(1, Ordering::SeqCst)
                };
                r
            }
        })
    };
    let wait_for = |counter: Arc<AtomicUsize>, above: usize| async move {
        for _ in 0..300 {
            if counter.load(Ordering::SeqCst) > above {
                return true;
            }
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
        false
    };
    assert!(wait_for(ok.clone(), 0).await, "job runs");
    // The outage: no new connections, existing ones killed.
    exec(&mut admin, &format!("ALTER DATABASE \"{db_name}\" WITH ALLOW_CONNECTIONS false")).await;
    exec(&mut admin, &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db_name}'")).await;
    assert!(wait_for(failed.clone(), 0).await, "iterations fail during the outage");
    let ok_during = ok.load(Ordering::SeqCst);
    exec(&mut admin, &format!("ALTER DATABASE \"{db_name}\" WITH ALLOW_CONNECTIONS true")).await;
    assert!(wait_for(ok.clone(), ok_during).await, "the job recovers by itself after the outage");
    shutdown.trigger();
    tokio::time::timeout(StdDuration::from_secs(10), job).await.unwrap().unwrap();
    // Nothing is checked out once the job stopped: the pool is not leaked.
    let state = app.billing_app.pool.state();
    assert_eq!(state.connections, state.idle_connections, "{state:?}");
    assert!(state.connections <= 10);
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
