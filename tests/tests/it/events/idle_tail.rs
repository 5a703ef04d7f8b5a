//! A replica nobody watches reads nothing (docs/design.md, "Events":
//! Watching): its writes only pass the wake-up on to the other replicas,
//! by NOTIFY. The first watcher wakes its tail, and a watcher that comes
//! after an idle spell still gets every event, in order, from its cursor.
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use tests::spawn_app;

use super::{many_watchers::event_scans, *};

/// No watcher: purchases through the RPCs read the `events` table not once,
/// and another replica listening hears of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwatched_replica_reads_no_events_and_wakes_the_others() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    // Another replica's tail, as far as the database can tell.
    let mut other = diesel_async::AsyncPgConnection::establish(&app.billing_db_url).await.unwrap();
    other.batch_execute("LISTEN events").await.unwrap();
    let before = event_scans(&mut db).await;

    for i in 0..3 {
        app.subscribe(&format!("unwatched-{i}"), "basic-monthly").await;
    }
    let heard = {
        let mut notes = std::pin::pin!(other.notifications_stream());
        tokio::time::timeout(Duration::from_secs(10), notes.next()).await
    };
    assert!(matches!(heard, Ok(Some(Ok(_)))), "an unwatched replica's writes must wake the other replicas: {heard:?}");
    drop(other);

    let scans = super::many_watchers::event_scans_after_stop(&mut app, &mut db).await - before;
    assert_eq!(scans, 0, "nobody watches this replica: its tail must not read the events table");
    let written = tests::helpers::scalar(&mut db, "SELECT count(*) AS n FROM events").await;
    assert!(written >= 3, "the purchases wrote their events all the same ({written})");
}

/// A watcher after an idle spell, a second one after the first left (the
/// tail idle again in between): each gets every event after its cursor,
/// once and in order, and new events as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_after_an_idle_spell_misses_nothing() {
    let app = spawn_app().await;
    let start = settled_cursor(&app).await;
    app.subscribe("idle-1", "basic-monthly").await;

    let mut first = billing_events(&app)
        .watch_events(bpb::WatchEventsRequest { after_cursor: start.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let before_it = next_events(&mut first, 1, Duration::from_secs(30)).await;
    assert_eq!(before_it[0].user_id, "idle-1", "{}", type_name(&before_it[0]));
    // Live from here on: the tail woke for this watcher.
    app.subscribe("idle-2", "basic-monthly").await;
    let (all_before, _) = list_after(&app, start.clone()).await;
    let n = all_before.len();
    let mut got = before_it;
    got.extend(next_events(&mut first, n - 1, Duration::from_secs(30)).await);
    assert_eq!(ids(&got), ids(&all_before), "the first watcher gets every event once, in order");
    drop(first);

    // Nobody watches: the tail forgets its ring at its next wake-up (this
    // purchase), and more events are written meanwhile.
    app.subscribe("idle-3", "basic-monthly").await;
    app.subscribe("idle-4", "basic-monthly").await;
    let (all, _) = list_after(&app, start.clone()).await;
    let mut second = billing_events(&app)
        .watch_events(bpb::WatchEventsRequest { after_cursor: start, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let replayed = next_events(&mut second, all.len(), Duration::from_secs(30)).await;
    assert_eq!(ids(&replayed), ids(&all), "the second watcher replays every event once, in order");
    app.subscribe("idle-5", "basic-monthly").await;
    let live = next_events(&mut second, 1, Duration::from_secs(30)).await;
    assert_eq!(live[0].user_id, "idle-5", "and follows live: {}", type_name(&live[0]));
    assert_versions_climb(&[replayed, live].concat());
}

fn ids(events: &[bpb::BillingEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}
