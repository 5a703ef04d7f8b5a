//! An upgrade paid through checkout: once ChangeSubscriptionPlan opened an
//! upgrade, a checkout session for its plan pays the prorated order (not
//! the plan's full price), and completing the session applies it.
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tests::{helpers::assert_ledger_matches_balances, spawn_app};

use super::{LITE, MAX, MAX_CREDITS, plans, upgrade};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_for_the_upgraded_plan_pays_the_prorated_order() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("shopper", "lite").await;
    let change = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
    assert!(change.amount_minor > 0 && change.amount_minor <= MAX - LITE);

    let session = app.create_session("shopper", "max").await;
    assert_eq!(session.order_id, change.order_id, "the session pays the upgrade's order");
    assert_eq!((session.amount_minor, session.currency.as_str()), (change.amount_minor, "INR"), "at the prorated amount");
    let (payment_id, signature) = app.pay(&session.order_id);
    let done = app.complete(&session.id, &payment_id, &signature).await.unwrap().session.unwrap();
    assert_eq!(done.status, cpb::SessionStatus::Completed as i32);
    assert_eq!(done.subscription_id, sub.id, "the subscription it upgraded, not a new one");

    let now = app.subscription(&sub.id).await;
    assert_eq!(
        (now.plan_id.as_str(), now.credits_granted, now.status),
        ("max", MAX_CREDITS, bpb::SubscriptionStatus::Active as i32)
    );
    assert!(now.pending_change.is_none());
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: change.order_id.clone() }).await.unwrap();
    let order = order.into_inner().order.unwrap();
    assert_eq!((order.status, order.subscription_id.as_str()), (bpb::OrderStatus::Paid as i32, sub.id.as_str()));
    // A later checkout of max is a purchase again (nothing open to pay).
    let next = app.create_session("shopper", "max").await;
    assert_eq!(next.amount_minor, MAX);
    assert_ledger_matches_balances(&mut app.billing_db().await).await;
    assert!(app.reconcile(false).await.is_empty());
}
