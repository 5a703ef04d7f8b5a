//! Orders of retired checkout sessions (docs/design.md, Invariants 26 and
//! 27): a renewal order stays payable from whichever checkout the customer
//! comes back with, and every other order of a session that checkout retired
//! is cancelled at billing, durably, so paying it is a refundable
//! discrepancy, never a second purchase.
use crate::{hardening_billing::precondition_type, lifecycle::ts};
use chrono::Duration;
use futures::future::join_all;
use proto::{
    billing::v1 as bpb,
    checkout::v1::{self as cpb, SessionStatus},
};
use tests::{
    TestApp,
    harness::{Options, spawn_app_with},
    helpers::{assert_ledger_matches_balances, exec, scalar},
    spawn_app,
};
use tonic::Code;

async fn order(app: &TestApp, id: &str) -> bpb::Order {
    let mut b = app.billing.clone();
    b.get_order(bpb::GetOrderRequest { id: id.into() }).await.unwrap().into_inner().order.unwrap()
}

async fn recover(app: &TestApp, id: &str) -> Result<cpb::RecoverSessionResponse, tonic::Status> {
    let mut c = app.checkout.clone();
    c.recover_session(cpb::RecoverSessionRequest { id: id.into() }).await.map(|r| r.into_inner())
}

async fn sync(app: &TestApp) -> String {
    checkout_svc::jobs::run_once(&app.checkout_app, "completion-sync").await.unwrap()
}

async fn reconcile(app: &TestApp, fix: bool) -> Vec<bpb::Finding> {
    app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix }).await.unwrap().into_inner().findings
}

/// Reconcile reports exactly `discrepancies` payment discrepancies and
/// nothing else, `--fix` refunds each once, and then nothing is left.
async fn reconcile_refunds(app: &TestApp, discrepancies: usize) {
    let found = reconcile(app, false).await;
    assert_eq!(found.len(), discrepancies, "{found:?}");
    assert!(found.iter().all(|f| f.kind == "PAYMENT_DISCREPANCY"), "{found:?}");
    let fixed = reconcile(app, true).await;
    assert_eq!(fixed.iter().filter(|f| f.fixed).count(), discrepancies, "{fixed:?}");
    for fix in [false, true] {
        assert!(reconcile(app, fix).await.is_empty(), "nothing left");
    }
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM refunds WHERE discrepancy_id IS NOT NULL AND status = 'PROCESSED'").await,
        discrepancies as i64,
        "one refund per payment that bought nothing"
    );
    assert_ledger_matches_balances(&mut db).await;
}

async fn active_sessions(app: &TestApp, user: &str) -> i64 {
    let mut db = app.checkout_db().await;
    scalar(&mut db, &format!("SELECT count(*) AS n FROM checkout_sessions WHERE user_id = '{user}' AND status = 'ACTIVE'")).await
}

/// The customer without a saved card comes back to pay the renewal again
/// and again: a second CreateSession, RecoverSession of the first checkout,
/// a plan change and RenewSession back, CreateSession after the checkout
/// lapsed. Each hands out the renewal order, the user keeps one ACTIVE
/// session, retiring those sessions never cancels the renewal (it is still
/// owed), and paying it renews the same subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_checkout_works_from_every_way_back_and_pays_the_renewal() {
    let app = spawn_app().await;
    let user = "renew-again";
    let sub = app.subscribe(user, "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.clock.set(end - Duration::hours(72));
    app.run_job("renewals").await;
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    assert!(!renewal.is_empty());

    let s1 = app.create_session(user, "basic-monthly").await;
    assert_eq!(s1.order_id, renewal);
    let s2 = app.create_session(user, "basic-monthly").await;
    assert_eq!(s2.order_id, renewal, "a second renewal checkout hands out the renewal order again");
    assert_eq!(app.get_session(&s1.id).await.status, SessionStatus::Invalidated as i32);
    let s3 = recover(&app, &s1.id).await.unwrap().session.unwrap();
    assert_eq!((s3.order_id.as_str(), s3.recovered_from.as_str()), (renewal.as_str(), s1.id.as_str()));
    let s4 = app.renew(&s3.id, "pro-monthly").await.unwrap().session.unwrap();
    assert_ne!(s4.order_id, renewal, "another plan is a new purchase");
    let s5 = app.renew(&s4.id, "basic-monthly").await.unwrap().session.unwrap();
    assert_eq!(s5.order_id, renewal, "back to the plan: the renewal again");
    app.clock.advance(Duration::hours(25));
    let s6 = app.create_session(user, "basic-monthly").await;
    assert_eq!(s6.order_id, renewal, "after the checkout lapsed");
    assert_eq!(app.get_session(&s5.id).await.status, SessionStatus::Expired as i32);
    assert_eq!(active_sessions(&app, user).await, 1);

    // A CreateOrder for a session checkout never stored (a start that lost
    // its transaction) leaves the renewal order where it was.
    let mut b = app.billing.clone();
    let orphan = uuid::Uuid::new_v4().to_string();
    let got = b
        .create_order(bpb::CreateOrderRequest {
            checkout_session_id: orphan.clone(),
            user_id: user.into(),
            plan_id: "basic-monthly".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(got.id, renewal);
    assert_ne!(order(&app, &renewal).await.checkout_session_id, orphan, "billing never points at a session that was not stored");

    // The retired sessions' cancellations are finished: the plan change's
    // order is cancelled, the renewal is still owed.
    sync(&app).await;
    assert_eq!(order(&app, &s4.order_id).await.status, bpb::OrderStatus::Cancelled as i32);
    assert_eq!(order(&app, &renewal).await.status, bpb::OrderStatus::Created as i32);

    let (p, sig) = app.pay(&renewal);
    let done = app.complete(&s6.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!((done.status, done.subscription_id.as_str()), (SessionStatus::Completed as i32, sub.id.as_str()));
    // The customer's old tab brings the same payment: one completion.
    let again = app.complete(&s2.id, &p, &sig).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.session.unwrap().id, s6.id, "the checkout the payment completed");
    sync(&app).await;
    let mut cdb = app.checkout_db().await;
    assert_eq!(
        scalar(
            &mut cdb,
            &format!("SELECT count(*) AS n FROM checkout_sessions WHERE order_id = '{renewal}' AND status = 'COMPLETED'")
        )
        .await,
        1
    );
    app.clock.set(end);
    app.run_job("rollover").await;
    let renewed = app.subscription(&sub.id).await;
    assert_eq!(renewed.status, bpb::SubscriptionStatus::Active as i32);
    assert_eq!((ts(&renewed.period_start), renewed.credits_granted), (end, 300), "the next period opened, paid");
    reconcile_refunds(&app, 0).await;
}

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
                c.renew_session(cpb::RenewSessionRequest { id: first, plan_id: plan }).await.map(|_| ())
            } else {
                c.create_session(cpb::CreateSessionRequest { user_id: user.into(), plan_id: plan }).await.map(|_| ())
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

/// The CREATED purchases (not renewals) of `user` at billing.
async fn open_orders(app: &TestApp, user: &str) -> Vec<String> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let mut db = app.billing_db().await;
    diesel::sql_query(format!(
        "SELECT id FROM orders WHERE user_id = '{user}' AND status = 'CREATED' AND renews_subscription_id IS NULL"
    ))
    .load::<Row>(&mut db)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.id)
    .collect()
}

/// A raw connection holding the advisory lock every start of `users` takes
/// in its transaction (after billing made its order), until ROLLBACK.
async fn hold_users(app: &TestApp, users: &[&str]) -> diesel_async::AsyncPgConnection {
    let mut holder = app.checkout_db().await;
    exec(&mut holder, "BEGIN").await;
    for u in users {
        exec(&mut holder, &format!("SELECT pg_advisory_xact_lock(hashtextextended('{u}', 7))")).await;
    }
    holder
}

/// Two tabs change the plan of one checkout at once, each with its own
/// idempotency key (a third plan, so both are real changes). Both got an
/// order from billing; one wins, the other is refused SESSION_CHANGED. Its
/// retry would be a renew of another head (another session id, another
/// order), so the loser's order is withdrawn at once: nothing the customer
/// was never shown supersedes the winner's checkout, which pays normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tabs_changing_plan_at_once_withdraw_the_losers_order_and_the_winner_pays() {
    let app = spawn_app_with(Options { lock_timeout: std::time::Duration::from_secs(20), ..Options::default() }).await;
    exec(
        &mut app.billing_db().await,
        "INSERT INTO plans (id, name, price_minor, currency, credits_per_period) VALUES ('team-monthly', 'Team', 299900, 'INR', 3000)",
    )
    .await;
    let user = "two-tabs-renew";
    let s0 = app.create_session(user, "basic-monthly").await;
    let mut holder = hold_users(&app, &[user]).await;
    let calls = [("tab-1", "pro-monthly"), ("tab-2", "team-monthly")].map(|(key, plan)| {
        let mut c = app.checkout.clone();
        let req = cpb::RenewSessionRequest { id: s0.id.clone(), plan_id: plan.into() };
        tokio::spawn(async move { c.renew_session(tests::clients::with_key(req, key)).await.map(|r| r.into_inner()) })
    });
    let mut observer = app.checkout_db().await;
    assert!(
        tests::helpers::wait_for_waiters(&mut observer, 2, std::time::Duration::from_secs(15)).await,
        "both renews got an order"
    );
    exec(&mut holder, "ROLLBACK").await;
    let mut won = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => won.push(r.session.unwrap()),
            Err(e) => assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "SESSION_CHANGED")),
        }
    }
    assert_eq!(won.len(), 1, "one tab wins");
    let winner = won.remove(0);
    assert_eq!(open_orders(&app, user).await, vec![winner.order_id.clone()], "only the winner's order is open");

    let (p, sig) = app.pay(&winner.order_id);
    let done = app.complete(&winner.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!(done.status, SessionStatus::Completed as i32);
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user}' AND order_id IS NOT NULL"))
            .await,
        1
    );
    reconcile_refunds(&app, 0).await;
}

/// A keyed CreateSession gets its order from billing, then its transaction
/// refuses it (the key was taken meanwhile by another request): no session
/// stores that order and no retry under that key will ever ask for it. It
/// is withdrawn, so the user's existing checkout stays payable instead of
/// being superseded by an order nobody was shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_refused_after_billing_made_its_order_leaves_the_users_checkout_payable() {
    let app = spawn_app_with(Options { lock_timeout: std::time::Duration::from_secs(20), ..Options::default() }).await;
    let user = "refused-start";
    let s0 = app.create_session(user, "basic-monthly").await;
    let mut first = hold_users(&app, &["other-user"]).await;
    let mut second = hold_users(&app, &[user]).await;
    let call = |u: &str| {
        let mut c = app.checkout.clone();
        let req = cpb::CreateSessionRequest { user_id: u.into(), plan_id: "pro-monthly".into() };
        tokio::spawn(async move { c.create_session(tests::clients::with_key(req, "shared-key")).await.map(|r| r.into_inner()) })
    };
    let (other, mine) = (call("other-user"), call(user));
    let mut observer = app.checkout_db().await;
    assert!(tests::helpers::wait_for_waiters(&mut observer, 2, std::time::Duration::from_secs(15)).await, "both got an order");
    exec(&mut first, "ROLLBACK").await;
    other.await.unwrap().unwrap();
    exec(&mut second, "ROLLBACK").await;
    let e = mine.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(app.get_session(&s0.id).await.status, SessionStatus::Active as i32, "the existing checkout is untouched");
    assert_eq!(open_orders(&app, user).await, vec![s0.order_id.clone()], "the refused start's order is withdrawn");

    let (p, sig) = app.pay(&s0.order_id);
    let done = app.complete(&s0.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!(done.status, SessionStatus::Completed as i32);
    reconcile_refunds(&app, 0).await;
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

/// A CreateSession (under `key`, if any) for `user` that gets its order
/// from billing, then finds no database connection (the pool's one
/// connection is held by another request): its error.
async fn create_without_connection(app: &TestApp, user: &str, key: Option<&str>) -> tonic::Status {
    // Billing makes the order only when the test lets it, so the pool can
    // be taken meanwhile.
    let mut orders_held = app.billing_db().await;
    exec(&mut orders_held, "BEGIN").await;
    exec(&mut orders_held, "LOCK TABLE orders IN EXCLUSIVE MODE").await;
    let start = {
        let mut c = app.checkout.clone();
        let req = cpb::CreateSessionRequest { user_id: user.into(), plan_id: "pro-monthly".into() };
        let req = match key {
            Some(k) => tests::clients::with_key(req, k),
            None => tonic::Request::new(req),
        };
        tokio::spawn(async move { c.create_session(req).await.map(|r| r.into_inner()) })
    };
    let mut billing_observer = app.billing_db().await;
    assert!(tests::helpers::wait_for_waiters(&mut billing_observer, 1, std::time::Duration::from_secs(15)).await);
    // Another request takes checkout's only pooled connection and keeps it
    // (its idempotency look-up waits for a lock the test holds).
    let mut keys_held = app.checkout_db().await;
    exec(&mut keys_held, "BEGIN").await;
    exec(&mut keys_held, "LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE").await;
    let other = {
        let mut c = app.checkout.clone();
        let req = cpb::CreateSessionRequest { user_id: format!("pool-holder-{user}"), plan_id: "basic-monthly".into() };
        tokio::spawn(async move { c.create_session(tests::clients::with_key(req, "holder")).await.map(|r| r.into_inner()) })
    };
    let mut checkout_observer = app.checkout_db().await;
    assert!(tests::helpers::wait_for_waiters(&mut checkout_observer, 1, std::time::Duration::from_secs(15)).await);
    exec(&mut orders_held, "ROLLBACK").await;
    let e = start.await.unwrap().unwrap_err();
    exec(&mut keys_held, "ROLLBACK").await;
    other.await.unwrap().unwrap();
    e
}

fn one_connection() -> Options {
    Options { pool_size: 1, lock_timeout: std::time::Duration::from_secs(20), ..Options::default() }
}

/// A CreateSession without a key gets its order from billing, then finds no
/// database connection: the start fails UNAVAILABLE, and the order it will
/// never store is withdrawn, so the user's existing checkout stays payable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_that_finds_no_connection_after_billing_made_its_order_withdraws_it() {
    let app = spawn_app_with(one_connection()).await;
    let user = "no-connection";
    let s0 = app.create_session(user, "basic-monthly").await;
    let e = create_without_connection(&app, user, None).await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    assert_eq!(app.get_session(&s0.id).await.status, SessionStatus::Active as i32);
    assert_eq!(open_orders(&app, user).await, vec![s0.order_id.clone()], "the failed start's order is withdrawn");
    let (p, sig) = app.pay(&s0.order_id);
    assert_eq!(app.complete(&s0.id, &p, &sig).await.unwrap().session.unwrap().status, SessionStatus::Completed as i32);
    reconcile_refunds(&app, 0).await;
}

/// The same failure under an idempotency key keeps the order: the retry with
/// that key asks billing for the very same order and stores it, instead of
/// being refused ORDER_CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_start_that_finds_no_connection_keeps_its_order_for_the_retry() {
    let app = spawn_app_with(one_connection()).await;
    let user = "no-connection-keyed";
    let s0 = app.create_session(user, "basic-monthly").await;
    let e = create_without_connection(&app, user, Some("retry-me")).await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let kept = open_orders(&app, user).await;
    assert_eq!(kept.len(), 2, "kept for the retry: {kept:?}");

    let req = cpb::CreateSessionRequest { user_id: user.into(), plan_id: "pro-monthly".into() };
    let s1 = app.checkout.clone().create_session(tests::clients::with_key(req, "retry-me")).await.unwrap().into_inner();
    let s1 = s1.session.unwrap();
    assert!(kept.contains(&s1.order_id) && s1.order_id != s0.order_id, "the retry stores the kept order");
    assert_eq!(open_orders(&app, user).await, vec![s1.order_id.clone()], "the replaced checkout's order is cancelled");
    let (p, sig) = app.pay(&s1.order_id);
    assert_eq!(app.complete(&s1.id, &p, &sig).await.unwrap().session.unwrap().status, SessionStatus::Completed as i32);
    reconcile_refunds(&app, 0).await;
}

/// RecoverSession of a checkout at the edge of retention gets its order
/// from billing, then finds the session deleted by cleanup meanwhile
/// (NOT_FOUND): no recovery will ever ask for that order again, so it is
/// withdrawn and the user's current checkout stays payable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recovery_refused_after_billing_made_its_order_withdraws_it() {
    let app = spawn_app_with(Options { lock_timeout: std::time::Duration::from_secs(20), ..Options::default() }).await;
    let user = "late-recovery";
    let s0 = app.create_session(user, "basic-monthly").await;
    app.clock.advance(Duration::days(7) - Duration::hours(1));
    let s1 = app.create_session(user, "pro-monthly").await;
    let mut holder = hold_users(&app, &[user]).await;
    let recovery = {
        let mut c = app.checkout.clone();
        let id = s0.id.clone();
        tokio::spawn(async move { c.recover_session(cpb::RecoverSessionRequest { id }).await.map(|r| r.into_inner()) })
    };
    let mut observer = app.checkout_db().await;
    assert!(
        tests::helpers::wait_for_waiters(&mut observer, 1, std::time::Duration::from_secs(15)).await,
        "billing made its order"
    );
    app.clock.advance(Duration::hours(2));
    checkout_svc::jobs::run_once(&app.checkout_app, "cleanup").await.unwrap();
    exec(&mut holder, "ROLLBACK").await;
    let e = recovery.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    assert_eq!(open_orders(&app, user).await, vec![s1.order_id.clone()], "the refused recovery's order is withdrawn");
    let (p, sig) = app.pay(&s1.order_id);
    assert_eq!(app.complete(&s1.id, &p, &sig).await.unwrap().session.unwrap().status, SessionStatus::Completed as i32);
    reconcile_refunds(&app, 0).await;
}
