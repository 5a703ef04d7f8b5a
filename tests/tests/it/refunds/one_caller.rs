//! One caller per refund: concurrent calls, timeouts and refusals after an
//! unknown outcome never make a refund twice nor record it FAILED.
use super::*;

/// Two RefundPayment calls with one refund_id while the first one's
/// gateway call is in flight: the second does not reach the gateway (it is
/// told to retry, ABORTED), the gateway makes exactly one refund, and the
/// retry answers that refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_with_one_refund_id_make_one_refund_at_the_gateway() {
    let app = spawn_app().await;
    let sub = app.subscribe("outcome-race", "basic-monthly").await;
    let paid = order(&app, &sub.order_id).await;
    app.gateway.hold_refunds(true);
    let call = |app: &TestApp| {
        let mut b = app.billing_admin.clone();
        let r = request(&sub.order_id, 0, "same-id");
        tokio::spawn(async move { b.refund_payment(r).await.map(|r| r.into_inner()) })
    };
    let first = call(&app);
    until("the first call at the gateway", || app.gateway.refund_calls() == 1).await;
    let second = call(&app);
    // Either the second call is answered without the gateway, or (the old
    // defect) it reaches the gateway too.
    until("the second call to finish or reach the gateway", || second.is_finished() || app.gateway.refund_calls() == 2).await;
    app.gateway.hold_refunds(false);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(app.gateway.refunds_made(&paid.payment_id).len(), 1, "one refund at the gateway: {first:?} {second:?}");
    let done = first.unwrap();
    assert_eq!(done.refund.as_ref().unwrap().status, bpb::RefundStatus::Processed as i32);
    let e = second.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "in progress, retry with the same refund_id: {e:?}");
    let again = refund(&app, request(&sub.order_id, 0, "same-id")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.refund.unwrap().gateway_refund_id, done.refund.unwrap().gateway_refund_id);
    assert_eq!(app.gateway.refund_calls(), 1);
    let s = app.subscription(&sub.id).await;
    assert_eq!(s.status, bpb::SubscriptionStatus::Cancelled as i32, "fully refunded: cancelled");
    assert_books_clean(&app).await;
}

/// The refund reaches the gateway and is made, but the answer is lost (a
/// timeout): UNAVAILABLE, the row PENDING. The retry finds the refund at the
/// gateway by its key instead of refunding again: one refund, PROCESSED,
/// and the amount is not refundable twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_timed_out_after_reaching_the_gateway_is_found_not_made_again() {
    let app = spawn_app().await;
    let sub = app.subscribe("outcome-lost", "basic-monthly").await;
    let paid = order(&app, &sub.order_id).await;
    app.gateway.set_refunds(SandboxRefunds::LoseAnswer);
    let e = refund(&app, request(&sub.order_id, 0, "r1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(refund_row(&app, "r1").await.0, "PENDING");
    app.gateway.set_refunds(SandboxRefunds::Process);
    let done = refund(&app, request(&sub.order_id, 0, "r1")).await.unwrap();
    let made = app.gateway.refunds_made(&paid.payment_id);
    assert_eq!(made.len(), 1, "found, not made again: {made:?}");
    let r = done.refund.unwrap();
    assert_eq!((r.status, r.gateway_refund_id.as_str()), (bpb::RefundStatus::Processed as i32, made[0].id.as_str()));
    assert_eq!(done.order.unwrap().amount_refunded_minor, 49_900);
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Cancelled as i32);
    assert_books_clean(&app).await;
}

/// A repeat of a refund whose outcome is unknown is answered with a refusal
/// or with "in progress": neither is recorded FAILED while the gateway has
/// (or may have) the refund. The refund the first call made is found;
/// 409 keeps the row PENDING and tells the caller to retry. A refusal is
/// FAILED only when the gateway has no refund under the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_or_409_after_an_unknown_outcome_is_never_recorded_failed() {
    let app = spawn_app().await;
    let sub = app.subscribe("outcome-4xx", "pro-monthly").await;
    let paid = order(&app, &sub.order_id).await;

    // Made, answer lost; the repeat would be refused (e.g. "already
    // refunded in full"): it is the refund the first call made.
    app.gateway.set_refunds(SandboxRefunds::LoseAnswer);
    assert_eq!(refund(&app, request(&sub.order_id, 10_000, "lost-then-refused")).await.unwrap_err().code(), Code::Unavailable);
    app.gateway.set_refunds(SandboxRefunds::Refuse);
    let done = refund(&app, request(&sub.order_id, 10_000, "lost-then-refused")).await.unwrap();
    assert_eq!(done.refund.unwrap().status, bpb::RefundStatus::Processed as i32);

    // Not reached; the repeat answers 409 (in progress): still PENDING,
    // the caller is told to retry; then it is made once.
    app.gateway.set_refunds(SandboxRefunds::Unreachable);
    assert_eq!(refund(&app, request(&sub.order_id, 20_000, "busy")).await.unwrap_err().code(), Code::Unavailable);
    app.gateway.set_refunds(SandboxRefunds::InProgress);
    let e = refund(&app, request(&sub.order_id, 20_000, "busy")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(refund_row(&app, "busy").await.0, "PENDING");
    assert_eq!(order(&app, &sub.order_id).await.amount_refunded_minor, 30_000, "its amount stays held");
    app.gateway.set_refunds(SandboxRefunds::Process);
    assert_eq!(
        refund(&app, request(&sub.order_id, 20_000, "busy")).await.unwrap().refund.unwrap().status,
        bpb::RefundStatus::Processed as i32
    );

    // Not reached, then refused, and the gateway has nothing under the
    // key: FAILED, its amount refundable again.
    app.gateway.set_refunds(SandboxRefunds::Unreachable);
    assert_eq!(refund(&app, request(&sub.order_id, 5_000, "refused")).await.unwrap_err().code(), Code::Unavailable);
    app.gateway.set_refunds(SandboxRefunds::Refuse);
    let e = refund(&app, request(&sub.order_id, 5_000, "refused")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(refund_row(&app, "refused").await.0, "FAILED");

    assert_eq!(app.gateway.refunds_made(&paid.payment_id).len(), 2);
    assert_eq!(order(&app, &sub.order_id).await.amount_refunded_minor, 30_000);
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Active as i32, "partly refunded");
    assert_books_clean(&app).await;
}
