//! Orders billing made for a start or recovery that did not finish are
//! withdrawn (or kept for a keyed retry).
use super::*;

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
    app.create_plan("team-monthly", "Team", 299900, 3000).await;
    let user = "two-tabs-renew";
    let s0 = app.create_session(user, "basic-monthly").await;
    let mut holder = hold_users(&app, &[user]).await;
    let calls = [("tab-1", "pro-monthly"), ("tab-2", "team-monthly")].map(|(key, plan)| {
        let mut c = app.checkout.clone();
        let req = cpb::RenewSessionRequest { id: s0.id.clone(), plan_id: plan.into(), ..Default::default() };
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
        let req = cpb::CreateSessionRequest { user_id: u.into(), plan_id: "pro-monthly".into(), ..Default::default() };
        tokio::spawn(async move { c.create_session(tests::clients::with_key(req, "shared-key")).await.map(|r| r.into_inner()) })
    };
    // The other user's request claims the key first, then this user's
    // request comes: started together, whichever the scheduler ran first
    // took the key, and this user's request could win it.
    let mut observer = app.checkout_db().await;
    let other = call("other-user");
    assert!(
        tests::helpers::wait_for_waiters(&mut observer, 1, std::time::Duration::from_secs(15)).await,
        "the other got an order"
    );
    let mine = call(user);
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
        let req = cpb::CreateSessionRequest { user_id: user.into(), plan_id: "pro-monthly".into(), ..Default::default() };
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
        let req = cpb::CreateSessionRequest {
            user_id: format!("pool-holder-{user}"),
            plan_id: "basic-monthly".into(),
            ..Default::default()
        };
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

    let req = cpb::CreateSessionRequest { user_id: user.into(), plan_id: "pro-monthly".into(), ..Default::default() };
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
        tokio::spawn(async move {
            c.recover_session(cpb::RecoverSessionRequest { id, ..Default::default() }).await.map(|r| r.into_inner())
        })
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
