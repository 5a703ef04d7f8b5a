//! A refund whose outcome is unknown is never recorded FAILED nor made twice
//! at the gateway (docs/design.md, Invariants 22), and a payment discrepancy
//! is REFUNDED only once its refund is PROCESSED (Invariants 23). Gateway
//! behaviour through the sandbox's switches; the sandbox, like a gateway
//! without idempotency keys, makes a new refund for every call it accepts,
//! so only billing's one-caller claim and look-up keep refunds single.
use std::time::Duration;

use billing_svc::gateway::{RefundStatus, Sandbox, SandboxRefunds};
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, scalar},
    spawn_app,
};
use tonic::Code;

use crate::refunds::{refund, request};

async fn order(app: &TestApp, id: &str) -> bpb::Order {
    app.billing.clone().get_order(bpb::GetOrderRequest { id: id.into() }).await.unwrap().into_inner().order.unwrap()
}

async fn reconcile(app: &TestApp, fix: bool) -> bpb::RunReconciliationResponse {
    app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix }).await.unwrap().into_inner()
}

/// Reconcile reports nothing (money and subscriptions agree) and the ledger
/// explains every balance.
async fn assert_books_clean(app: &TestApp) {
    let r = reconcile(app, false).await;
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_ledger_matches_balances(&mut app.billing_db().await).await;
}

async fn refund_row(app: &TestApp, id: &str) -> (String, String) {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        gateway_refund_id: String,
    }
    use diesel_async::RunQueryDsl;
    let r: Row =
        diesel::sql_query("SELECT status, coalesce(gateway_refund_id, '') AS gateway_refund_id FROM refunds WHERE id = $1")
            .bind::<diesel::sql_types::Text, _>(id)
            .get_result(&mut app.billing_db().await)
            .await
            .unwrap();
    (r.status, r.gateway_refund_id)
}

async fn send_refund_webhook(
    app: &TestApp,
    status: RefundStatus,
    gateway_id: &str,
    payment_id: &str,
    amount: i64,
    key: &str,
) -> String {
    let body = Sandbox::refund_event_body(status, gateway_id, payment_id, amount, key);
    let hook = bpb::HandleGatewayWebhookRequest {
        signature: app.gateway.sign_webhook(&body),
        body,
        event_id: format!("evt-{}", uuid::Uuid::new_v4().simple()),
    };
    app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner().outcome
}

/// Polls (real time, bounded) until `done` holds: the test waits for a call
/// to arrive somewhere, it does not move time.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

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
