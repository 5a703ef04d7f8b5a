//! CREDITS_LOW and CREDITS_EXHAUSTED say that a subscription's credits were
//! used down past a threshold (docs/design.md, "Events": a Deduct pays
//! nothing until a credit threshold is crossed). Credits that a purchase
//! carries over to the replacing subscription were not used: the replaced
//! subscription gets SUBSCRIPTION_REPLACED, not a threshold event.
use tests::spawn_app;

use super::restart::texts;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credits_carried_to_a_replacement_are_not_reported_as_used_up() {
    let app = spawn_app().await;
    let first = app.subscribe("upgrader", "basic-monthly").await;
    app.subscribe("upgrader", "pro-monthly").await;
    // The events as the trigger wrote them, in stream order.
    let mut db = app.billing_db().await;
    let of_first = texts(
        &mut db,
        &format!(
            "SELECT event_type AS id FROM events WHERE entity_kind = 'subscription' AND entity_id = '{}' ORDER BY xid, seq",
            first.id
        ),
    )
    .await;
    assert!(of_first.contains(&"SUBSCRIPTION_REPLACED".to_owned()), "{of_first:?}");
    assert_eq!(
        of_first,
        ["SUBSCRIPTION_ACTIVATED", "SUBSCRIPTION_REPLACED"],
        "no credit was used, yet the replaced subscription reports its credits low and exhausted"
    );
}
