//! Captures: a late payment of a superseded order, a refused payment met
//! again, captures racing, and orders that can no longer be paid.
use futures::future::join_all;
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, retrying, scalar},
    spawn_app,
};
use tonic::Code;

use crate::support::precondition_type;

async fn verify(app: &TestApp, order_id: &str, payment: &(String, String)) -> Result<bpb::VerifyPaymentResponse, tonic::Status> {
    let mut b = app.billing.clone();
    b.verify_payment(bpb::VerifyPaymentRequest {
        order_id: order_id.into(),
        payment_id: payment.0.clone(),
        signature: payment.1.clone(),
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_payment_of_a_superseded_order_is_a_discrepancy_never_a_downgrade() {
    let app = spawn_app().await;
    let old = app.order("late", "basic-monthly").await;
    let new = app.order("late", "pro-monthly").await;
    let bought = verify(&app, &new.id, &app.pay(&new.id)).await.unwrap().subscription.unwrap();

    // The old order's payment arrives late, through VerifyPayment...
    let e = verify(&app, &old.id, &app.pay(&old.id)).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_SUPERSEDED"), "{e:?}");
    // ...and another through the webhook.
    let (p2, _) = app.pay(&old.id);
    let hook = app.captured_webhook(&old.id, &p2, old.amount_minor, &old.currency, "evt-late");
    let r = app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!((r.outcome.as_str(), r.subscription_id.as_str()), ("DISCREPANCY", ""));

    let mut db = app.billing_db().await;
    let live = scalar(
        &mut db,
        &format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = 'late' AND status = 'ACTIVE' AND id = '{}'", bought.id),
    )
    .await;
    assert_eq!(live, 1, "the newer plan stays");
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", old.id)).await, 0);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies WHERE kind = 'ORDER_SUPERSEDED' AND status = 'OPEN'")
            .await,
        2,
        "both late payments are recorded for a refund"
    );
    // A check reports both; `fix` refunds each once, through the refund
    // path, and a second run finds nothing left; the subscription is
    // untouched.
    let check = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    assert_eq!(check.into_inner().findings.iter().filter(|f| f.kind == "PAYMENT_DISCREPANCY").count(), 2);
    let fixed = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap();
    let fixed = fixed.into_inner();
    assert_eq!(fixed.findings.iter().filter(|f| f.kind == "PAYMENT_DISCREPANCY" && f.fixed).count(), 2, "{:?}", fixed.findings);
    for fix in [true, false] {
        let r = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix }).await.unwrap().into_inner();
        assert!(r.findings.is_empty(), "nothing left: {:?}", r.findings);
    }
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM refunds WHERE discrepancy_id IS NOT NULL AND status = 'PROCESSED'").await,
        2,
        "one refund per late payment"
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies WHERE status = 'REFUNDED'").await, 2);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit WHERE kind = 'PAYMENT_DISCREPANCY' AND action = 'refunded'")
            .await,
        2
    );
    let still = scalar(
        &mut db,
        &format!(
            "SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'ACTIVE' AND credits_remaining = 1500",
            bought.id
        ),
    )
    .await;
    assert_eq!(still, 1, "the subscription is untouched");
    assert_ledger_matches_balances(&mut db).await;
}

/// A payment refused once (here: the webhook's amount is not the order's)
/// stays refused when VerifyPayment, which carries no amount, meets it: it
/// never becomes both a subscription and an open refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_payment_stays_refused_on_every_path() {
    let app = spawn_app().await;
    let order = app.order("under", "pro-monthly").await;
    let pay = app.pay(&order.id);
    let hook = app.captured_webhook(&order.id, &pay.0, 1, &order.currency, "evt-under");
    let r = app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!(r.outcome, "DISCREPANCY");
    let e = verify(&app, &order.id, &pay).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "AMOUNT_MISMATCH"), "{e:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE order_id IS NOT NULL").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies WHERE status = 'OPEN'").await, 1);
}

/// Payments of an older and a newer order of one user, captured in every
/// interleaving through both paths: the newer order's plan always ends up
/// live, and the older payment either came first (and was replaced, its
/// credits carried) or is an open discrepancy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_captures_of_an_older_and_a_newer_order_always_leave_the_newer_plan() {
    let app = spawn_app().await;
    for round in 0..6 {
        let user = format!("race-{round}");
        let old = app.order(&user, "basic-monthly").await;
        let new = app.order(&user, "pro-monthly").await;
        let (po, pn) = (app.pay(&old.id), app.pay(&new.id));
        let calls = (0..16).map(|i| {
            let app = &app;
            let (order, pay) = if i % 2 == 0 { (&old, &po) } else { (&new, &pn) };
            async move {
                if i % 4 < 2 {
                    retrying(|| verify(app, &order.id, pay))
                        .await
                        .map(|_| ())
                        .or_else(|e| if precondition_type(&e) == "ORDER_SUPERSEDED" { Ok(()) } else { Err(e) })
                } else {
                    let hook =
                        app.captured_webhook(&order.id, &pay.0, order.amount_minor, &order.currency, &format!("e-{round}-{i}"));
                    retrying(|| {
                        let mut b = app.billing.clone();
                        let hook = hook.clone();
                        async move { b.handle_gateway_webhook(hook).await }
                    })
                    .await
                    .map(|_| ())
                }
            }
        });
        for r in join_all(calls).await {
            r.unwrap();
        }
        let mut db = app.billing_db().await;
        let live_is_new = scalar(
            &mut db,
            &format!(
                "SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user}' AND status = 'ACTIVE' AND order_id = '{}'",
                new.id
            ),
        )
        .await;
        if live_is_new != 1 {
            let rows = scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user}'")).await;
            let active_old = scalar(
                &mut db,
                &format!("SELECT count(*) AS n FROM subscriptions WHERE status = 'ACTIVE' AND order_id = '{}'", old.id),
            )
            .await;
            let disc =
                scalar(&mut db, &format!("SELECT count(*) AS n FROM payment_discrepancies WHERE order_id = '{}'", new.id)).await;
            let ev = scalar(
                &mut db,
                &format!("SELECT count(*) AS n FROM webhook_events WHERE order_id = '{}' AND outcome <> 'PROCESSED'", new.id),
            )
            .await;
            panic!("round {round}: subs {rows}, old active {active_old}, new discrepancies {disc}, new odd events {ev}");
        }
        let old_subscribed =
            scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", old.id)).await;
        let old_open = scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM payment_discrepancies WHERE order_id = '{}' AND status = 'OPEN'", old.id),
        )
        .await;
        assert_eq!(old_subscribed + old_open, 1, "round {round}: the older payment bought a replaced plan or awaits a refund");
        assert_ledger_matches_balances(&mut db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_order_never_hands_out_a_cancelled_or_paid_order() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let create = |session: String| bpb::CreateOrderRequest {
        checkout_session_id: session,
        user_id: "co".into(),
        plan_id: "basic-monthly".into(),
    };
    let cancelled = uuid::Uuid::new_v4().to_string();
    let order = b.create_order(create(cancelled.clone())).await.unwrap().into_inner().order.unwrap();
    b.cancel_orders(bpb::CancelOrdersRequest { order_ids: vec![order.id.clone()], ..Default::default() }).await.unwrap();
    let e = b.create_order(create(cancelled)).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_CANCELLED"));

    let paid = uuid::Uuid::new_v4().to_string();
    let order = b.create_order(create(paid.clone())).await.unwrap().into_inner().order.unwrap();
    verify(&app, &order.id, &app.pay(&order.id)).await.unwrap();
    let e = b.create_order(create(paid)).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_PAID"));

    let open = uuid::Uuid::new_v4().to_string();
    let first = b.create_order(create(open.clone())).await.unwrap().into_inner().order.unwrap();
    let again = b.create_order(create(open)).await.unwrap().into_inner().order.unwrap();
    assert_eq!(first.id, again.id, "an unpaid order is still handed out again");
}
