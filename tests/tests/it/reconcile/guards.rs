//! Guards of reconciliation: a `--fix` run re-checks its finding under the
//! order lock. See `support::guards`.

use proto::billing::v1::{self as bpb};
use tests::helpers::{exec, scalar, wait_for_waiters};

use crate::support::guards::*;

/// Two `--fix` runs that both found a paid order without a subscription
/// repair it once: the second re-checks the finding under the order lock and
/// finds it gone. Both runs are held at that lock until both wait there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_reconcile_recheck_two_fix_runs_repair_a_finding_once() {
    let app = spawn_app_holding_rows().await;
    let mut db = app.billing_db().await;
    let sub = app.subscribe("lost-sub", "basic-monthly").await;
    exec(&mut db, &format!("DELETE FROM subscriptions WHERE id = '{}'", sub.id)).await;

    let holder =
        Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM orders WHERE id = '{}' FOR UPDATE", sub.order_id)).await;
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let mut b = app.billing_admin.clone();
            tokio::spawn(async move { b.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await })
        })
        .collect();
    let queued = wait_for_waiters(&mut db, 2, SEE_WAITERS).await;
    holder.release().await;
    let mut fixed = 0;
    for r in runs {
        let r = r.await.unwrap().expect("reconciliation runs").into_inner();
        assert!(
            r.findings.iter().any(|f| f.kind == "PAID_ORDER_WITHOUT_SUBSCRIPTION" && f.subject_id == sub.order_id),
            "both runs found the order: {:?}",
            r.findings
        );
        fixed += r.fixed;
    }
    assert!(queued, "the two runs never both waited on the order; the race did not happen");
    assert_eq!(fixed, 1, "one repair in all");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM reconcile_audit WHERE subject_id = '{}'", sub.order_id)).await,
        1
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", sub.order_id)).await, 1);
}
