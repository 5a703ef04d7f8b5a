//! A held row: callers behind it past the lock bound, the server full
//! meanwhile, the only pooled connection waiting on it.
use std::time::Duration;

use proto::{billing::v1 as bpb, error::ErrorReason as R};
use tests::{
    harness::Options,
    helpers::{exec, wait_for_waiters},
    spawn_app_with,
};

use super::Walk;

/// One held row: callers behind it past the lock bound (ABORTED ROW_BUSY),
/// the server full meanwhile (UNAVAILABLE OVERLOADED).
pub(super) async fn walk_a_held_row(w: &mut Walk) {
    let opts = Options { max_concurrent_requests: 1, lock_timeout: Duration::from_secs(2), ..Options::default() };
    let app = spawn_app_with(opts).await;
    let u = app.start_usage("held", bpb::UsageKind::Text).await.unwrap();
    let mut holder = app.billing_db().await;
    let mut observer = app.billing_db().await;
    exec(&mut holder, "BEGIN").await;
    exec(&mut holder, &format!("SELECT 1 FROM usage_sessions WHERE id = '{}' FOR UPDATE", u.id)).await;
    let stuck = {
        let mut b = app.billing.clone();
        let id = u.id.clone();
        tokio::spawn(
            async move { b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: "d".into(), units: 1 }).await },
        )
    };
    assert!(wait_for_waiters(&mut observer, 1, Duration::from_secs(10)).await, "the deduction never waited on the row");
    w.saw(R::Overloaded, "ListPlans(server full)", app.billing.clone().list_plans(bpb::ListPlansRequest::default()).await);
    w.saw(R::RowBusy, "Deduct(row held past the lock bound)", stuck.await.unwrap());
    exec(&mut holder, "COMMIT").await;
}

/// The only pooled connection waits on a held row: the next call finds
/// none in time (UNAVAILABLE DATABASE_UNAVAILABLE), or its deadline passes
/// first (DEADLINE_EXCEEDED).
pub(super) async fn walk_no_connection(w: &mut Walk) {
    let opts = Options { pool_size: 1, lock_timeout: Duration::from_secs(10), ..Options::default() };
    let app = spawn_app_with(opts).await;
    let u = app.start_usage("pooled", bpb::UsageKind::Text).await.unwrap();
    let mut holder = app.billing_db().await;
    let mut observer = app.billing_db().await;
    exec(&mut holder, "BEGIN").await;
    exec(&mut holder, &format!("SELECT 1 FROM usage_sessions WHERE id = '{}' FOR UPDATE", u.id)).await;
    let waiting = {
        let mut b = app.billing.clone();
        let id = u.id.clone();
        tokio::spawn(
            async move { b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: "d".into(), units: 1 }).await },
        )
    };
    assert!(wait_for_waiters(&mut observer, 1, Duration::from_secs(10)).await, "the deduction never waited on the row");
    let r = app.billing.clone().get_plan(bpb::GetPlanRequest { id: "free".into() }).await;
    w.saw(R::DatabaseUnavailable, "GetPlan(no free connection)", r);
    // The caller's deadline passes first: answered by the service with its
    // reason, not tonic's bare CANCELLED.
    let mut req = tonic::Request::new(bpb::GetPlanRequest { id: "free".into() });
    req.set_timeout(Duration::from_millis(300));
    let s = w.saw(R::DeadlineExceeded, "GetPlan(300 ms deadline, no free connection)", app.billing.clone().get_plan(req).await);
    assert!(s.message().contains("same idempotency key"), "{s:?}");
    exec(&mut holder, "COMMIT").await;
    waiting.await.unwrap().unwrap();
}
