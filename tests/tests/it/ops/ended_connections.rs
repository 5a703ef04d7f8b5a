//! A server that ends a pooled connection, idle or in the middle of a
//! statement (57P01, as at a failover): UNAVAILABLE with RetryInfo, never
//! INTERNAL, and the next call succeeds on a new connection; the event
//! tail, whose listening connection ends with the rest, listens again
//! (docs/design.md, Failover).
use std::time::Duration as StdDuration;

use futures::StreamExt;
use proto::billing::v1::{self as bpb, watch_events_response::Item};
use tests::{
    harness,
    helpers::{exec, scalar, wait_for_waiters},
    spawn_app, spawn_app_with,
};

use super::read_only_server::{Server, is_db_unavailable};

/// An idle pooled connection the server ends (57P01, as at a failover): the
/// next call succeeds or answers UNAVAILABLE, never INTERNAL, and the one
/// after succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_connection_ended_by_the_server_fails_at_most_the_next_call() {
    // One pooled connection: the next call gets the ended one.
    let app = spawn_app_with(harness::Options { pool_size: 1, ..Default::default() }).await;
    let id = app.start_usage("idle", bpb::UsageKind::Text).await.unwrap().id;
    let mut server = Server::of(&app.billing_db_url).await;
    for round in 0..3 {
        assert!(server.end_sessions().await >= 1, "round {round}: billing held no connection");
        let mut b = app.billing.clone();
        let req =
            |n: &str| bpb::DeductRequest { usage_session_id: id.clone(), deduction_id: format!("idle-{round}-{n}"), units: 1 };
        if let Err(s) = b.deduct(req("a")).await {
            assert!(is_db_unavailable(&s), "round {round}: the call after the kill: {s:?}");
        }
        b.deduct(req("b")).await.unwrap_or_else(|s| panic!("round {round}: the second call after the kill: {s:?}"));
    }
}

/// A statement whose connection the server ends while it runs (57P01, a
/// primary shutting down at a failover): UNAVAILABLE, nothing charged, and
/// the next call succeeds on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_whose_connection_the_server_ends_answers_unavailable() {
    let app = spawn_app_with(harness::Options::patient()).await;
    let id = app.start_usage("ended", bpb::UsageKind::Text).await.unwrap().id;
    let deduct = |n: &str| {
        let mut b = app.billing.clone();
        let req = bpb::DeductRequest { usage_session_id: id.clone(), deduction_id: n.into(), units: 1 };
        async move { b.deduct(req).await }
    };
    // The Deduct waits for the session's row, which the test holds.
    let mut holder = app.billing_db().await;
    exec(&mut holder, "BEGIN").await;
    exec(&mut holder, &format!("SELECT id FROM usage_sessions WHERE id = '{id}' FOR UPDATE")).await;
    let waiting = tokio::spawn(deduct("ended-1"));
    let mut db = app.billing_db().await;
    assert!(wait_for_waiters(&mut db, 1, StdDuration::from_secs(10)).await, "the Deduct never waited");
    let waiter = "FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    assert_eq!(scalar(&mut db, &format!("SELECT count(pg_terminate_backend(pid)) AS n {waiter}")).await, 1);
    let s = waiting.await.unwrap().unwrap_err();
    assert!(is_db_unavailable(&s), "the Deduct whose connection was ended: {s:?}");
    exec(&mut holder, "ROLLBACK").await;
    deduct("ended-2").await.unwrap();
    let charged = "SELECT count(*) AS n FROM deductions WHERE deduction_id LIKE 'ended-%'";
    assert_eq!(scalar(&mut db, charged).await, 1, "only the second Deduct charged");
}

/// Every session of billing's database ended, the event tail's listening
/// connection with the rest (as at a failover), three times: a watcher
/// still gets the event of a change made afterwards each time (the tail
/// listens again instead of stopping).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_tail_listens_again_after_the_server_ended_its_connection() {
    let app = spawn_app().await;
    let mut watcher = crate::events::billing_events(&app);
    let mut stream = watcher.watch_events(bpb::WatchEventsRequest::default()).await.unwrap().into_inner();
    let mut cursor = String::new();
    let mut server = Server::of(&app.billing_db_url).await;
    for round in 0..3 {
        assert!(server.end_sessions().await >= 1, "round {round}: billing held no connection");
        let user = format!("tail-{round}");
        let mut attempts = 0;
        let session = loop {
            attempts += 1;
            match app.start_usage(&user, bpb::UsageKind::Text).await {
                Ok(s) => break s,
                Err(s) if is_db_unavailable(&s) && attempts < 5 => continue,
                Err(s) => panic!("round {round}: StartUsageSession after the sessions were ended: {s:?}"),
            }
        };
        let deadline = tokio::time::Instant::now() + StdDuration::from_secs(15);
        loop {
            let item = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(m))) => m.item,
                // A stream the database failure ended: resumed from its cursor, as a consumer does.
                Ok(Some(Err(s))) if s.code() == tonic::Code::Unavailable => None,
                Ok(None) => None,
                Ok(Some(Err(s))) => panic!("round {round}: the watcher failed: {s:?}"),
                Err(_) => panic!("round {round}: no event of usage session {} within 15 s", session.id),
            };
            match item {
                Some(Item::Event(e)) if e.entity_id == session.id => break,
                Some(Item::Event(e)) => cursor = e.cursor,
                Some(Item::Bookmark(b)) => cursor = b.cursor,
                None => {
                    let req = bpb::WatchEventsRequest { after_cursor: cursor.clone(), ..Default::default() };
                    stream = watcher.watch_events(req).await.unwrap().into_inner();
                }
            }
        }
    }
}
