//! Orders of retired checkout sessions (docs/design.md, Invariants 26 and
//! 27): a renewal order stays payable from whichever checkout the customer
//! comes back with, and every other order of a session that checkout retired
//! is cancelled at billing, durably, so paying it is a refundable
//! discrepancy, never a second purchase.
mod renewal_checkout;
mod retired_sessions;
mod withdrawal;

use crate::{subscriptions::ts, support::precondition_type};
use chrono::Duration;
use futures::future::join_all;
use proto::{
    billing::v1 as bpb,
    checkout::v1::{self as cpb, SessionStatus},
};
use tests::{
    TestApp,
    harness::{Options, spawn_app_with},
    helpers::{assert_ledger_matches_balances, exec, scalar},
    spawn_app,
};
use tonic::Code;

async fn order(app: &TestApp, id: &str) -> bpb::Order {
    let mut b = app.billing.clone();
    b.get_order(bpb::GetOrderRequest { id: id.into() }).await.unwrap().into_inner().order.unwrap()
}

async fn recover(app: &TestApp, id: &str) -> Result<cpb::RecoverSessionResponse, tonic::Status> {
    let mut c = app.checkout.clone();
    c.recover_session(cpb::RecoverSessionRequest { id: id.into(), ..Default::default() }).await.map(|r| r.into_inner())
}

async fn sync(app: &TestApp) -> String {
    checkout_svc::jobs::run_once(&app.checkout_app, "completion-sync").await.unwrap()
}

async fn reconcile(app: &TestApp, fix: bool) -> Vec<bpb::Finding> {
    app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix }).await.unwrap().into_inner().findings
}

/// Reconcile reports exactly `discrepancies` payment discrepancies and
/// nothing else, `--fix` refunds each once, and then nothing is left.
async fn reconcile_refunds(app: &TestApp, discrepancies: usize) {
    let found = reconcile(app, false).await;
    assert_eq!(found.len(), discrepancies, "{found:?}");
    assert!(found.iter().all(|f| f.kind == "PAYMENT_DISCREPANCY"), "{found:?}");
    let fixed = reconcile(app, true).await;
    assert_eq!(fixed.iter().filter(|f| f.fixed).count(), discrepancies, "{fixed:?}");
    for fix in [false, true] {
        assert!(reconcile(app, fix).await.is_empty(), "nothing left");
    }
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM refunds WHERE discrepancy_id IS NOT NULL AND status = 'PROCESSED'").await,
        discrepancies as i64,
        "one refund per payment that bought nothing"
    );
    assert_ledger_matches_balances(&mut db).await;
}

async fn active_sessions(app: &TestApp, user: &str) -> i64 {
    let mut db = app.checkout_db().await;
    scalar(&mut db, &format!("SELECT count(*) AS n FROM checkout_sessions WHERE user_id = '{user}' AND status = 'ACTIVE'")).await
}
