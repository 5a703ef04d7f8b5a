//! Many watchers cost the database what one does: the replica's tail reader
//! reads each newly settled event once and every caught-up watcher takes it
//! from the ring (docs/design.md, "Events": Watching).
use diesel_async::SimpleAsyncConnection;
use tests::{
    helpers::{exec, scalar},
    spawn_app,
};

use super::*;

const WATCHERS: usize = 50;
/// Transactions written one at a time, each a wake-up of its own.
const TRANSACTIONS: usize = 300;

/// Scans of the `events` table (sequential and index) the statistics show.
pub(super) async fn event_scans(db: &mut diesel_async::AsyncPgConnection) -> i64 {
    db.batch_execute("SELECT pg_stat_clear_snapshot()").await.unwrap();
    scalar(
        db,
        "SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)::bigint AS n \
           FROM pg_stat_user_tables WHERE relname = 'events'",
    )
    .await
}

/// Stops billing and waits until its backends are gone: a backend hands its
/// table statistics in as it exits. Then the scans of `events`.
pub(super) async fn event_scans_after_stop(app: &mut TestApp, db: &mut diesel_async::AsyncPgConnection) -> i64 {
    app.stop_billing().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Backends other than `db`'s that ran more than their connection set-up
    // (`SET ...`): the ones whose statistics may still be pending.
    let busy = "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() AND query NOT LIKE 'SET %'";
    while scalar(db, busy).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "billing's database connections outlived its stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    event_scans(db).await
}

/// 50 watchers follow the stream while transactions commit one at a time;
/// every watcher gets every event. A read scans the `events` table three
/// times (its page, the pending check, the cursor's event); the tail reads
/// once per wake-up, and again while other transactions of the cluster
/// (other tests' databases included: the horizon is the cluster's) hold the
/// event back, at 20 ms, 40 ms... up to 1 s: a few reads per transaction,
/// never one per watcher and event. Fewer than 30 scans per transaction
/// (10 reads) where reading per watcher would take 150 (50 reads) or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_watchers_cost_the_database_reads_per_wake_up_not_per_watcher() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    let before = event_scans(&mut db).await;

    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let mut s = billing_events(&app).watch_events(bpb::WatchEventsRequest::default()).await.unwrap().into_inner();
        let first = s.next().await.unwrap().unwrap();
        assert!(matches!(first.item, Some(Item::Bookmark(_))), "a bookmark comes first: {first:?}");
        streams.push(s);
    }
    for i in 0..TRANSACTIONS {
        exec(
            &mut db,
            &format!(
                "INSERT INTO orders (id, checkout_session_id, user_id, plan_id, amount_minor, currency) \
                 VALUES ('order_mw_{i}', gen_random_uuid(), 'mw-{}', 'basic-monthly', 49900, 'INR')",
                i % 7
            ),
        )
        .await;
        // The write came from outside this process: the tail hears of it
        // as of another replica's write, by NOTIFY (not by a poll).
        exec(&mut db, "NOTIFY events").await;
        // The next transaction only once every watcher has this one's
        // event: each is a wake-up of its own, none folded into another.
        let got = futures::future::join_all(streams.iter_mut().map(|s| next_events(s, 1, Duration::from_secs(30)))).await;
        for events in got {
            assert_eq!(events[0].entity_id, format!("order_mw_{i}"), "{}", type_name(&events[0]));
        }
    }

    drop(streams);
    let scans = event_scans_after_stop(&mut app, &mut db).await - before;
    let n = TRANSACTIONS as i64;
    // Each event needed a read of its own (the statistics do count).
    assert!(scans >= n, "{scans} scans of events for {n} transactions: are the statistics counted?");
    assert!(
        scans < 30 * n,
        "{scans} scans of events for {n} transactions and {WATCHERS} watchers: {:.1} per transaction, \
         where the tail reader alone needs a few reads of 3 scans; reading per watcher would be {} or more",
        scans as f64 / n as f64,
        3 * WATCHERS
    );
    eprintln!("many_watchers: {scans} scans of events for {n} transactions and {WATCHERS} watchers");
}
