//! A page of the stream costs the database a few scans of `events`, however
//! many rows it holds: the tail reader's and ListEvents' reads are one query
//! per page (docs/design.md, "Events": Watching), so their cost does not
//! grow with the rows returned times the rows kept.
use diesel_async::SimpleAsyncConnection;
use tests::{
    helpers::{exec, scalar},
    spawn_app,
};

use super::{
    many_watchers::{event_scans, event_scans_after_stop},
    *,
};

const ROWS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_of_a_thousand_events_costs_a_few_scans() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    // Written while billing is down, so that its tail reader, which starts
    // from now, does not read them; ListEvents alone does.
    app.stop_billing().await;
    exec(
        &mut db,
        &format!(
            "INSERT INTO orders (id, checkout_session_id, user_id, plan_id, amount_minor, currency) \
             SELECT 'order_pc_' || g, gen_random_uuid(), 'pc-' || (g % 10), 'basic-monthly', 49900, 'INR' \
               FROM generate_series(1, {ROWS}) g"
        ),
    )
    .await;
    app.start_billing_again().await.unwrap();
    // Until they are settled (no transaction anywhere in the cluster older
    // than them still runs), ListEvents would not hand them out yet.
    let settled = "SELECT (pg_snapshot_xmin(pg_current_snapshot()) > (SELECT max(xid) FROM events))::int::bigint AS n";
    while scalar(&mut db, settled).await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // This connection's own scans (just above) counted before the baseline.
    db.batch_execute("SELECT pg_stat_force_next_flush()").await.unwrap();
    let before = event_scans(&mut db).await;
    let page = billing_events(&app)
        .list_events(bpb::ListEventsRequest { page_size: ROWS as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), ROWS);
    let scans = event_scans_after_stop(&mut app, &mut db).await - before;
    // ListEvents: the cursor check and two pages of 500, a few scans each;
    // the restarted tail reader: its start and a poll or two.
    assert!(scans < 50, "one ListEvents page of {ROWS} events scanned `events` {scans} times: a scan per row returned");
}
