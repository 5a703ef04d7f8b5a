//! A large incident: RunReconciliation's answer stays bounded (counts, the
//! first findings, `truncated`) and ListFindings pages through every
//! finding once, in a stable order, re-running the read-only checks.
use proto::billing::v1 as bpb;
use std::collections::HashSet;
use tests::{BillingClient, helpers::exec, spawn_app};
use tonic::Code;

/// Paid-plan subscriptions without a paid order, one per user: each is a
/// SUBSCRIPTION_WITHOUT_PAID_ORDER finding (and nothing else: the ledger
/// explains a full balance).
async fn seed_ghosts(db: &mut diesel_async::AsyncPgConnection, n: usize) {
    exec(
        db,
        &format!(
            "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, \
                                        credits_granted, credits_remaining) \
             SELECT gen_random_uuid(), 'ghost-' || i, 'pro-monthly', 'ACTIVE', now(), now(), \
                    now() + interval '1 month', 1500, 1500 \
               FROM generate_series(1, {n}) AS i"
        ),
    )
    .await;
}

async fn all_pages(admin: &mut BillingClient, size: i32) -> (Vec<bpb::Finding>, usize) {
    let mut all = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_findings(bpb::ListFindingsRequest { page_size: size, page_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.findings.len() <= size as usize);
        all.extend(page.findings);
        if page.next_page_token.is_empty() {
            return (all, pages);
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_run_is_bounded_and_list_findings_pages_through_all_of_it() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    seed_ghosts(&mut db, 1205).await;
    let mut admin = app.billing_admin.clone();

    // The run reports without fixing: counts for all, the first 1000 listed.
    let run = admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert_eq!(run.total_findings, 1205);
    assert!(run.truncated);
    assert_eq!(run.findings.len(), 1000);
    assert_eq!(run.fixed, 0);

    // ListFindings in pages of 500: every finding once, the run's listed ones first, same order.
    let (paged, pages) = all_pages(&mut admin, 500).await;
    assert_eq!(pages, 3);
    assert_eq!(paged.len(), 1205);
    let subjects: Vec<_> = paged.iter().map(|f| f.subject_id.clone()).collect();
    assert_eq!(subjects.iter().collect::<HashSet<_>>().len(), 1205, "no finding twice");
    let run_subjects: Vec<_> = run.findings.iter().map(|f| f.subject_id.clone()).collect();
    assert_eq!(run_subjects[..], subjects[..1000]);
    assert!(paged.iter().all(|f| !f.fixed && f.kind_code == bpb::FindingKind::SubscriptionWithoutPaidOrder as i32));

    // A fixing run repairs them all, still answering within the bound; then nothing is left to list.
    let run = admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    assert_eq!((run.total_findings, run.fixed, run.truncated, run.findings.len()), (1205, 1205, true, 1000));
    let (left, pages) = all_pages(&mut admin, 0).await;
    assert_eq!((left.len(), pages), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_run_is_answered_whole_and_pages_span_kinds() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    seed_ghosts(&mut db, 7).await;
    // A second kind: usage sessions stuck ACTIVE.
    exec(
        &mut db,
        "INSERT INTO usage_sessions (id, user_id, subscription_id, kind, status, started_at, deduction_interval_seconds) \
         SELECT gen_random_uuid(), user_id, id, 'TEXT', 'ACTIVE', timestamptz '2000-01-01 00:00:00+00', 60 \
           FROM subscriptions WHERE user_id IN ('ghost-1', 'ghost-2', 'ghost-3')",
    )
    .await;
    let mut admin = app.billing_admin.clone();
    let run = admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert_eq!((run.total_findings, run.truncated), (run.findings.len() as i64, false));
    assert!(run.findings.len() >= 10, "{:?}", run.findings);

    // Pages of 3 cross from one kind to the next without loss.
    let (paged, pages) = all_pages(&mut admin, 3).await;
    assert_eq!(pages, run.findings.len().div_ceil(3).max(1));
    let key = |f: &bpb::Finding| (f.kind_code, f.subject_id.clone());
    assert_eq!(paged.iter().map(key).collect::<Vec<_>>(), run.findings.iter().map(key).collect::<Vec<_>>());

    // Bad sizes and tokens are INVALID_ARGUMENT.
    for size in [-1, 501] {
        let e = admin.list_findings(bpb::ListFindingsRequest { page_size: size, page_token: String::new() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for token in ["zz".to_owned(), hex("NOT_A_KIND|x"), hex("LEDGER_MISMATCH|"), hex("LEDGER_MISMATCH"), "ab".repeat(2000)] {
        let e = admin.list_findings(bpb::ListFindingsRequest { page_size: 0, page_token: token.clone() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{token:.40}");
        assert!(e.message().contains("page_token"), "{e:?}");
    }
}
