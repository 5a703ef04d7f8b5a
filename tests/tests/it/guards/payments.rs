//! Guards of payments: idempotency keys, capture under the order lock, and
//! reconcile's re-check.
use super::*;

// ------------------------------------------ idempotency keys: request hash

/// A key reused by another user's StartUsageSession is refused; it never
/// hands the second user the first user's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_idempotency_key_of_another_users_start_usage_session_is_refused() {
    let app = spawn_app().await;
    let start = |user: &str| {
        let mut b = app.billing.clone();
        let req = bpb::StartUsageSessionRequest { user_id: user.into(), kind: UsageKind::Text as i32 };
        async move { b.start_usage_session(with_key(req, "shared-usage-key")).await.map(|r| r.into_inner().session.unwrap()) }
    };
    let first = start("alice").await.unwrap();
    assert_eq!(first.user_id, "alice");
    // The same request again is a replay of the same session.
    assert_eq!(start("alice").await.unwrap().id, first.id);
    let e = start("bob").await.expect_err("another user's request under a used key");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM usage_sessions WHERE user_id = 'bob'").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM usage_sessions WHERE user_id = 'alice'").await, 1);
}

/// CompleteSession looks its key up before billing captures (so a plain
/// reuse is refused early); a reuse that arrives while the first request is
/// still in flight passes that look-up, and only the claim inside the
/// transaction can refuse it. Bob's verification is held at billing while
/// Alice completes under the same key, so Bob's claim meets her key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_idempotency_key_of_another_users_complete_session_in_flight_is_refused() {
    let app = spawn_app_holding_rows().await;
    let mut billing_db = app.billing_db().await;
    let complete = |session_id: &str, (payment_id, signature): (String, String), key: &str| {
        let mut c = app.checkout.clone();
        let req = cpb::CompleteSessionRequest { id: session_id.into(), payment_id, signature };
        let req = with_key(req, key);
        async move { c.complete_session(req).await.map(|r| r.into_inner()) }
    };
    let mut exercised = false;
    for attempt in 0..3 {
        let key = format!("shared-complete-key-{attempt}");
        let alice = app.create_session(&format!("alice-{attempt}"), "basic-monthly").await;
        let bob = app.create_session(&format!("bob-{attempt}"), "basic-monthly").await;
        let bob_payment = app.pay(&bob.order_id);
        let holder =
            Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM orders WHERE id = '{}' FOR UPDATE", bob.order_id)).await;
        let bob_call = tokio::spawn(complete(&bob.id, bob_payment.clone(), &key));
        let bob_queued = wait_for_waiters(&mut billing_db, 1, SEE_WAITERS).await;
        let alice_done = if bob_queued { Some(complete(&alice.id, app.pay(&alice.order_id), &key).await) } else { None };
        // Bob's capture must still be waiting when Alice's key commits.
        let still_queued = bob_queued && lock_waiters(&mut billing_db).await >= 1;
        holder.release().await;
        let bob_result = bob_call.await.unwrap();
        if let Some(done) = alice_done {
            assert_eq!(done.unwrap().session.unwrap().id, alice.id, "Alice completes her own session");
        }
        if !still_queued {
            continue;
        }
        exercised = true;
        match bob_result {
            Err(e) => {
                assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}")
            }
            Ok(r) => panic!("Bob's CompleteSession under Alice's key answered {:?}", r.session.map(|s| (s.id, s.user_id))),
        }
        // Bob's session was not completed by Alice's key; his own completes it.
        assert_ne!(app.get_session(&bob.id).await.status, cpb::SessionStatus::Completed as i32);
        let done = complete(&bob.id, bob_payment, &format!("bob-own-key-{attempt}")).await.unwrap().session.unwrap();
        assert_eq!((done.id.as_str(), done.status), (bob.id.as_str(), cpb::SessionStatus::Completed as i32));
        break;
    }
    assert!(exercised, "Bob's verification was never held while Alice completed; the race did not happen");
}

// ------------------------------------------------------ payments: capture

/// CancelOrders withdraws an order only while nobody is paying it: a
/// capture holds the order row from its first read to its commit, so a
/// cancel that lands mid-capture waits and then finds the order PAID. The
/// capture is held (the user's live subscription is locked by the test)
/// after it read the order, and the cancel is sent then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_order_lock_cancel_during_capture_never_reports_a_paid_order_cancelled() {
    let app = spawn_app_holding_rows().await;
    let mut db = app.billing_db().await;
    let live = app.subscribe("payer", "basic-monthly").await;
    let order = app.order("payer", "pro-monthly").await;
    let holder =
        Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM subscriptions WHERE id = '{}' FOR UPDATE", live.id)).await;
    let capture = tokio::spawn({
        let (app_billing, order_id) = (app.billing.clone(), order.id.clone());
        let (payment_id, signature) = app.pay(&order.id);
        async move {
            let mut b = app_billing;
            b.verify_payment(bpb::VerifyPaymentRequest { order_id, payment_id, signature }).await
        }
    });
    let capture_queued = wait_for_waiters(&mut db, 1, SEE_WAITERS).await;
    let cancel = tokio::spawn({
        let (mut b, id) = (app.billing.clone(), order.id.clone());
        async move { b.cancel_orders(bpb::CancelOrdersRequest { order_ids: vec![id] }).await }
    });
    // The cancel either queues behind the capture, or (no order lock)
    // returns at once.
    let deadline = tokio::time::Instant::now() + SEE_WAITERS;
    while !cancel.is_finished() && lock_waiters(&mut db).await < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(StdDuration::from_millis(3)).await;
    }
    holder.release().await;
    let captured = capture.await.unwrap();
    let cancelled = cancel.await.unwrap();
    assert!(capture_queued, "the capture never waited on the held subscription; the race did not happen");
    let captured = captured.expect("the payment is captured").into_inner();
    assert_eq!(captured.order.unwrap().status, bpb::OrderStatus::Paid as i32);
    let reported = cancelled.expect("CancelOrders answers").into_inner().orders;
    assert_eq!(reported.len(), 1);
    assert_eq!(
        reported[0].status,
        bpb::OrderStatus::Paid as i32,
        "CancelOrders must not report an order cancelled while its payment is being captured"
    );
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", order.id)).await,
        1
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
}

/// A late payment of an older order never replaces the subscription a newer
/// order bought: it is recorded as a discrepancy for a refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_newer_order_a_late_payment_of_an_older_order_never_replaces_its_subscription() {
    let app = spawn_app().await;
    let older = app.order("switcher", "basic-monthly").await;
    let newer = app.order("switcher", "pro-monthly").await;
    let bought = verify(&app, &newer.id).await.unwrap().subscription.unwrap();
    let e = verify(&app, &older.id).await.expect_err("the older order's payment buys nothing");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'ACTIVE'", bought.id))
            .await,
        1,
        "the newer order's subscription stays live"
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", older.id)).await, 0);
    assert_eq!(
        scalar(
            &mut db,
            &format!(
                "SELECT count(*) AS n FROM payment_discrepancies WHERE order_id = '{}' AND kind = 'ORDER_SUPERSEDED' AND status = 'OPEN'",
                older.id
            )
        )
        .await,
        1
    );
}

/// A payment refused once (here the webhook reported a wrong amount) stays
/// refused when VerifyPayment brings it again with a valid signature: the
/// order is not paid by it and no subscription is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_refused_payment_stays_refused_when_verify_payment_brings_it_again() {
    let mut app = spawn_app().await;
    let order = app.order("shortpay", "basic-monthly").await;
    let (payment_id, signature) = app.pay(&order.id);
    let hook = app.captured_webhook(&order.id, &payment_id, order.amount_minor - 1, &order.currency, "evt-short");
    app.billing.handle_gateway_webhook(hook).await.unwrap();
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM payment_discrepancies WHERE payment_id = '{payment_id}'")).await,
        1,
        "the wrong amount is recorded"
    );
    let e = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id: payment_id.clone(), signature })
        .await
        .expect_err("a refused payment buys nothing");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", order.id)).await,
        0
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 0);
}

// ------------------------------------------------------------- reconcile

/// Two `--fix` runs that both found a paid order without a subscription
/// repair it once: the second re-checks the finding under the order lock and
/// finds it gone. Both runs are held at that lock until both wait there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_reconcile_recheck_two_fix_runs_repair_a_finding_once() {
    let app = spawn_app_holding_rows().await;
    let mut db = app.billing_db().await;
    let sub = app.subscribe("lost-sub", "basic-monthly").await;
    exec(&mut db, &format!("DELETE FROM subscriptions WHERE id = '{}'", sub.id)).await;

    let holder =
        Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM orders WHERE id = '{}' FOR UPDATE", sub.order_id)).await;
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let mut b = app.billing_admin.clone();
            tokio::spawn(async move { b.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await })
        })
        .collect();
    let queued = wait_for_waiters(&mut db, 2, SEE_WAITERS).await;
    holder.release().await;
    let mut fixed = 0;
    for r in runs {
        let r = r.await.unwrap().expect("reconciliation runs").into_inner();
        assert!(
            r.findings.iter().any(|f| f.kind == "PAID_ORDER_WITHOUT_SUBSCRIPTION" && f.subject_id == sub.order_id),
            "both runs found the order: {:?}",
            r.findings
        );
        fixed += r.fixed;
    }
    assert!(queued, "the two runs never both waited on the order; the race did not happen");
    assert_eq!(fixed, 1, "one repair in all");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM reconcile_audit WHERE subject_id = '{}'", sub.order_id)).await,
        1
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", sub.order_id)).await, 1);
}
