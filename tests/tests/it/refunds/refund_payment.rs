//! RefundPayment (docs/design.md, "Refunds"): refunds of an order never add
//! up to more than was captured, however they race (docs/design.md,
//! Invariants 21); a full
//! refund of the order that paid the current period cancels the
//! subscription; refusals and outages leave the order as it was.
use futures::future::join_all;
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, scalar},
    spawn_app,
};
use tonic::{Code, Status};

use super::{refund, request};
use crate::support::precondition_type;

async fn order_of(app: &TestApp, sub: &bpb::Subscription) -> bpb::Order {
    app.billing.clone().get_order(bpb::GetOrderRequest { id: sub.order_id.clone() }).await.unwrap().into_inner().order.unwrap()
}

/// Twenty full refunds of one order at once, each with its own refund id:
/// exactly one refund; the rest are told nothing is left. The full refund
/// of the order that paid the current period cancels the subscription, its
/// credits forfeited through the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_full_refunds_refund_once() {
    let app = spawn_app().await;
    let sub = app.subscribe("refund-all", "basic-monthly").await;
    let results = join_all((0..20).map(|i| refund(&app, request(&sub.order_id, 0, &format!("full-{i}"))))).await;
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!((e.code(), precondition_type(e).as_str()), (Code::FailedPrecondition, "REFUND_EXCEEDS_CAPTURED"), "{e:?}");
    }
    let done = ok[0];
    let r = done.refund.clone().unwrap();
    assert_eq!((r.amount_minor, r.status), (49_900, bpb::RefundStatus::Processed as i32));
    assert_eq!(done.order.as_ref().unwrap().amount_refunded_minor, 49_900);

    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds").await, 1);
    assert_eq!(
        scalar(&mut db, "SELECT coalesce(sum(amount_minor), 0)::bigint AS n FROM refunds WHERE status <> 'FAILED'").await,
        49_900
    );
    let s = app.subscription(&sub.id).await;
    assert_eq!((s.status, s.credits_remaining), (bpb::SubscriptionStatus::Cancelled as i32, 0), "fully refunded: cancelled");
    assert_ledger_matches_balances(&mut db).await;
    // The same refund id again replays; nothing more is refunded.
    let again = refund(&app, request(&sub.order_id, 0, &r.id)).await.unwrap();
    assert!(again.replayed);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds").await, 1);
}

/// Partial refunds racing: never more than captured; every one that fits
/// is taken, in whatever order they arrive. A partial refund leaves the
/// subscription alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_partial_refunds_never_exceed_the_captured_amount() {
    let app = spawn_app().await;
    let sub = app.subscribe("refund-parts", "basic-monthly").await;
    let results = join_all((0..20).map(|i| refund(&app, request(&sub.order_id, 7_000, &format!("part-{i}"))))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 7, "7 × 7,000 fit in 49,900: {results:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT sum(amount_minor)::bigint AS n FROM refunds WHERE status <> 'FAILED'").await, 49_000);
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Active as i32);
    // The rest (0 = all that is left) closes the order out.
    let rest = refund(&app, request(&sub.order_id, 0, "rest")).await.unwrap();
    assert_eq!(rest.refund.unwrap().amount_minor, 900);
    let order = order_of(&app, &sub).await;
    assert_eq!((order.amount_refunded_minor, order.refunds.len()), (49_900, 8));
    let e = refund(&app, request(&sub.order_id, 1, "one-more")).await.unwrap_err();
    assert_eq!(precondition_type(&e), "REFUND_EXCEEDS_CAPTURED");
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::Cancelled as i32, "fully refunded now");
    assert_ledger_matches_balances(&mut db).await;
}

/// Bad input and failure: precise statuses, nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refund_errors_are_precise_and_write_nothing_half() {
    let app = spawn_app().await;
    let sub = app.subscribe("refund-errors", "pro-monthly").await;
    let unpaid = app.order("refund-errors", "basic-monthly").await;
    let code = |r: Result<bpb::RefundPaymentResponse, Status>| r.unwrap_err();

    assert_eq!(code(refund(&app, request("order_nope", 0, "r1")).await).code(), Code::NotFound);
    let e = code(refund(&app, request(&unpaid.id, 0, "r2")).await);
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_NOT_PAID"));
    let e = code(refund(&app, request(&sub.order_id, 149_901, "r3")).await);
    assert_eq!(precondition_type(&e), "REFUND_EXCEEDS_CAPTURED");
    assert!(e.message().contains("149900 is left"), "says what can be refunded: {}", e.message());
    for bad in [request(&sub.order_id, -1, "r4"), request(&sub.order_id, 0, ""), request("", 0, "r5")] {
        assert_eq!(code(refund(&app, bad).await).code(), Code::InvalidArgument);
    }
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds").await, 0);

    // The gateway refuses: the refund is FAILED, the order unchanged.
    app.gateway.set_refunds(billing_svc::gateway::SandboxRefunds::Refuse);
    let e = code(refund(&app, request(&sub.order_id, 1_000, "refused")).await);
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "GATEWAY_REFUSED"));
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds WHERE id = 'refused' AND status = 'FAILED'").await, 1);
    assert_eq!(order_of(&app, &sub).await.amount_refunded_minor, 0);

    // Unreachable: UNAVAILABLE. A timed-out call may have refunded, so the
    // refund stays PENDING with its outcome unknown (its amount held, never
    // dropped from the books); the same id asks the gateway again later.
    app.gateway.set_refunds(billing_svc::gateway::SandboxRefunds::Unreachable);
    assert_eq!(code(refund(&app, request(&sub.order_id, 1_000, "retry-me")).await).code(), Code::Unavailable);
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM refunds WHERE id = 'retry-me' AND status = 'PENDING' AND gateway_refund_id IS NULL"
        )
        .await,
        1
    );
    let e = code(refund(&app, request(&sub.order_id, 149_000, "too-much-while-unknown")).await);
    assert_eq!(precondition_type(&e), "REFUND_EXCEEDS_CAPTURED", "the unknown refund's amount is held");
    app.gateway.set_refunds(billing_svc::gateway::SandboxRefunds::Process);
    let ok = refund(&app, request(&sub.order_id, 1_000, "retry-me")).await.unwrap();
    assert_eq!(ok.refund.unwrap().status, bpb::RefundStatus::Processed as i32);
    let e = code(refund(&app, request(&sub.order_id, 0, "discrepancy:1")).await);
    assert_eq!(e.code(), Code::InvalidArgument, "reconciliation's refund ids are not the callers'");
    // Reusing an id for another amount is refused.
    let e = code(refund(&app, request(&sub.order_id, 2_000, "retry-me")).await);
    assert_eq!(precondition_type(&e), "REFUND_ID_REUSED");
    assert_eq!(order_of(&app, &sub).await.amount_refunded_minor, 1_000);
    assert_eq!(app.subscription(&sub.id).await.credits_remaining, 1500, "a partial refund leaves the subscription alone");

    // ListOrders shows the refunds, by user or by payment id.
    let list = app
        .billing
        .clone()
        .list_orders(bpb::ListOrdersRequest { user_id: "refund-errors".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.orders.len(), 2);
    let paid = list.orders.iter().find(|o| o.id == sub.order_id).unwrap();
    assert_eq!(paid.refunds.len(), 2, "the refused one is listed too");
    let by_payment = app
        .billing
        .clone()
        .list_orders(bpb::ListOrdersRequest { payment_id: paid.payment_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_payment.orders.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), vec![sub.order_id.as_str()]);
    let e = app.billing.clone().list_orders(bpb::ListOrdersRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// A `refund.processed` webhook settles a refund the gateway answered as
/// pending (through the sandbox: a PENDING row with a gateway id).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refund_webhooks_settle_pending_refunds() {
    let app = spawn_app().await;
    let sub = app.subscribe("refund-hook", "basic-monthly").await;
    let done = refund(&app, request(&sub.order_id, 5_000, "hooked")).await.unwrap();
    let gateway_id = done.refund.unwrap().gateway_refund_id;
    let mut db = app.billing_db().await;
    tests::helpers::exec(&mut db, "UPDATE refunds SET status = 'PENDING' WHERE id = 'hooked'").await;
    // Razorpay's refund entity names its payment (billing checks it).
    let payment_id = order_of(&app, &sub).await.payment_id;
    let body = serde_json::json!({
        "entity": "event", "event": "refund.failed",
        "payload": { "refund": { "entity": {
            "id": gateway_id, "payment_id": payment_id, "amount": 5000, "status": "failed"
        } } }
    })
    .to_string()
    .into_bytes();
    let hook =
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: "evt-refund-1".into() };
    let r = app.billing.clone().handle_gateway_webhook(hook.clone()).await.unwrap().into_inner();
    assert_eq!(r.outcome, "PROCESSED");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds WHERE id = 'hooked' AND status = 'FAILED'").await, 1);
    assert_eq!(order_of(&app, &sub).await.amount_refunded_minor, 0, "a failed refund gives its amount back");
    let again = app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert!(again.duplicate);
}

/// A renewal collected early and then refunded in full never opens its
/// period: the subscription ends at period end instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refunded_early_renewal_does_not_open_its_period() {
    let app = spawn_app().await;
    let sub = app.subscribe("refund-renewal", "basic-monthly").await;
    let end = chrono::DateTime::from_timestamp(sub.period_end.unwrap().seconds, 0).unwrap();
    app.clock.set(end - chrono::Duration::hours(48));
    app.run_job("renewals").await;
    let paid = app.pay_renewal(&sub.id).await.unwrap().order.unwrap();
    refund(&app, request(&paid.id, 0, "renewal-back")).await.unwrap();
    let s = app.subscription(&sub.id).await;
    assert_eq!((s.status, s.credits_remaining), (bpb::SubscriptionStatus::Active as i32, 300), "the paid period runs on");
    assert!(s.cancel_at_period_end, "and is the last");
    app.clock.set(end + chrono::Duration::hours(1));
    app.run_job("rollover").await;
    let s = app.subscription(&sub.id).await;
    assert_eq!((s.status, s.credits_remaining), (bpb::SubscriptionStatus::Cancelled as i32, 0), "no free month");
    let mut db = app.billing_db().await;
    assert_ledger_matches_balances(&mut db).await;
}

/// A purchase that was replaced (its credits carried into the new plan),
/// refunded in full: the carried credits are forfeited from the live
/// subscription, through the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunding_a_replaced_purchase_takes_back_the_credits_it_carried() {
    let app = spawn_app().await;
    let basic = app.subscribe("carrier", "basic-monthly").await;
    let pro = app.subscribe("carrier", "pro-monthly").await;
    assert_eq!(pro.credits_remaining, 1500 + 300);
    refund(&app, request(&basic.order_id, 0, "basic-back")).await.unwrap();
    let live = app.subscription(&pro.id).await;
    assert_eq!((live.status, live.credits_remaining), (bpb::SubscriptionStatus::Active as i32, 1500));
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT credits AS n FROM ledger WHERE kind = 'FORFEITED' AND subscription_id = '{}'", pro.id))
            .await,
        300
    );
    assert_ledger_matches_balances(&mut db).await;
}
