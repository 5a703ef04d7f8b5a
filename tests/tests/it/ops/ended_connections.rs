//! A server that ends a pooled connection, idle or in the middle of a
//! statement (57P01, as at a failover): UNAVAILABLE with RetryInfo, never
//! INTERNAL, and the next call succeeds on a new connection
//! (docs/design.md, Failover).
use std::time::Duration as StdDuration;

use proto::billing::v1 as bpb;
use tests::{
    harness,
    helpers::{exec, scalar, wait_for_waiters},
    spawn_app_with,
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
