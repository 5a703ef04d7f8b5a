//! Renewals charged to a saved payment method: retries, replicas, lost
//! captures and lost answers never charged twice.
use super::*;

/// A saved card is charged for the renewal; the next period opens exactly
/// at the old period end with fresh credits, the leftovers expiring through
/// the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recurring_charge_opens_the_next_period_with_fresh_credits() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "card", "basic-monthly").await;
    let end = ts(&sub.period_end);
    spend(&app, "card", 40).await;
    app.clock.set(end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 renewal orders created, 1 charges captured"), "{out}");
    let paid_early = app.subscription(&sub.id).await;
    assert_eq!((paid_early.credits_remaining, ts(&paid_early.period_end)), (260, end), "the current period runs on");
    assert!(paid_early.renewal_order_id.is_empty() && paid_early.next_charge_at.is_none(), "nothing left to collect");

    app.clock.set(end);
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((ts(&next.period_start), next.credits_granted, next.credits_remaining), (end, 300, 300));
    assert!(app.run_job("renewals").await.contains("0 renewal orders created, 0 charges captured"), "next one not due yet");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT credits AS n FROM ledger WHERE kind = 'EXPIRED' AND subscription_id = '{}'", sub.id))
            .await,
        260
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// Declined twice, captured on the third attempt (24 hours apart): one
/// charge captured, one period opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_declined_twice_then_captured_opens_one_period() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "flaky", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_fail_charges(true);
    app.clock.set(end - Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 1 not captured"));
    let waiting = app.subscription(&sub.id).await;
    assert_eq!(ts(&waiting.next_charge_at), end - Duration::hours(48), "retried 24 hours later");
    app.clock.set(end - Duration::hours(60));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"), "not before the retry is due");
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 not captured"));
    app.gateway.set_fail_charges(false);
    app.clock.set(end - Duration::hours(24));
    assert!(app.run_job("renewals").await.contains("1 charges captured"));
    for _ in 0..2 {
        assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"));
    }
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.status, ts(&next.period_start), next.credits_remaining), (bpb::SubscriptionStatus::Active as i32, end, 300));
    let mut db = app.billing_db().await;
    let renewal = format!("renews_subscription_id = '{}'", sub.id);
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE {renewal}")).await, 1);
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE {renewal} AND status = 'PAID'")).await, 1);
    assert_eq!(scalar(&mut db, &format!("SELECT charge_attempts::bigint AS n FROM orders WHERE {renewal}")).await, 3);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 20: the renewal job on four replicas at once (each its own
/// pool) creates one renewal order per (subscription, period) and charges
/// each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_renewal_job_on_four_replicas_creates_one_order_per_period() {
    let app = spawn_app().await;
    let mut end = Utc::now();
    for i in 0..8 {
        let sub = if i % 2 == 0 {
            subscribe_with_saved_card(&app, &format!("replica-{i}"), "basic-monthly").await
        } else {
            app.subscribe(&format!("replica-{i}"), "pro-monthly").await
        };
        end = ts(&sub.period_end);
    }
    let replicas: Vec<billing_svc::App> = (0..4)
        .map(|_| {
            billing_svc::App::with_gateway(
                app.billing_app.config.as_ref().clone(),
                &app.billing_db_url,
                app.clock.clone(),
                app.billing_app.gateway.clone(),
            )
        })
        .collect();
    app.clock.set(end - Duration::hours(70));
    for _ in 0..2 {
        let runs = futures::future::join_all(replicas.iter().map(|r| billing_svc::jobs::run_once(r, "renewals"))).await;
        for r in runs {
            r.unwrap();
        }
    }
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL").await,
        8,
        "one renewal order per subscription"
    );
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(DISTINCT renews_subscription_id) AS n FROM orders WHERE renews_subscription_id IS NOT NULL"
        )
        .await,
        8
    );
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL AND status = 'PAID'").await,
        4,
        "each saved card charged once"
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0, "no second payment");
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM orders o JOIN plans p ON p.id = o.plan_id \
              WHERE o.renews_subscription_id IS NOT NULL AND o.amount_minor <> p.price_minor"
        )
        .await,
        0,
        "at the plan's price"
    );
}

/// A charge captured at the gateway whose capture billing did not record
/// (here: remembered as pending, as when the capture transaction failed) is
/// captured by the next attempt, never charged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_whose_capture_was_lost_is_captured_not_charged_again() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "lost-capture", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_fail_charges(true);
    app.clock.set(end - Duration::hours(72));
    app.run_job("renewals").await;
    let mut db = app.billing_db().await;
    let renewal = format!("renews_subscription_id = '{}'", sub.id);
    tests::helpers::exec(&mut db, &format!("UPDATE orders SET pending_payment_id = 'pay_lost1' WHERE {renewal}")).await;
    app.clock.set(end - Duration::hours(48));
    // Charges would be declined: a capture here can only be the lost one.
    assert!(app.run_job("renewals").await.contains("1 charges captured"));
    assert_eq!(
        scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM orders WHERE {renewal} AND status = 'PAID' AND payment_id = 'pay_lost1'")
        )
        .await,
        1
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 24: a recurring charge whose answer was lost
/// after it reached the gateway (the sandbox makes the charge, then the call
/// fails as after a timeout) is found by its order before a second attempt:
/// one payment at the gateway, captured once, one period opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_whose_answer_was_lost_is_found_by_its_order_not_made_twice() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "lost-answer", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_lose_charge_answers(true);
    app.clock.set(end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    assert_eq!(app.gateway.charges_of(&renewal).len(), 1, "the charge was made at the gateway");

    app.gateway.set_lose_charge_answers(false);
    app.clock.set(end - Duration::hours(48));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 charges captured"), "{out}");
    let charges = app.gateway.charges_of(&renewal);
    assert_eq!(charges.len(), 1, "found by its order, never charged a second time: {charges:?}");
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: renewal.clone() }).await.unwrap().into_inner();
    let order = order.order.unwrap();
    assert_eq!((order.status, order.payment_id.as_str()), (bpb::OrderStatus::Paid as i32, charges[0].id.as_str()));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"));
    assert_eq!(app.gateway.charges_of(&renewal).len(), 1);

    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.status, ts(&next.period_start), next.credits_remaining), (bpb::SubscriptionStatus::Active as i32, end, 300));
    reconcile_finds_nothing(&app).await;
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 24: one failed payment, then a charge whose
/// answer was lost. Attempt 1's payment fails at the bank (remembered as
/// pending); attempt 2 finds it failed and charges again, and that charge is
/// made but its answer lost; attempt 3 finds the order's payments before
/// charging, not only the failed one it remembers: one successful charge,
/// one period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_payment_then_a_lost_answer_is_never_charged_twice() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "fail-then-lost", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_charges_fail_later(true);
    app.clock.set(end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    let failed = app.gateway.charges_of(&renewal);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, billing_svc::gateway::PaymentStatus::Failed);

    app.gateway.set_charges_fail_later(false);
    app.gateway.set_lose_charge_answers(true);
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 1 not captured"));
    assert_eq!(app.gateway.charges_of(&renewal).len(), 2, "the second charge was made at the gateway");

    app.gateway.set_lose_charge_answers(false);
    app.clock.set(end - Duration::hours(24));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 charges captured"), "{out}");
    assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"));
    let charges = app.gateway.charges_of(&renewal);
    let captured: Vec<_> = charges.iter().filter(|p| p.status == billing_svc::gateway::PaymentStatus::Captured).collect();
    assert_eq!(captured.len(), 1, "exactly one successful charge: {charges:?}");
    assert_eq!(charges.len(), 2, "no third charge");
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: renewal.clone() }).await.unwrap().into_inner();
    let order = order.order.unwrap();
    assert_eq!((order.status, order.payment_id.as_str()), (bpb::OrderStatus::Paid as i32, captured[0].id.as_str()));

    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.status, ts(&next.period_start), next.credits_remaining), (bpb::SubscriptionStatus::Active as i32, end, 300));
    reconcile_finds_nothing(&app).await;
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}'", sub.id)).await,
        1
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}
