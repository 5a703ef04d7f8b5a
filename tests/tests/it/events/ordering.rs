//! The stream's order: a purchase's events in order with climbing versions,
//! and a transaction that wrote an event early but commits late is neither
//! skipped nor sent twice (docs/design.md, "Events").
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use tests::{helpers::scalar, spawn_app};

use super::*;

/// A purchase: order created, paid, payment captured, subscription
/// activated, each once, in that order, and the database holds exactly what
/// ListEvents pages out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purchase_yields_its_events_in_order() {
    let app = spawn_app().await;
    let sub = app.subscribe("buyer", "basic-monthly").await;
    let events = list_all(&app).await;
    let mine: Vec<&str> = events.iter().filter(|e| e.user_id == "buyer").map(type_name).collect();
    let order = ["ORDER_CREATED", "ORDER_PAID", "PAYMENT_CAPTURED", "SUBSCRIPTION_ACTIVATED"];
    let mut at = 0;
    for t in &mine {
        if at < order.len() && *t == order[at] {
            at += 1;
        }
    }
    assert_eq!(at, order.len(), "want {order:?} in that order, got {mine:?}");
    assert_versions_climb(&events);
    let activated = events.iter().find(|e| type_name(e) == "SUBSCRIPTION_ACTIVATED" && e.entity_id == sub.id).unwrap();
    let Some(bpb::billing_event::Payload::Subscription(s)) = &activated.payload else { panic!("{activated:?}") };
    assert_eq!((s.status, s.plan_id.as_str()), (bpb::SubscriptionStatus::Active as i32, "basic-monthly"));
    let now = app.subscription(&sub.id).await;
    assert_eq!(s.etag, now.etag, "the payload is the subscription as GetSubscription shows it: {s:?} vs {now:?}");
    let stored = scalar(&mut app.billing_db().await, "SELECT count(*) AS n FROM events").await;
    assert_eq!(stored as usize, events.len(), "ListEvents pages out every stored event");
}

/// A transaction takes its event's place early and commits after later
/// events committed: a watcher gets it, before them, exactly once; a
/// rolled-back transaction's event never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_that_commits_late_is_not_skipped() {
    let app = spawn_app().await;
    let sub = app.subscribe("early", "basic-monthly").await;
    let after_cursor = settled_cursor(&app).await;
    let mut watch = billing_events(&app)
        .watch_events(bpb::WatchEventsRequest { after_cursor, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert!(matches!(first.item, Some(Item::Bookmark(_))), "a bookmark comes first: {first:?}");

    // The slow transaction writes its event (cancellation scheduled) and
    // stays open while other purchases commit theirs.
    let mut slow = app.billing_db().await;
    slow.batch_execute("BEGIN").await.unwrap();
    slow.batch_execute(&format!("UPDATE subscriptions SET cancel_at_period_end = true WHERE id = '{}'", sub.id)).await.unwrap();
    let mut doomed = app.billing_db().await;
    doomed
        .transaction::<(), diesel::result::Error, _>(async |c| {
            c.batch_execute("UPDATE orders SET status = 'CANCELLED' WHERE user_id = 'early'").await.ok();
            Err(diesel::result::Error::RollbackTransaction)
        })
        .await
        .ok();
    app.subscribe("later-1", "basic-monthly").await;
    app.subscribe("later-2", "basic-monthly").await;
    // Nothing after the open transaction's event is handed out meanwhile.
    let held = tokio::time::timeout(Duration::from_millis(700), next_events(&mut watch, 1, Duration::from_secs(5))).await;
    assert!(held.is_err(), "an event behind an open transaction was sent: {held:?}");
    slow.batch_execute("COMMIT").await.unwrap();

    let got = next_events(&mut watch, 9, Duration::from_secs(10)).await;
    let names: Vec<(&str, &str)> = got.iter().map(|e| (e.user_id.as_str(), type_name(e))).collect();
    assert_eq!(names[0], ("early", "SUBSCRIPTION_CANCEL_SCHEDULED"), "the early event comes first: {names:?}");
    assert!(!names.iter().any(|(_, t)| *t == "ORDER_CANCELLED"), "a rolled-back change sent an event: {names:?}");
    assert_eq!(names.iter().filter(|(u, _)| u.starts_with("later")).count(), 8, "{names:?}");
    // The same events in the same order as ListEvents pages them.
    let all = list_all(&app).await;
    let tail: Vec<&str> = all[all.len() - got.len()..].iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(tail, got.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>());
    assert_versions_climb(&all);
}

/// Two transactions change one subscription; the one that commits second
/// has the lower transaction id. Its event still comes after the first
/// one's, so the subscription's versions climb in stream order
/// (docs/design.md, Events: versions that only go up).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_later_change_with_an_older_transaction_id_still_comes_later() {
    let app = spawn_app().await;
    let sub = app.subscribe("contended", "basic-monthly").await;
    let mut older = app.billing_db().await;
    older.batch_execute("BEGIN; SELECT pg_current_xact_id();").await.unwrap();
    let mut newer = app.billing_db().await;
    newer.batch_execute(&format!("UPDATE subscriptions SET cancel_at_period_end = true WHERE id = '{}'", sub.id)).await.unwrap();
    older.batch_execute(&format!("UPDATE subscriptions SET credits_remaining = 0 WHERE id = '{}'", sub.id)).await.unwrap();
    older.batch_execute("COMMIT").await.unwrap();
    let mine: Vec<bpb::BillingEvent> = list_all(&app).await.into_iter().filter(|e| e.entity_id == sub.id).collect();
    let names: Vec<&str> = mine.iter().map(type_name).collect();
    assert_eq!(names, ["SUBSCRIPTION_ACTIVATED", "SUBSCRIPTION_CANCEL_SCHEDULED", "CREDITS_LOW", "CREDITS_EXHAUSTED"]);
    assert_versions_climb(&mine);
}
