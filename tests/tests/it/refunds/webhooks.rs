//! Refund webhooks: settling the first attempt, effects once while in
//! flight, events for another payment or amount, a late failure.
use super::*;

/// The first attempt's refund is made (pending) but its answer is lost; the
/// retry learns of it; the gateway's `refund.processed` for that refund
/// settles the row, and a webhook that names the refund only by billing's
/// key (another gateway id) settles it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_of_the_first_attempt_settles_the_refund() {
    let app = spawn_app().await;
    let sub = app.subscribe("outcome-hook", "basic-monthly").await;
    let paid = order(&app, &sub.order_id).await;
    app.gateway.set_refunds(SandboxRefunds::LosePendingAnswer);
    assert_eq!(refund(&app, request(&sub.order_id, 0, "hooked")).await.unwrap_err().code(), Code::Unavailable);
    app.gateway.set_refunds(SandboxRefunds::Pending);
    let r = refund(&app, request(&sub.order_id, 0, "hooked")).await.unwrap().refund.unwrap();
    assert_eq!(r.status, bpb::RefundStatus::Pending as i32);
    let first = app.gateway.refunds_made(&paid.payment_id)[0].clone();
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Active as i32, "nothing ends on pending money");

    app.gateway.settle_refund(&first.id, RefundStatus::Processed);
    let outcome = send_refund_webhook(&app, RefundStatus::Processed, &first.id, &paid.payment_id, 49_900, "hooked").await;
    assert_eq!(outcome, "PROCESSED");
    assert_eq!(refund_row(&app, "hooked").await, ("PROCESSED".to_owned(), first.id.clone()));
    assert_eq!(app.gateway.refunds_made(&paid.payment_id).len(), 1);
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Cancelled as i32);

    // Another refund, pending under a gateway id; the event names a
    // different gateway id but billing's key: it is this row's.
    let sub2 = app.subscribe("outcome-hook-2", "basic-monthly").await;
    let paid2 = order(&app, &sub2.order_id).await;
    refund(&app, request(&sub2.order_id, 0, "hooked-2")).await.unwrap();
    let outcome =
        send_refund_webhook(&app, RefundStatus::Processed, "rfnd_other_attempt", &paid2.payment_id, 49_900, "hooked-2").await;
    assert_eq!(outcome, "PROCESSED");
    assert_eq!(refund_row(&app, "hooked-2").await.0, "PROCESSED");
    assert_eq!(app.subscription(&sub2.id).await.status, bpb::SubscriptionStatus::Cancelled as i32);
    assert_books_clean(&app).await;
}

async fn forfeited(app: &TestApp, sub_id: &str) -> i64 {
    scalar(
        &mut app.billing_db().await,
        &format!(
            "SELECT coalesce(sum(credits), 0)::bigint AS n FROM ledger WHERE kind = 'FORFEITED' AND subscription_id = '{sub_id}'"
        ),
    )
    .await
}

/// A full refund of a replaced purchase is in flight at the gateway when
/// its `refund.processed` arrives and settles the row (forfeiting the
/// credits it carried); then the call returns PROCESSED too. The effects
/// of the move to PROCESSED happen once, in whichever transaction made it:
/// the carried credits are forfeited once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_settled_by_its_webhook_while_in_flight_takes_effect_once() {
    let app = spawn_app().await;
    let basic = app.subscribe("effects-once", "basic-monthly").await;
    let pro = app.subscribe("effects-once", "pro-monthly").await;
    assert_eq!(pro.credits_remaining, 1500 + 300);
    let paid = order(&app, &basic.order_id).await;
    app.gateway.hold_refunds(true);
    let call = {
        let mut b = app.billing_admin.clone();
        let r = request(&basic.order_id, 0, "effects-once-back");
        tokio::spawn(async move { b.refund_payment(r).await.map(|r| r.into_inner()) })
    };
    until("the refund call at the gateway", || app.gateway.refund_calls() == 1).await;
    let outcome =
        send_refund_webhook(&app, RefundStatus::Processed, "rfnd_hooked_first", &paid.payment_id, 49_900, "effects-once-back")
            .await;
    assert_eq!(outcome, "PROCESSED");
    app.gateway.hold_refunds(false);
    let done = call.await.unwrap().unwrap();
    assert_eq!(done.refund.unwrap().status, bpb::RefundStatus::Processed as i32);
    assert_eq!(forfeited(&app, &pro.id).await, 300, "the carried credits are forfeited once");
    let live = app.subscription(&pro.id).await;
    assert_eq!((live.status, live.credits_remaining), (bpb::SubscriptionStatus::Active as i32, 1500));
    assert_books_clean(&app).await;
}

/// A refund event carrying billing's refund key but naming another payment
/// (another integration or deployment on the same gateway account using the
/// same key) is not applied to billing's refund: stored IGNORED with why.
/// One of the same payment for another amount is stored REJECTED for an
/// operator (reported by reconcile). A gateway id that matches but names
/// another payment is REJECTED too. The row stays PENDING throughout and
/// its own webhook settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_event_with_our_key_but_another_payment_or_amount_is_not_applied() {
    let app = spawn_app().await;
    let sub = app.subscribe("foreign-key", "basic-monthly").await;
    let paid = order(&app, &sub.order_id).await;
    app.gateway.set_refunds(SandboxRefunds::Pending);
    let r = refund(&app, request(&sub.order_id, 0, "shared-key-1")).await.unwrap().refund.unwrap();
    assert_eq!(r.status, bpb::RefundStatus::Pending as i32);
    let ours = app.gateway.refunds_made(&paid.payment_id)[0].clone();

    let foreign = Sandbox::new_payment_id();
    let outcome = send_refund_webhook(&app, RefundStatus::Failed, "rfnd_theirs_1", &foreign, 49_900, "shared-key-1").await;
    assert_eq!(outcome, "IGNORED", "another payment's refund");
    assert_eq!(refund_row(&app, "shared-key-1").await.0, "PENDING");
    let outcome = send_refund_webhook(&app, RefundStatus::Failed, "rfnd_theirs_2", &paid.payment_id, 100, "shared-key-1").await;
    assert_eq!(outcome, "REJECTED", "our payment, another amount: for review");
    assert_eq!(refund_row(&app, "shared-key-1").await.0, "PENDING");
    let outcome = send_refund_webhook(&app, RefundStatus::Failed, &ours.id, &foreign, 49_900, "other-key").await;
    assert_eq!(outcome, "REJECTED", "our gateway id under another payment");
    assert_eq!(refund_row(&app, "shared-key-1").await, ("PENDING".to_owned(), ours.id.clone()));

    app.gateway.settle_refund(&ours.id, RefundStatus::Processed);
    let outcome = send_refund_webhook(&app, RefundStatus::Processed, &ours.id, &paid.payment_id, 49_900, "shared-key-1").await;
    assert_eq!(outcome, "PROCESSED");
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Cancelled as i32);
    let r = reconcile(&app, false).await;
    assert_eq!(r.findings.len(), 2, "the two REJECTED events, nothing else: {:?}", r.findings);
    assert!(r.findings.iter().all(|f| f.kind == "WEBHOOK_REJECTED"), "{:?}", r.findings);
    assert_ledger_matches_balances(&mut app.billing_db().await).await;
}

/// Razorpay documents `processed` as a refund's final state. A
/// `refund.failed` for a refund billing holds PROCESSED (a reversal, or an
/// event out of order) is not applied blindly and never silently dropped:
/// it is stored REJECTED and reconcile reports it to an operator, who checks
/// the refund at the gateway. A repeat of the same status is IGNORED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_event_for_a_processed_refund_is_rejected_for_review() {
    let app = spawn_app().await;
    let sub = app.subscribe("failed-after", "basic-monthly").await;
    let paid = order(&app, &sub.order_id).await;
    let done = refund(&app, request(&sub.order_id, 0, "failed-after-1")).await.unwrap().refund.unwrap();
    assert_eq!(done.status, bpb::RefundStatus::Processed as i32);
    let outcome =
        send_refund_webhook(&app, RefundStatus::Processed, &done.gateway_refund_id, &paid.payment_id, 49_900, "failed-after-1")
            .await;
    assert_eq!(outcome, "IGNORED", "already settled so");
    let outcome =
        send_refund_webhook(&app, RefundStatus::Failed, &done.gateway_refund_id, &paid.payment_id, 49_900, "failed-after-1")
            .await;
    assert_eq!(outcome, "REJECTED");
    assert_eq!(refund_row(&app, "failed-after-1").await.0, "PROCESSED", "not changed without an operator");
    let r = reconcile(&app, false).await;
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].kind, "WEBHOOK_REJECTED");
    assert!(r.findings[0].detail.contains("PROCESSED"), "{:?}", r.findings[0]);
    assert_ledger_matches_balances(&mut app.billing_db().await).await;
}
