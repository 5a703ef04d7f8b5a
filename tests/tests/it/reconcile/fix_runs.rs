//! Reconciliation racing itself and the deductions it repairs.
use futures::future::join_all;
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, exec, retrying, scalar},
    spawn_app,
};

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

/// Eight reconciliations with `fix` at once: each finding is repaired, and
/// audited, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reconcile_fix_runs_repair_each_finding_once() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    for i in 0..5 {
        // A balance the ledger does not explain.
        let s = app.subscribe(&format!("rc-ledger-{i}"), "basic-monthly").await;
        exec(&mut db, &format!("UPDATE subscriptions SET credits_remaining = credits_remaining - 7 WHERE id = '{}'", s.id)).await;
        // A paid plan without a paid order.
        exec(
            &mut db,
            &format!(
                "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining) \
                 VALUES (gen_random_uuid(), 'rc-ghost-{i}', 'pro-monthly', 'ACTIVE', now(), now(), now() + interval '1 month', 1500, 1500)"
            ),
        )
        .await;
        // A usage session stuck ACTIVE.
        app.start_usage(&format!("rc-stuck-{i}"), bpb::UsageKind::Call).await.unwrap();
    }
    app.clock.advance(chrono::Duration::hours(25));
    let before = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    let expected = before.into_inner().findings.len() as i64;
    assert_eq!(expected, 15);

    let runs = (0..8).map(|_| reconcile_fix(&app));
    let reports: Vec<_> = join_all(runs).await.into_iter().map(|r| r.unwrap()).collect();
    let fixed: i64 = reports.iter().map(|r| r.fixed).sum();
    assert_eq!(fixed, expected, "each finding repaired once across all runs");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit").await, expected, "one audit row per finding");
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM (SELECT kind, subject_id FROM reconcile_audit GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    let after = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    assert!(after.get_ref().findings.is_empty(), "{:?}", after.get_ref().findings);
    assert_ledger_matches_balances(&mut db).await;
}

/// The ledger repair racing deductions on the same balances: a credit spent
/// while the repair runs never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_repair_racing_deductions_never_gives_spent_credits_back() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    let mut sessions = Vec::new();
    for i in 0..8 {
        let user = format!("lr-{i}");
        app.subscribe(&user, "basic-monthly").await;
        sessions.push(app.start_usage(&user, bpb::UsageKind::Text).await.unwrap().id);
    }
    exec(
        &mut db,
        "UPDATE subscriptions SET credits_remaining = credits_remaining - 3 WHERE user_id LIKE 'lr-%' AND status = 'ACTIVE'",
    )
    .await;
    let deducts = sessions.iter().flat_map(|s| (0..12).map(move |k| (s.clone(), k))).map(|(s, k)| {
        let b = app.billing.clone();
        async move {
            retrying(|| {
                let (mut b, s) = (b.clone(), s.clone());
                async move { b.deduct(bpb::DeductRequest { usage_session_id: s, deduction_id: format!("d{k}"), units: 1 }).await }
            })
            .await
        }
    });
    let repairs = (0..4).map(|_| reconcile_fix(&app));
    let (d, r) = tokio::join!(join_all(deducts), join_all(repairs));
    assert!(d.iter().all(|x| x.is_ok()) && r.iter().all(|x| x.is_ok()));
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM ledger WHERE kind = 'USAGE'").await, 8 * 12);
    assert_ledger_matches_balances(&mut db).await;
    assert_eq!(
        scalar(
            &mut db,
            "SELECT sum(credits_remaining)::bigint AS n FROM subscriptions WHERE user_id LIKE 'lr-%' AND status = 'ACTIVE'"
        )
        .await,
        8 * (300 - 12),
        "every deduction is paid for, whatever the repair saw"
    );
}
