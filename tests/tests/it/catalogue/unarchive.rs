//! UnarchivePlan through real gRPC (docs/design.md, "Catalogue": on sale ⇄
//! archived): an archived plan back on sale and bought again; a plan on
//! sale answered as it is; request_id replays, validate_only, etags; the
//! free plan and unknown plans; archive and unarchive racing, each
//! request_id applied once.
use futures::future::join_all;
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{retrying, scalar},
    spawn_app,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{etag, get, rid};
use crate::support::precondition_type;

fn archive_request(id: &str, etag: &str) -> bpb::ArchivePlanRequest {
    bpb::ArchivePlanRequest { plan_id: id.into(), request_id: rid(), validate_only: false, etag: etag.into() }
}

fn unarchive_request(id: &str, etag: &str) -> bpb::UnarchivePlanRequest {
    bpb::UnarchivePlanRequest { plan_id: id.into(), request_id: rid(), validate_only: false, etag: etag.into() }
}

async fn archive(app: &TestApp, r: &bpb::ArchivePlanRequest) -> Result<bpb::CatalogPlan, Status> {
    app.catalog.clone().archive_plan(r.clone()).await.map(|r| r.into_inner().plan.unwrap())
}

async fn unarchive(app: &TestApp, r: &bpb::UnarchivePlanRequest) -> Result<bpb::CatalogPlan, Status> {
    app.catalog.clone().unarchive_plan(r.clone()).await.map(|r| r.into_inner().plan.unwrap())
}

/// CreateOrder of `plan` for `user`, as checkout's CreateSession sends it.
async fn buy(app: &TestApp, user: &str, plan: &str) -> Result<bpb::CreateOrderResponse, Status> {
    let r = bpb::CreateOrderRequest {
        checkout_session_id: uuid::Uuid::new_v4().to_string(),
        user_id: user.into(),
        plan_id: plan.into(),
    };
    app.billing.clone().create_order(r).await.map(|r| r.into_inner())
}

fn reason(e: &Status) -> String {
    e.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archived_plan_unarchived_is_on_sale_again() {
    let app = spawn_app().await;
    let before = get(&app, "pro-monthly").await;
    let archived = archive(&app, &archive_request("pro-monthly", "")).await.unwrap();
    assert!(archived.archived_at.is_some());
    let e = buy(&app, "late", "pro-monthly").await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "PLAN_NOT_PURCHASABLE".to_owned()), "{e:?}");

    let back = unarchive(&app, &unarchive_request("pro-monthly", &archived.plan.as_ref().unwrap().etag)).await.unwrap();
    assert!(back.archived_at.is_none());
    let plan = back.plan.clone().unwrap();
    assert!(plan.active);
    assert_eq!(back.versions, before.versions, "its versions as they were");
    assert_eq!(plan.etag, before.plan.as_ref().unwrap().etag, "the plan as it was before the archive");
    assert_eq!(get(&app, "pro-monthly").await, back);
    let shown = app.billing.clone().get_plan(bpb::GetPlanRequest { id: "pro-monthly".into() }).await.unwrap();
    assert!(shown.into_inner().plan.unwrap().active, "BillingService sells it again");
    let listed = app.catalog.clone().list_plans(bpb::PlanCatalogServiceListPlansRequest::default()).await.unwrap();
    assert!(
        listed.into_inner().plans.iter().any(|p| p.plan.as_ref().unwrap().id == "pro-monthly"),
        "listed without show_archived"
    );

    let order = buy(&app, "late", "pro-monthly").await.unwrap().order.unwrap();
    assert_eq!((order.plan_id.as_str(), order.amount_minor), ("pro-monthly", plan.price_minor));

    // On sale already: answered as it is, the etag not asked.
    let again = unarchive(&app, &unarchive_request("pro-monthly", "0123456789abcdef")).await.unwrap();
    assert_eq!(again, back);
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM plans WHERE id = 'pro-monthly' AND active AND archived_at IS NULL").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_free_plan_and_unknown_plans_are_refused() {
    let app = spawn_app().await;
    let e = unarchive(&app, &unarchive_request("free", "")).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "FREE_PLAN".to_owned()));
    assert_eq!(reason(&e), "FREE_PLAN");
    let e = unarchive(&app, &unarchive_request("gold", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.get_error_details().resource_info().unwrap().resource_name, "gold");
    let e = unarchive(&app, &bpb::UnarchivePlanRequest { request_id: String::new(), ..unarchive_request("pro-monthly", "") })
        .await
        .unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::InvalidArgument, "INVALID_FIELD".to_owned()));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM idempotency_keys").await, 0, "no key kept for a refusal");
}

/// A replay answers the first call's result and applies nothing again:
/// the plan archived since stays archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_unarchive_answers_the_first_result_and_applies_nothing_again() {
    let app = spawn_app().await;
    archive(&app, &archive_request("basic-monthly", "")).await.unwrap();
    let r = unarchive_request("basic-monthly", "");
    let first = unarchive(&app, &r).await.unwrap();
    assert!(first.archived_at.is_none());
    let archived = archive(&app, &archive_request("basic-monthly", "")).await.unwrap();
    assert_eq!(unarchive(&app, &r).await.unwrap(), first, "the first answer");
    assert_eq!(get(&app, "basic-monthly").await, archived, "not unarchived a second time");
    let e = unarchive(&app, &bpb::UnarchivePlanRequest { etag: archived.plan.unwrap().etag, ..r }).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_only_answers_the_plan_on_sale_and_writes_nothing() {
    let app = spawn_app().await;
    let archived = archive(&app, &archive_request("basic-monthly", "")).await.unwrap();
    let tag = archived.plan.as_ref().unwrap().etag.clone();
    let dry = bpb::UnarchivePlanRequest { validate_only: true, ..unarchive_request("basic-monthly", &tag) };
    let would = unarchive(&app, &dry).await.unwrap();
    assert!(would.archived_at.is_none() && would.plan.as_ref().unwrap().active);
    assert_eq!(get(&app, "basic-monthly").await, archived, "still archived");
    assert_eq!(buy(&app, "dry", "basic-monthly").await.unwrap_err().code(), Code::FailedPrecondition);
    let mut db = app.billing_db().await;
    let keys = "SELECT count(*) AS n FROM idempotency_keys WHERE method = 'billing.UnarchivePlan'";
    assert_eq!(scalar(&mut db, keys).await, 0, "no key kept");
    // It refuses what the change would refuse.
    let stale = bpb::UnarchivePlanRequest { validate_only: true, ..unarchive_request("basic-monthly", "0123456789abcdef") };
    assert_eq!(reason(&unarchive(&app, &stale).await.unwrap_err()), "ETAG_MISMATCH");
    // Its request_id was not kept: the real call with it unarchives.
    let real = unarchive(&app, &bpb::UnarchivePlanRequest { validate_only: false, ..dry }).await.unwrap();
    assert_eq!(real.plan.as_ref().map(|p| p.active), Some(true));
    assert_eq!(scalar(&mut db, keys).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_etag_is_aborted_and_changes_nothing() {
    let app = spawn_app().await;
    let read = etag(&app, "pro-monthly").await;
    let archived = archive(&app, &archive_request("pro-monthly", &read)).await.unwrap();
    let e = unarchive(&app, &unarchive_request("pro-monthly", &read)).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::Aborted, "ETAG_MISMATCH".to_owned()));
    assert!(e.get_error_details().retry_info().is_none(), "resending cannot succeed");
    assert_eq!(get(&app, "pro-monthly").await, archived);
    let fresh = archived.plan.unwrap().etag;
    assert!(unarchive(&app, &unarchive_request("pro-monthly", &fresh)).await.unwrap().archived_at.is_none());
}

/// An archive and an unarchive of one plan, each sent 10 times at once
/// with its own request_id: each is applied once (every answer is its
/// first call's, one key each), queued on the plan's row lock, and the
/// plan ends as the one applied last left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_archives_and_unarchives_apply_each_request_id_once() {
    let app = spawn_app().await;
    let start = archive(&app, &archive_request("pro-monthly", "")).await.unwrap();
    let (a, u) = (archive_request("pro-monthly", ""), unarchive_request("pro-monthly", ""));
    let archives = join_all((0..10).map(|_| retrying(|| archive(&app, &a))));
    let unarchives = join_all((0..10).map(|_| retrying(|| unarchive(&app, &u))));
    let (archives, unarchives) = tokio::join!(archives, unarchives);
    let archives: Vec<_> = archives.into_iter().map(Result::unwrap).collect();
    let unarchives: Vec<_> = unarchives.into_iter().map(Result::unwrap).collect();
    assert!(archives.windows(2).all(|w| w[0] == w[1]), "one answer for one request_id");
    assert!(unarchives.windows(2).all(|w| w[0] == w[1]), "one answer for one request_id");
    let (archived, on_sale) = (&archives[0], &unarchives[0]);
    assert!(on_sale.archived_at.is_none() && archived.archived_at.is_some());
    let end = get(&app, "pro-monthly").await;
    if end == *on_sale {
        assert_eq!(*archived, start, "the archive came first and found it archived");
    } else {
        assert_eq!(end, *archived, "the unarchive came first, the archive last");
    }
    let mut db = app.billing_db().await;
    for method in ["billing.ArchivePlan", "billing.UnarchivePlan"] {
        let n = scalar(&mut db, &format!("SELECT count(*) AS n FROM idempotency_keys WHERE method = '{method}'")).await;
        assert_eq!(n, if method == "billing.ArchivePlan" { 2 } else { 1 }, "{method}");
    }
}
