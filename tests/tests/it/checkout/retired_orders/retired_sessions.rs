//! Orders of retired sessions: cancelled at billing, durably, so paying
//! one is a refunded discrepancy, never a second purchase.
use super::*;

/// Create pro (O1), change to basic (O2); the customer pays O1 in the old
/// tab, then O2. O1 was cancelled when its session was retired: its payment
/// is an ORDER_CANCELLED discrepancy that reconcile refunds, and O2 buys the
/// one subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paying_the_order_of_a_retired_session_is_a_refunded_discrepancy_not_a_second_purchase() {
    let app = spawn_app().await;
    let user = "two-tabs";
    let s1 = app.create_session(user, "pro-monthly").await;
    let s2 = app.renew(&s1.id, "basic-monthly").await.unwrap().session.unwrap();
    assert_eq!(order(&app, &s1.order_id).await.status, bpb::OrderStatus::Cancelled as i32, "cancelled with the retirement");

    let (p1, sig1) = app.pay(&s1.order_id);
    let e = app.complete(&s1.id, &p1, &sig1).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_CANCELLED"));
    assert_eq!(app.get_session(&s2.id).await.status, SessionStatus::Active as i32, "the current checkout is untouched");
    let (p2, sig2) = app.pay(&s2.order_id);
    let done = app.complete(&s2.id, &p2, &sig2).await.unwrap().session.unwrap();
    assert_eq!(done.status, SessionStatus::Completed as i32);

    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user}' AND order_id IS NOT NULL"))
            .await,
        1
    );
    assert_eq!(
        scalar(
            &mut db,
            &format!(
                "SELECT count(*) AS n FROM payment_discrepancies WHERE kind = 'ORDER_CANCELLED' AND order_id = '{}'",
                s1.order_id
            )
        )
        .await,
        1
    );
    reconcile_refunds(&app, 1).await;
}

/// Two orders of one user open at once (billing alone, no checkout): the
/// older one paid first no longer buys a subscription that the newer one's
/// payment then replaces. Paid while a newer purchase is open, it is
/// superseded: one subscription, one discrepancy, refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_order_paid_while_a_newer_one_is_open_never_becomes_a_second_subscription() {
    let app = spawn_app().await;
    let old = app.order("both-open", "pro-monthly").await;
    let new = app.order("both-open", "basic-monthly").await;
    let (po, so) = app.pay(&old.id);
    let mut b = app.billing.clone();
    let e = b
        .verify_payment(bpb::VerifyPaymentRequest { order_id: old.id.clone(), payment_id: po, signature: so })
        .await
        .unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_SUPERSEDED"));
    let (pn, sn) = app.pay(&new.id);
    b.verify_payment(bpb::VerifyPaymentRequest { order_id: new.id.clone(), payment_id: pn, signature: sn }).await.unwrap();
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'both-open' AND order_id IS NOT NULL").await,
        1
    );
    reconcile_refunds(&app, 1).await;
}

/// Billing cannot cancel at retire time (the order's row is held, so
/// CancelOrders runs out of time): the plan change still succeeds, the
/// intent is stored with the retirement, and the completion-sync job
/// finishes the cancellation; a payment afterwards is a refunded
/// discrepancy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancellation_billing_could_not_take_at_retire_time_is_finished_by_the_job() {
    let app = spawn_app_with(Options { lock_timeout: std::time::Duration::from_millis(200), ..Options::default() }).await;
    let user = "held";
    let s1 = app.create_session(user, "pro-monthly").await;
    let mut holder = app.billing_db().await;
    exec(&mut holder, "BEGIN").await;
    exec(&mut holder, &format!("SELECT id FROM orders WHERE id = '{}' FOR UPDATE", s1.order_id)).await;
    let s2 = app.renew(&s1.id, "basic-monthly").await.unwrap().session.unwrap();
    exec(&mut holder, "ROLLBACK").await;
    assert_eq!(order(&app, &s1.order_id).await.status, bpb::OrderStatus::Created as i32, "billing was not reached");
    let mut cdb = app.checkout_db().await;
    assert_eq!(scalar(&mut cdb, "SELECT count(*) AS n FROM checkout_sessions WHERE order_cancellation = 'PENDING'").await, 1);

    let out = sync(&app).await;
    assert!(out.contains("orders cancelled 1"), "{out}");
    assert_eq!(order(&app, &s1.order_id).await.status, bpb::OrderStatus::Cancelled as i32);
    assert_eq!(scalar(&mut cdb, "SELECT count(*) AS n FROM checkout_sessions WHERE order_cancellation = 'PENDING'").await, 0);
    assert!(sync(&app).await.contains("orders cancelled 0"), "a second run has nothing to do");

    let (p1, _) = app.pay(&s1.order_id);
    let hook = app.captured_webhook(&s1.order_id, &p1, s1.amount_minor, &s1.currency, "evt-held-1");
    assert_eq!(app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner().outcome, "DISCREPANCY");
    let (p2, sig2) = app.pay(&s2.order_id);
    app.complete(&s2.id, &p2, &sig2).await.unwrap();
    reconcile_refunds(&app, 1).await;
}

/// CreateSession and RenewSession of one user racing: one ACTIVE session,
/// and every session they retired has its order cancelled, so of payments of
/// every stored session's order exactly one buys a subscription and the rest
/// are refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_and_renews_keep_one_active_session_and_cancel_every_retired_order() {
    let app = spawn_app().await;
    let user = "racer";
    let first = app.create_session(user, "basic-monthly").await;
    let plans = ["basic-monthly", "pro-monthly"];
    let calls = (0..24).map(|i| {
        let mut c = app.checkout.clone();
        let first = first.id.clone();
        async move {
            let plan = plans[i % 2].to_owned();
            let r = if i % 3 == 0 {
                c.renew_session(cpb::RenewSessionRequest { id: first, plan_id: plan, ..Default::default() }).await.map(|_| ())
            } else {
                c.create_session(cpb::CreateSessionRequest { user_id: user.into(), plan_id: plan, ..Default::default() })
                    .await
                    .map(|_| ())
            };
            match r {
                Ok(()) => Ok(()),
                Err(e) if matches!(e.code(), Code::FailedPrecondition | Code::Aborted) => Ok(()),
                Err(e) => Err(e),
            }
        }
    });
    for r in join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(active_sessions(&app, user).await, 1);
    sync(&app).await;
    let mut cdb = app.checkout_db().await;
    let sessions: Vec<(String, String, i64, String)> = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            order_id: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            amount_minor: i64,
            #[diesel(sql_type = diesel::sql_types::Text)]
            currency: String,
        }
        diesel::sql_query(format!(
            "SELECT order_id, status, amount_minor, currency::text AS currency FROM checkout_sessions WHERE user_id = '{user}'"
        ))
        .load::<Row>(&mut cdb)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.order_id, r.status, r.amount_minor, r.currency))
        .collect()
    };
    assert!(sessions.len() > 2, "{sessions:?}");
    for (order_id, status, _, _) in &sessions {
        let want = if status == "ACTIVE" { bpb::OrderStatus::Created } else { bpb::OrderStatus::Cancelled };
        assert_eq!(order(&app, order_id).await.status, want as i32, "{status} session's order {order_id}");
    }
    // Orders of starts that lost the race (no session stored them) are
    // withdrawn too: only the ACTIVE checkout's order is open, so nothing
    // the customer was never shown supersedes it.
    let mut bdb = app.billing_db().await;
    assert_eq!(
        scalar(&mut bdb, &format!("SELECT count(*) AS n FROM orders WHERE user_id = '{user}' AND status = 'CREATED'")).await,
        1
    );
    // The customer pays every checkout they were shown.
    for (i, (order_id, _, amount, currency)) in sessions.iter().enumerate() {
        let (p, _) = app.pay(order_id);
        let hook = app.captured_webhook(order_id, &p, *amount, currency, &format!("evt-racer-{i}"));
        app.billing.clone().handle_gateway_webhook(hook).await.unwrap();
    }
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user}' AND order_id IS NOT NULL"))
            .await,
        1
    );
    reconcile_refunds(&app, sessions.len() - 1).await;
    sync(&app).await;
    assert_eq!(active_sessions(&app, user).await, 0, "the paid checkout completed");
}

/// Billing cannot take a CancelOrders page (the order's row is held) while
/// a customer paid their current checkout and never came back: the
/// completion-sync run still completes that checkout, and the next run
/// finishes the cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancellation_billing_cannot_take_never_stops_the_sync_from_completing_paid_checkouts() {
    let app = spawn_app_with(Options { lock_timeout: std::time::Duration::from_millis(200), ..Options::default() }).await;
    let user = "held-sync";
    let s1 = app.create_session(user, "pro-monthly").await;
    let mut holder = app.billing_db().await;
    exec(&mut holder, "BEGIN").await;
    exec(&mut holder, &format!("SELECT id FROM orders WHERE id = '{}' FOR UPDATE", s1.order_id)).await;
    let s2 = app.renew(&s1.id, "basic-monthly").await.unwrap().session.unwrap();
    let (p2, _) = app.pay(&s2.order_id);
    let hook = app.captured_webhook(&s2.order_id, &p2, s2.amount_minor, &s2.currency, "evt-held-sync-1");
    app.billing.clone().handle_gateway_webhook(hook).await.unwrap();

    let out = checkout_svc::jobs::run_once(&app.checkout_app, "completion-sync").await;
    let out = out.expect("one CancelOrders page billing cannot take does not fail the run");
    assert!(out.contains("completed 1"), "{out}");
    assert_eq!(app.get_session(&s2.id).await.status, SessionStatus::Completed as i32);
    exec(&mut holder, "ROLLBACK").await;
    assert_eq!(order(&app, &s1.order_id).await.status, bpb::OrderStatus::Created as i32, "left for the next run");

    let out = sync(&app).await;
    assert!(out.contains("orders cancelled 1"), "{out}");
    assert_eq!(order(&app, &s1.order_id).await.status, bpb::OrderStatus::Cancelled as i32);
    reconcile_refunds(&app, 0).await;
}
