//! CREDITS_LOW and CREDITS_EXHAUSTED say the period's credits fell to 20 %
//! of the grant or to 0, once per period (docs/design.md, "Events"):
//! credits that move to another subscription, or a balance that only
//! passes through 0 inside one transaction, are neither.
use tests::spawn_app;

use super::*;

fn credit_events(events: &[bpb::BillingEvent], user: &str) -> Vec<(String, i64)> {
    events
        .iter()
        .filter(|e| e.user_id == user && type_name(e).starts_with("CREDITS_"))
        .map(|e| match &e.payload {
            Some(bpb::billing_event::Payload::Subscription(s)) => (type_name(e).to_owned(), s.credits_remaining),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// An upgrade carries the old subscription's credits into the new one: the
/// user ends with more credits, and no credit threshold event is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_that_carries_the_credits_over_is_not_credits_exhausted() {
    let app = spawn_app().await;
    app.subscribe("upgrader", "basic-monthly").await;
    let pro = app.subscribe("upgrader", "pro-monthly").await;
    assert_eq!(pro.credits_remaining, 1500 + 300, "the basic credits were carried over");
    let events = list_settled(&app).await;
    assert_eq!(credit_events(&events, "upgrader"), [], "{:?}", types_of(&events, "upgrader"));
}

/// The full refund of a replaced purchase takes back the 300 credits it
/// carried into the live subscription, which keeps 1,500 of 1,800: far
/// above 20 %. No CREDITS_LOW / CREDITS_EXHAUSTED is sent for it, and the
/// real crossing later in the period sends each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn taking_back_carried_credits_is_not_credits_exhausted() {
    let app = spawn_app().await;
    let basic = app.subscribe("taken-back", "basic-monthly").await;
    let pro = app.subscribe("taken-back", "pro-monthly").await;
    let seen = credit_events(&list_settled(&app).await, "taken-back").len();
    crate::refunds::refund(&app, crate::refunds::request(&basic.order_id, 0, "back")).await.unwrap();
    let live = app.subscription(&pro.id).await;
    assert_eq!((live.status, live.credits_remaining), (bpb::SubscriptionStatus::Active as i32, 1500));

    let events = list_settled(&app).await;
    assert_eq!(credit_events(&events, "taken-back")[seen..], [], "{:?}", types_of(&events, "taken-back"));

    // Spending to 0 in the same period: one crossing of each threshold.
    let session = app.start_usage("taken-back", bpb::UsageKind::Text).await.unwrap();
    for n in 0..2 {
        let mut b = app.billing.clone();
        let r = bpb::DeductRequest { usage_session_id: session.id.clone(), deduction_id: format!("t-{n}"), units: 750 };
        b.deduct(r).await.unwrap();
    }
    let events = list_settled(&app).await;
    let after = credit_events(&events, "taken-back")[seen..].to_vec();
    assert_eq!(after, [("CREDITS_LOW".to_owned(), 0), ("CREDITS_EXHAUSTED".to_owned(), 0)]);
}
