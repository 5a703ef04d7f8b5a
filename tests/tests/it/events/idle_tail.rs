//! A replica nobody watches reads nothing (docs/design.md, "Events":
//! Watching): its writes only pass the wake-up on to the other replicas,
//! by NOTIFY, when they wrote events. The first watcher wakes its tail,
//! and a watcher that comes after an idle spell still gets every event, in
//! order, from its cursor.
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use tests::{harness::Options, helpers::exec, spawn_app, spawn_app_with};

use super::{
    many_watchers::{event_scans, event_scans_after_stop},
    *,
};

/// No watcher: purchases through the RPCs read the `events` table not once,
/// and another replica listening hears of them. The same with a watcher
/// reads it (the statistics do count).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwatched_replica_reads_no_events_and_wakes_the_others() {
    let mut app = spawn_app().await;
    // Another replica's tail, as far as the database can tell.
    let mut other = diesel_async::AsyncPgConnection::establish(&app.billing_db_url).await.unwrap();
    other.batch_execute("LISTEN events").await.unwrap();
    let mut db = app.billing_db().await;
    let before = event_scans(&mut db).await;
    for i in 0..3 {
        app.subscribe(&format!("unwatched-{i}"), "basic-monthly").await;
    }
    // Only a write that made events is passed on, so this is about these.
    let heard = {
        let mut notes = std::pin::pin!(other.notifications_stream());
        tokio::time::timeout(Duration::from_secs(10), notes.next()).await
    };
    assert!(matches!(heard, Ok(Some(Ok(_)))), "an unwatched replica's writes must wake the other replicas: {heard:?}");
    drop(other);
    let scans = event_scans_after_stop(&mut app, &mut db).await - before;
    assert_eq!(scans, 0, "nobody watches this replica: its tail must not read the events table");
    let written = tests::helpers::scalar(&mut db, "SELECT count(*) AS n FROM events").await;
    assert!(written >= 3, "the purchases wrote their events all the same ({written})");

    // The control: a watcher makes the tail read, and the count shows it.
    let mut watched = spawn_app().await;
    let mut stream = billing_events(&watched).watch_events(bpb::WatchEventsRequest::default()).await.unwrap().into_inner();
    next_events_or_bookmark(&mut stream).await;
    let scans = {
        let mut db = watched.billing_db().await;
        let before = event_scans(&mut db).await;
        for i in 0..3 {
            watched.subscribe(&format!("watched-{i}"), "basic-monthly").await;
        }
        next_events(&mut stream, 3, Duration::from_secs(10)).await;
        drop(stream);
        event_scans_after_stop(&mut watched, &mut db).await - before
    };
    assert!(scans > 0, "a watched tail reads the events table, and the statistics must show it");
}

async fn next_events_or_bookmark(stream: &mut tonic::Streaming<bpb::WatchEventsResponse>) -> Item {
    match tokio::time::timeout(STEP, stream.next()).await {
        Ok(Some(Ok(m))) => m.item.expect("a message carries an item"),
        other => panic!("nothing within {STEP:?}: {other:?}"),
    }
}

/// Each step well under the poll and the idle bookmark (a minute): what
/// comes must come from a wake-up, not from their timers. Not shorter: the
/// settle horizon is the cluster's, and other tests' transactions hold
/// events back for a while (retried at least every second).
const STEP: Duration = Duration::from_secs(10);

/// Polls and idle bookmarks a minute apart.
fn slow_timers() -> Options {
    let d = Options::default();
    Options {
        events: shared::config::EventsConfig {
            poll: Duration::from_secs(60),
            bookmark_every: Duration::from_secs(60),
            ..d.events.clone()
        },
        ..d
    }
}

/// The first watcher of an idle replica wakes its tail (a bookmark saying
/// it is caught up comes at once); an out-of-process write reaches it by
/// NOTIFY. A second watcher, after the first left and the tail idled,
/// resumes from the first one's cursor and gets every event after it, once
/// and in order, then follows live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_after_an_idle_spell_misses_nothing() {
    let app = spawn_app_with(slow_timers()).await;
    let mut db = app.billing_db().await;
    let mut first = billing_events(&app).watch_events(bpb::WatchEventsRequest::default()).await.unwrap().into_inner();
    // Bookmarks only, the first at once, and one of them (the first, or
    // the one right after the tail's first read) caught up.
    loop {
        match next_events_or_bookmark(&mut first).await {
            Item::Bookmark(b) if b.caught_up => break,
            Item::Bookmark(_) => {}
            other => panic!("a caught-up bookmark, not {other:?}"),
        }
    }

    exec(
        &mut db,
        "INSERT INTO orders (id, checkout_session_id, user_id, plan_id, amount_minor, currency) \
         VALUES ('order_idle_sql', gen_random_uuid(), 'idle-sql', 'basic-monthly', 49900, 'INR')",
    )
    .await;
    exec(&mut db, "NOTIFY events").await;
    let sql = next_events(&mut first, 1, STEP).await;
    assert_eq!(sql[0].entity_id, "order_idle_sql", "{}", type_name(&sql[0]));

    app.subscribe("idle-1", "basic-monthly").await;
    let (mine, _) = list_after(&app, sql[0].cursor.clone()).await;
    let got = next_events(&mut first, mine.len(), STEP).await;
    assert_eq!(ids(&got), ids(&mine), "the first watcher gets every event once, in order");
    let resume = got.last().map(|e| e.cursor.clone()).unwrap();
    drop(first);

    // Nobody watches: the tail drops its ring at a wake-up (these
    // purchases), and more events are written meanwhile.
    app.subscribe("idle-2", "basic-monthly").await;
    app.subscribe("idle-3", "basic-monthly").await;
    let (missed, _) = list_after(&app, resume.clone()).await;
    assert!(missed.iter().any(|e| e.user_id == "idle-3"), "idle-3's purchase made events");
    let mut second = billing_events(&app)
        .watch_events(bpb::WatchEventsRequest { after_cursor: resume, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let replayed = next_events(&mut second, missed.len(), STEP).await;
    assert_eq!(ids(&replayed), ids(&missed), "the second watcher gets every event after its cursor once, in order");
    app.subscribe("idle-4", "basic-monthly").await;
    let live = next_events(&mut second, 1, STEP).await;
    assert_eq!(live[0].user_id, "idle-4", "and follows live: {}", type_name(&live[0]));
}

fn ids(events: &[bpb::BillingEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}
