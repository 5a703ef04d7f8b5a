//! A watcher replaying from the database while the retention purge deletes
//! what it has not read yet: its stream ends with CURSOR_EXPIRED, never
//! with a silent jump over the purged events (docs/design.md, Events:
//! cursors, the retention mark).
use chrono::{Duration as Days, Utc};
use tests::{harness::Options, helpers::exec, spawn_app_with};
use tonic::Code;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_behind_the_purge_gets_cursor_expired() {
    let mut app = spawn_app_with(Options::default()).await;
    let n = exec(
        &mut app.billing_db().await,
        "INSERT INTO orders (id, checkout_session_id, user_id, plan_id, amount_minor, currency)
         SELECT 'bulk_' || g, gen_random_uuid(), 'bulk', 'basic-monthly', 49900, 'INR' FROM generate_series(1, 20000) g",
    )
    .await;
    assert_eq!(n, 20_000);
    // A new replica: its tail starts after these, so a replay reads them
    // from the database, a page of 100 at a time, as its consumer reads.
    app.stop_billing().await;
    app.start_billing_again().await.unwrap();

    let req = bpb::WatchEventsRequest { from_oldest: true, ..Default::default() };
    let mut watch = billing_events(&app).watch_events(req).await.unwrap().into_inner();
    let first = next_events(&mut watch, 1, Duration::from_secs(10)).await;
    assert_eq!(first[0].entity_id, "bulk_1");

    app.clock.set(Utc::now() + Days::days(31));
    let purged = app.run_job("purge-events").await;
    assert!(purged.contains("20000 deleted"), "{purged}");

    // What the watcher had read before the purge still comes (whole pages,
    // far fewer than 20,000: a stream holds a few MB at most in flight);
    // then, instead of the events it never read, the stream says its
    // cursor expired.
    let mut received = 1;
    let end = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await;
        match next.unwrap_or_else(|_| panic!("the stream stopped after {received} events")) {
            Ok(Some(m)) => received += usize::from(matches!(m.item, Some(Item::Event(_)))),
            Ok(None) => panic!("the stream ended OK after {received} of 20000 events: a silent jump"),
            Err(s) => break s,
        }
    };
    assert_eq!(end.code(), Code::FailedPrecondition, "{end:?}");
    assert!(received < 20_000 && received % 100 == 0, "{received} events: whole pages read before the purge");
    assert_eq!(proto::error::reason_of(&end), Some(proto::error::ErrorReason::CursorExpired), "{end:?}");
}
