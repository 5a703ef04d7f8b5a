//! RefundPayment says "everything" with refund_all: amount_minor = 0 alone
//! (once "all that is left") is refused, so a caller that forgot the amount
//! never refunds a whole payment (docs/design.md, Idempotency: no zero value
//! moves money).
use proto::billing::v1 as bpb;
use tests::{helpers::scalar, spawn_app};
use tonic::Code;

use super::refund;
use crate::support::lost_response::violated_fields;

fn req(order_id: &str, amount_minor: i64, refund_all: bool, refund_id: &str) -> bpb::RefundPaymentRequest {
    bpb::RefundPaymentRequest {
        order_id: order_id.into(),
        amount_minor,
        reason: "customer asked".into(),
        refund_id: refund_id.into(),
        refund_all,
    }
}

/// The legacy zero form and the contradictory one are INVALID_ARGUMENT on
/// the field at fault; nothing is refunded and the subscription stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_amount_of_zero_without_refund_all_and_refund_all_with_an_amount_are_refused() {
    let app = spawn_app().await;
    let sub = app.subscribe("zero-refund", "basic-monthly").await;
    let e = refund(&app, req(&sub.order_id, 0, false, "legacy-zero")).await.expect_err("amount 0 alone");
    assert_eq!((e.code(), violated_fields(&e)), (Code::InvalidArgument, vec!["amount_minor".to_owned()]), "{e:?}");
    let e = refund(&app, req(&sub.order_id, 100, true, "both")).await.expect_err("refund_all with an amount");
    assert_eq!((e.code(), violated_fields(&e)), (Code::InvalidArgument, vec!["refund_all".to_owned()]), "{e:?}");

    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds").await, 0);
    let s = app.subscription(&sub.id).await;
    assert_eq!((s.status, s.credits_remaining), (bpb::SubscriptionStatus::Active as i32, 300));
}

/// refund_all refunds what is left after a partial refund; an amount alone
/// refunds exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refund_all_refunds_what_is_left_and_an_amount_exactly_that() {
    let app = spawn_app().await;
    let sub = app.subscribe("all-refund", "basic-monthly").await;
    let part = refund(&app, req(&sub.order_id, 9_900, false, "part")).await.unwrap();
    assert_eq!(part.refund.unwrap().amount_minor, 9_900);
    let rest = refund(&app, req(&sub.order_id, 0, true, "rest")).await.unwrap();
    assert_eq!(rest.refund.unwrap().amount_minor, 40_000);
    assert_eq!(rest.order.unwrap().amount_refunded_minor, 49_900);
    // A repeat of the full refund replays it.
    assert!(refund(&app, req(&sub.order_id, 0, true, "rest")).await.unwrap().replayed);
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds").await, 2);
}
