//! Answers with nothing to report are still answers: proto3 drops zero
//! values, so a clean RunReconciliation or an empty ListFindings page must
//! carry fields that are set anyway (`clean`, `checked_at`, `checked_kinds`),
//! or grpcurl prints `{}` (docs/operations.md §9). A message whose wire
//! encoding is empty is exactly one grpcurl prints as `{}`.
use chrono::Duration;
use prost::Message;
use proto::billing::v1::{self as bpb, FindingKind};
use shared::time::to_proto;
use tests::{helpers::exec, spawn_app};

/// Every kind a run checks, in check order (the CLI-only cross-check with
/// checkout is not among them).
const CHECKED: [FindingKind; 8] = [
    FindingKind::PaidOrderWithoutSubscription,
    FindingKind::SubscriptionWithoutPaidOrder,
    FindingKind::DuplicateSubscriptionsForOrder,
    FindingKind::PaymentDiscrepancy,
    FindingKind::ForeignPayment,
    FindingKind::WebhookRejected,
    FindingKind::LedgerMismatch,
    FindingKind::StuckUsageSession,
];

async fn run(app: &tests::TestApp, fix: bool) -> bpb::RunReconciliationResponse {
    let mut admin = app.billing_admin.clone();
    admin.run_reconciliation(bpb::RunReconciliationRequest { fix }).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_run_says_clean_when_it_looked_and_what_it_checked() {
    let app = spawn_app().await;
    app.subscribe("e-paid", "basic-monthly").await;
    for fix in [false, true] {
        let r = run(&app, fix).await;
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!((r.total_findings, r.fixed, r.truncated), (0, 0, false));
        assert!(r.clean, "fix = {fix}: nothing found is a clean run");
        assert_eq!(r.checked_at, Some(to_proto(app.clock.now())), "the moment the checks judged the data at");
        let kinds: Vec<FindingKind> = r.checked_kinds().collect();
        assert_eq!(kinds, CHECKED, "every check, in check order");
        assert!(r.encoded_len() > 0, "a clean run is not `{{}}` in grpcurl");
    }
    // The clock moves, and so does checked_at.
    app.clock.advance(Duration::hours(1));
    assert_eq!(run(&app, false).await.checked_at, Some(to_proto(app.clock.now())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_with_a_finding_is_not_clean_until_the_next_run_after_the_fix() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    // A paid-plan subscription without a paid order: repaired by a fix run.
    exec(
        &mut db,
        "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining) \
         VALUES (gen_random_uuid(), 'e-ghost', 'pro-monthly', 'ACTIVE', now(), now(), now() + interval '1 month', 1500, 1500)",
    )
    .await;
    let check = run(&app, false).await;
    assert_eq!((check.total_findings, check.clean), (1, false), "{:?}", check.findings);
    let fix = run(&app, true).await;
    assert_eq!((fix.total_findings, fix.fixed, fix.clean), (1, 1, false), "a run that repaired something found something");
    let after = run(&app, false).await;
    assert_eq!((after.total_findings, after.clean), (0, true), "{:?}", after.findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_findings_page_still_says_when_it_looked() {
    let app = spawn_app().await;
    let mut admin = app.billing_admin.clone();
    let page = admin.list_findings(bpb::ListFindingsRequest::default()).await.unwrap().into_inner();
    assert!(page.findings.is_empty(), "{:?}", page.findings);
    assert!(page.next_page_token.is_empty());
    assert_eq!(page.checked_at, Some(to_proto(app.clock.now())));
    assert!(page.encoded_len() > 0, "an empty page is not `{{}}` in grpcurl");
}
