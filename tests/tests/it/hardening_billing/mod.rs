//! billing.v1 at its edges: late payments of superseded orders, orders that
//! can no longer be paid, reconciliation racing itself and deductions,
//! charges racing a purchase, reads that must not write or lock, bad input
//! that must never be INTERNAL, and one held row that must not take the
//! service down. Real PostgreSQL, real gRPC; one test binary, a module per
//! concern.
mod bad_input;
mod balances;
mod payments;
mod reconcile;

use std::time::Duration as StdDuration;

use diesel_async::AsyncPgConnection;
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{retrying, scalar},
};
use tonic_types::StatusExt;

pub(crate) fn precondition_type(s: &tonic::Status) -> String {
    s.get_error_details().precondition_failure().and_then(|p| p.violations.first().map(|v| v.r#type.clone())).unwrap_or_default()
}

async fn verify(app: &TestApp, order_id: &str, payment: &(String, String)) -> Result<bpb::VerifyPaymentResponse, tonic::Status> {
    let mut b = app.billing.clone();
    b.verify_payment(bpb::VerifyPaymentRequest {
        order_id: order_id.into(),
        payment_id: payment.0.clone(),
        signature: payment.1.clone(),
    })
    .await
    .map(|r| r.into_inner())
}

/// RunReconciliation with `fix`, retried on ABORTED/UNAVAILABLE as a
/// well-behaved admin client does.
async fn reconcile_fix(app: &TestApp) -> Result<bpb::RunReconciliationResponse, tonic::Status> {
    let admin = app.billing_admin.clone();
    retrying(|| {
        let mut admin = admin.clone();
        async move { admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await }
    })
    .await
    .map(|r| r.into_inner())
}

/// Waits until some backend of the test's database waits on a lock.
async fn until_someone_waits_on_a_lock(db: &mut AsyncPgConnection) {
    for _ in 0..500 {
        let n = scalar(
            db,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
        if n > 0 {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    panic!("nobody started waiting on the lock");
}
