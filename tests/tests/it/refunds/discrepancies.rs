//! Payment discrepancies REFUNDED only once their refund is PROCESSED.
use super::*;

/// A second payment of a paid order is a discrepancy; reconcile --fix
/// refunds it, the gateway answers `pending`: the discrepancy stays OPEN
/// (reported) until the money moved. The refund fails (webhook): still
/// reported; the next --fix refunds it again with a fresh attempt, which is
/// processed: REFUNDED, audited, and reconcile then reports nothing. The
/// order's `amount_refunded_minor` counts its own payment's refunds only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_discrepancy_is_refunded_only_once_its_refund_is_processed() {
    let app = spawn_app().await;
    let sub = app.subscribe("outcome-disc", "basic-monthly").await;
    let paid = order(&app, &sub.order_id).await;
    let second = Sandbox::new_payment_id();
    let hook = app.captured_webhook(&paid.id, &second, 49_900, "INR", "evt-second-payment");
    assert_eq!(app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner().outcome, "DISCREPANCY");
    let mut db = app.billing_db().await;
    let id = scalar(&mut db, &format!("SELECT id AS n FROM payment_discrepancies WHERE payment_id = '{second}'")).await;
    let status = async |db: &mut diesel_async::AsyncPgConnection| {
        scalar(db, &format!("SELECT count(*) AS n FROM payment_discrepancies WHERE id = {id} AND status = 'OPEN'")).await
    };

    app.gateway.set_refunds(SandboxRefunds::Pending);
    let fix = reconcile(&app, true).await;
    let f = fix.findings.iter().find(|f| f.kind == "PAYMENT_DISCREPANCY").unwrap();
    assert!(!f.fixed, "a pending refund has not returned the money: {f:?}");
    assert_eq!(status(&mut db).await, 1, "still OPEN");
    let check = reconcile(&app, false).await;
    assert_eq!(check.findings.iter().filter(|f| f.kind == "PAYMENT_DISCREPANCY").count(), 1, "{:?}", check.findings);
    // The next scheduled --fix while the refund is still pending: the
    // pending money does not close it either.
    let again = reconcile(&app, true).await;
    let f = again.findings.iter().find(|f| f.kind == "PAYMENT_DISCREPANCY").unwrap();
    assert!(!f.fixed, "a second run does not close it on pending money: {f:?}");
    assert_eq!(status(&mut db).await, 1, "still OPEN after a second --fix");
    assert_eq!(app.gateway.refunds_made(&second).len(), 1, "and asks for no second refund");

    let attempt = app.gateway.refunds_made(&second)[0].clone();
    app.gateway.settle_refund(&attempt.id, RefundStatus::Failed);
    let outcome =
        send_refund_webhook(&app, RefundStatus::Failed, &attempt.id, &second, 49_900, &format!("discrepancy:{id}")).await;
    assert_eq!(outcome, "PROCESSED");
    assert_eq!(
        scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM reconcile_audit WHERE subject_id = '{id}' AND action = 'refund failed'")
        )
        .await,
        1,
        "the failure is audited"
    );
    let check = reconcile(&app, false).await;
    assert_eq!(
        check.findings.iter().filter(|f| f.kind == "PAYMENT_DISCREPANCY" && f.subject_id == id.to_string()).count(),
        1,
        "the failed refund leaves the money owed, and reported: {:?}",
        check.findings
    );

    app.gateway.set_refunds(SandboxRefunds::Process);
    let fix = reconcile(&app, true).await;
    assert!(fix.findings.iter().all(|f| f.fixed), "{:?}", fix.findings);
    assert_eq!(status(&mut db).await, 0);
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM refunds WHERE discrepancy_id = {id} AND status = 'PROCESSED'")).await,
        1
    );
    assert_eq!(app.gateway.refunds_made(&second).len(), 2, "the failed attempt and the fresh one");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM reconcile_audit WHERE subject_id = '{id}' AND action = 'refunded'"))
            .await,
        1
    );
    // The order's own payment was not refunded; the discrepancy refund is
    // listed under its own payment id.
    let o = order(&app, &paid.id).await;
    assert_eq!(o.amount_refunded_minor, 0, "{o:?}");
    assert!(o.refunds.iter().any(|r| r.payment_id == second && r.status == bpb::RefundStatus::Processed as i32));
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Active as i32);
    assert_books_clean(&app).await;
}

/// A discrepancy refund answered `pending` and then settled by
/// `refund.processed`: the webhook closes the discrepancy (audited).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processed_webhook_closes_the_discrepancy_its_refund_returns() {
    let app = spawn_app().await;
    let sub = app.subscribe("outcome-disc-2", "basic-monthly").await;
    let second = Sandbox::new_payment_id();
    let hook = app.captured_webhook(&sub.order_id, &second, 49_900, "INR", "evt-second-payment-2");
    assert_eq!(app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner().outcome, "DISCREPANCY");
    let mut db = app.billing_db().await;
    let id = scalar(&mut db, &format!("SELECT id AS n FROM payment_discrepancies WHERE payment_id = '{second}'")).await;
    app.gateway.set_refunds(SandboxRefunds::Pending);
    assert!(!reconcile(&app, true).await.findings[0].fixed);
    let made = app.gateway.refunds_made(&second)[0].clone();
    let outcome =
        send_refund_webhook(&app, RefundStatus::Processed, &made.id, &second, 49_900, &format!("discrepancy:{id}")).await;
    assert_eq!(outcome, "PROCESSED");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM payment_discrepancies WHERE id = {id} AND status = 'REFUNDED'"))
            .await,
        1
    );
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM reconcile_audit WHERE subject_id = '{id}' AND action = 'refunded'"))
            .await,
        1
    );
    assert_books_clean(&app).await;
}
