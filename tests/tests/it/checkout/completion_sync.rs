//! Cross-service consistency: a paid order always ends in a COMPLETED
//! checkout session, even when the customer never comes back: payment
//! captured, nobody returned (docs/design.md, Invariants 3).
use chrono::Duration;
use futures::future::join_all;
use proto::{
    billing::v1 as bpb,
    checkout::v1::{self as cpb, SessionStatus},
};
use tests::{helpers::scalar, spawn_app};
use tonic::Code;

async fn capture_by_webhook(app: &mut tests::TestApp, s: &cpb::Session, event: &str) -> String {
    let (payment_id, _) = app.pay(&s.order_id);
    let hook = app.captured_webhook(&s.order_id, &payment_id, s.amount_minor, &s.currency, event);
    let r = app.billing.handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!(r.outcome, "PROCESSED");
    r.subscription_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_only_payment_is_completed_by_one_sync_run() {
    let mut app = spawn_app().await;
    let s = app.create_session("gone", "pro-monthly").await;
    let other = app.create_session("unpaid", "pro-monthly").await;
    let sub = capture_by_webhook(&mut app, &s, "evt-gone").await;
    let out = checkout_svc::jobs::run_once(&app.checkout_app, "completion-sync").await.unwrap();
    assert!(out.contains("completed 1"), "{out}");
    let done = app.get_session(&s.id).await;
    assert_eq!(done.status, SessionStatus::Completed as i32);
    assert_eq!(done.subscription_id, sub);
    assert!(!done.payment_id.is_empty());
    assert_eq!(app.get_session(&other.id).await.status, SessionStatus::Active as i32, "unpaid sessions are left alone");
    // A second run has nothing to do.
    let out = checkout_svc::jobs::run_once(&app.checkout_app, "completion-sync").await.unwrap();
    assert!(out.contains("completed 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_then_paid_is_completed_and_survives_cleanup() {
    let mut app = spawn_app().await;
    let s = app.create_session("tardy", "basic-monthly").await;
    app.clock.advance(Duration::hours(25));
    assert_eq!(app.get_session(&s.id).await.status, SessionStatus::Expired as i32);
    let sub = capture_by_webhook(&mut app, &s, "evt-tardy").await;
    checkout_svc::jobs::run_once(&app.checkout_app, "completion-sync").await.unwrap();
    let done = app.get_session(&s.id).await;
    assert_eq!((done.status, done.subscription_id.clone()), (SessionStatus::Completed as i32, sub.clone()));
    app.clock.advance(Duration::days(8));
    app.checkout_admin.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: false }).await.unwrap();
    assert_eq!(app.get_session(&s.id).await.subscription_id, sub, "cleanup at 8 days keeps the paid session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_completes_paid_sessions_instead_of_deleting_them() {
    let mut app = spawn_app().await;
    let s = app.create_session("paid-late", "basic-monthly").await;
    let sub = capture_by_webhook(&mut app, &s, "evt-late").await;
    app.clock.advance(Duration::days(8));
    // No sync ran: cleanup itself asks billing first.
    let r = app.checkout_admin.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: false }).await.unwrap().into_inner();
    assert_eq!((r.completed_by_sync, r.deleted, r.expired), (1, 0, 0));
    assert_eq!(app.get_session(&s.id).await.subscription_id, sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_down_during_cleanup_touches_nothing_then_recovers() {
    let mut app = spawn_app().await;
    let paid = app.create_session("down-paid", "basic-monthly").await;
    let unpaid = app.create_session("down-unpaid", "basic-monthly").await;
    let sub = capture_by_webhook(&mut app, &paid, "evt-down").await;
    app.clock.advance(Duration::days(8));
    app.stop_billing().await;
    let r = app.checkout_admin.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: false }).await.unwrap().into_inner();
    assert_eq!((r.expired, r.deleted, r.completed_by_sync), (0, 0, 0));
    assert_eq!(r.skipped_billing_unavailable, 2);
    let mut db = app.checkout_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE status = 'ACTIVE'").await,
        2,
        "nothing changed"
    );
    app.start_billing_again().await.unwrap();
    let r = app.checkout_admin.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: false }).await.unwrap().into_inner();
    assert_eq!((r.completed_by_sync, r.deleted, r.skipped_billing_unavailable), (1, 1, 0));
    assert_eq!(app.get_session(&paid.id).await.subscription_id, sub);
    assert_eq!(
        app.checkout.get_session(cpb::GetSessionRequest { id: unpaid.id.clone() }).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_complete_and_sync_agree_on_one_outcome() {
    let mut app = spawn_app().await;
    for round in 0..5 {
        let s = app.create_session(&format!("both-{round}"), "pro-monthly").await;
        let (p, sig) = app.pay(&s.order_id);
        let hook = app.captured_webhook(&s.order_id, &p, s.amount_minor, &s.currency, &format!("evt-both-{round}"));
        app.billing.handle_gateway_webhook(hook).await.unwrap();
        let completes = join_all((0..5).map(|_| app.complete(&s.id, &p, &sig)));
        let syncs = join_all((0..3).map(|_| checkout_svc::jobs::run_once(&app.checkout_app, "completion-sync")));
        let (completes, syncs) = tokio::join!(completes, syncs);
        for s in syncs {
            s.unwrap();
        }
        let subs: Vec<String> = completes.into_iter().map(|r| r.unwrap().session.unwrap().subscription_id).collect();
        assert!(subs.iter().all(|x| *x == subs[0]), "{subs:?}");
        let read = app.get_session(&s.id).await;
        assert_eq!((read.status, read.subscription_id), (SessionStatus::Completed as i32, subs[0].clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_get_orders_is_bounded_and_reports_payment_state() {
    let mut app = spawn_app().await;
    let s = app.create_session("batch", "pro-monthly").await;
    let (p, sig) = app.pay(&s.order_id);
    let done = app.complete(&s.id, &p, &sig).await.unwrap().session.unwrap();
    let r = app
        .billing
        .batch_get_orders(bpb::BatchGetOrdersRequest {
            order_ids: vec![s.order_id.clone(), "order_unknown".into()],
            checkout_session_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.orders.len(), 1, "unknown ids are left out");
    let o = &r.orders[0];
    assert_eq!(
        (o.status, o.payment_id.clone(), o.subscription_id.clone()),
        (bpb::OrderStatus::Paid as i32, p, done.subscription_id)
    );
    let by_session = app
        .billing
        .batch_get_orders(bpb::BatchGetOrdersRequest {
            order_ids: vec![],
            checkout_session_ids: vec![s.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_session.orders[0].id, s.order_id);
    let too_many = (0..501).map(|i| format!("order_{i}")).collect();
    let e = app
        .billing
        .batch_get_orders(bpb::BatchGetOrdersRequest { order_ids: too_many, checkout_session_ids: vec![], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_but_unsynced_session_is_completed_not_sold_again() {
    let mut app = spawn_app().await;
    let expired = app.create_session("twice", "pro-monthly").await;
    app.clock.advance(Duration::hours(25));
    capture_by_webhook(&mut app, &expired, "evt-twice").await;
    let e = app
        .checkout
        .recover_session(cpb::RecoverSessionRequest { id: expired.id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(app.get_session(&expired.id).await.status, SessionStatus::Completed as i32);

    let active = app.create_session("twice-2", "pro-monthly").await;
    capture_by_webhook(&mut app, &active, "evt-twice-2").await;
    let e = app.renew(&active.id, "basic-monthly").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(app.get_session(&active.id).await.status, SessionStatus::Completed as i32);
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions").await, 2, "no new session was sold");
}

/// The old tab still holds a payable order only when it offered the
/// renewal order, which every renewal checkout shares (after a plan change
/// the old order is cancelled instead: `retired_orders.rs`). Paid there, the
/// old session completes and the user's ACTIVE one is retired, so it cannot
/// take a second payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paying_an_old_session_retires_the_users_active_one() {
    let app = spawn_app().await;
    let sub = app.subscribe("switcher", "basic-monthly").await;
    app.clock.set(crate::subscriptions::ts(&sub.period_end) - Duration::hours(72));
    app.run_job("renewals").await;
    let a = app.create_session("switcher", "basic-monthly").await;
    app.clock.advance(Duration::hours(25));
    let b = app.create_session("switcher", "basic-monthly").await;
    assert_eq!(a.order_id, b.order_id, "both renewal checkouts offer the renewal order");
    // The customer pays from the old tab.
    let (p, sig) = app.pay(&a.order_id);
    assert_eq!(app.complete(&a.id, &p, &sig).await.unwrap().session.unwrap().status, SessionStatus::Completed as i32);
    let b_now = app.get_session(&b.id).await;
    assert_eq!(b_now.status, SessionStatus::Invalidated as i32, "the newer checkout cannot take a second payment");
    assert_eq!(b_now.replaced_by, a.id);
    let (p2, sig2) = app.pay(&b.order_id);
    assert_eq!(
        app.complete(&b.id, &p2, &sig2).await.unwrap_err().code(),
        Code::FailedPrecondition,
        "a second payment buys nothing"
    );
    let findings = app.reconcile(true).await;
    assert_eq!(findings.iter().filter(|f| f.kind == "PAYMENT_DISCREPANCY" && f.fixed).count(), 1, "{findings:?}");
    assert_eq!(findings.len(), 1, "{findings:?}");
    let mut db = app.billing_db().await;
    tests::helpers::assert_ledger_matches_balances(&mut db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_cancels_the_order_before_deleting_so_a_late_payment_is_a_discrepancy() {
    let mut app = spawn_app().await;
    let s = app.create_session("very-late", "basic-monthly").await;
    app.clock.advance(Duration::days(8));
    let r = app.checkout_admin.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: false }).await.unwrap().into_inner();
    assert_eq!(r.deleted, 1);
    let order = app
        .billing
        .batch_get_orders(bpb::BatchGetOrdersRequest {
            order_ids: vec![s.order_id.clone()],
            checkout_session_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .orders
        .remove(0);
    assert_eq!(order.status, bpb::OrderStatus::Cancelled as i32, "the order is withdrawn before its session is deleted");
    // The customer pays the old order anyway: recorded, never silently lost.
    let (p, sig) = app.pay(&s.order_id);
    let hook = app.captured_webhook(&s.order_id, &p, s.amount_minor, &s.currency, "evt-very-late");
    assert_eq!(app.billing.handle_gateway_webhook(hook).await.unwrap().into_inner().outcome, "DISCREPANCY");
    let e = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: s.order_id.clone(), payment_id: p, signature: sig })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let findings =
        app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner().findings;
    assert!(findings.iter().any(|f| f.kind == "PAYMENT_DISCREPANCY"), "{findings:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE order_id IS NOT NULL").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_orders_keeps_paid_orders_paid() {
    let mut app = spawn_app().await;
    let paid = app.order("c-paid", "basic-monthly").await;
    let (p, sig) = app.pay(&paid.id);
    app.billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: paid.id.clone(), payment_id: p, signature: sig })
        .await
        .unwrap();
    let open = app.order("c-open", "basic-monthly").await;
    let r = app
        .billing
        .cancel_orders(bpb::CancelOrdersRequest {
            order_ids: vec![paid.id.clone(), open.id.clone(), "order_unknown".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .orders;
    let status = |id: &str| r.iter().find(|o| o.id == id).map(|o| o.status);
    assert_eq!(status(&paid.id), Some(bpb::OrderStatus::Paid as i32));
    assert_eq!(status(&open.id), Some(bpb::OrderStatus::Cancelled as i32));
    assert_eq!(r.len(), 2);
    let too_many = (0..501).map(|i| format!("order_{i}")).collect();
    assert_eq!(
        app.billing
            .cancel_orders(bpb::CancelOrdersRequest { order_ids: too_many, ..Default::default() })
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}
