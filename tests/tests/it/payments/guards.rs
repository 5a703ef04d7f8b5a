//! Guards of payments: capture under the order lock, the newer order, a
//! refused payment met again, and one subscription per order (the unique
//! key as the last line of defence). See `support::guards`.
use std::time::Duration as StdDuration;

use proto::billing::v1::{self as bpb};
use tests::{
    helpers::{exec, lock_waiters, scalar, wait_for_waiters},
    spawn_app,
};
use tonic::Code;

use crate::support::guards::*;

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
        async move { b.cancel_orders(bpb::CancelOrdersRequest { order_ids: vec![id], ..Default::default() }).await }
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

/// Billing allows one subscription per order (whatever its status).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_subscriptions_refuse_a_second_subscription_for_one_order() {
    let app = spawn_app().await;
    let order = app.order("twice", "basic-monthly").await;
    let other = app.order("twice", "pro-monthly").await;
    let mut db = app.billing_db().await;
    // CANCELLED rows: the one-ACTIVE-per-user rule is not what is tested.
    let insert = |order_id: &str| {
        format!(
            "INSERT INTO subscriptions (id, user_id, plan_id, order_id, status, anchor_at, period_start, period_end, \
             credits_granted, credits_remaining, ended_at) VALUES (gen_random_uuid(), 'twice', 'basic-monthly', '{order_id}', \
             'CANCELLED', now(), now(), now() + interval '1 month', 0, 0, now())"
        )
    };
    assert_eq!(exec(&mut db, &insert(&order.id)).await, 1);
    assert_eq!(exec(&mut db, &insert(&other.id)).await, 1, "another order's subscription is fine");
    let detail = unique_violation(&mut db, &insert(&order.id)).await;
    assert!(detail.contains("(order_id)"), "refused by a unique key on the order: {detail}");
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
}
