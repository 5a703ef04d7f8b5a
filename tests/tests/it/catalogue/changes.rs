//! Every change of the catalogue through real gRPC: create, read, list,
//! rename, new terms, new price, archive; request_id replays,
//! validate_only and etags.
use proto::billing::v1 as bpb;
use tests::{
    helpers::{limit, new_plan, scalar},
    spawn_app,
};
use tonic::Code;
use tonic_types::StatusExt;

use super::{etag, get, mask, reprice, reprice_request, rid};

fn limits_of(p: &bpb::PriceVersion) -> ((bool, i64), (bool, i64), (bool, i64)) {
    let l = p.limits.unwrap();
    let f = |l: Option<bpb::Limit>| l.map(|l| (l.unlimited, l.max)).unwrap();
    (f(l.sessions_per_period), f(l.minutes_per_period), f(l.upload_bytes))
}

fn team() -> bpb::CreatePlanRequest {
    let mut r = new_plan("team-monthly", "Team", 299_900, 3000);
    r.limits = Some(bpb::PlanLimitsInput {
        sessions_per_period: Some(limit(Some(20))),
        minutes_per_period: Some(limit(None)),
        upload_bytes: Some(limit(Some(0))),
    });
    r
}

fn update(id: &str, etag: &str, paths: &[&str]) -> bpb::UpdatePlanRequest {
    bpb::UpdatePlanRequest {
        plan_id: id.into(),
        request_id: rid(),
        etag: etag.into(),
        update_mask: mask(paths),
        ..Default::default()
    }
}

#[allow(deprecated)] // the legacy limit ints stay filled
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_is_created_read_renamed_given_new_terms_and_a_new_price_then_archived() {
    let app = spawn_app().await;
    let mut cat = app.catalog.clone();
    let created = cat.create_plan(team()).await.unwrap().into_inner().plan.unwrap();
    let plan = created.plan.clone().unwrap();
    assert_eq!(
        (plan.id.as_str(), plan.name.as_str(), plan.price_minor, plan.currency.as_str()),
        ("team-monthly", "Team", 299_900, "INR")
    );
    assert_eq!((plan.credits_per_period, plan.current_version, plan.active), (3000, 1, true));
    assert_eq!(plan.period_code, bpb::PlanPeriod::Monthly as i32);
    assert_eq!(created.versions.len(), 1);
    let v1 = &created.versions[0];
    assert_eq!((v1.version, v1.price_minor, v1.credits_per_period), (1, 299_900, 3000));
    assert_eq!(limits_of(v1), ((false, 20), (true, 0), (false, 0)), "unlimited minutes said, no uploads said as max 0");
    assert!(created.archived_at.is_none() && created.created_at.is_some());

    // BillingService shows the same plan, its limits in the old ints too.
    let billing = app.billing.clone().get_plan(bpb::GetPlanRequest { id: "team-monthly".into() }).await.unwrap().into_inner();
    let billing = billing.plan.unwrap();
    assert_eq!(billing, plan);
    let l = billing.limits.unwrap();
    assert_eq!((l.max_sessions_per_period, l.max_minutes_per_period, l.max_upload_bytes), (20, 0, 0));
    assert_eq!(get(&app, "team-monthly").await, created);

    // A new name: at once, no version.
    let mut rename = update("team-monthly", &plan.etag, &["name"]);
    rename.name = "Team (monthly)".into();
    let renamed = cat.update_plan(rename).await.unwrap().into_inner();
    assert!(renamed.created_version.is_none());
    let after = renamed.plan.unwrap();
    assert_eq!((after.plan.as_ref().unwrap().name.as_str(), after.versions.len()), ("Team (monthly)", 1));
    assert_ne!(after.plan.as_ref().unwrap().etag, plan.etag);

    // New credits and one limit: version 2 at the same price, the other limits kept.
    let mut terms = update("team-monthly", &after.plan.unwrap().etag, &["credits_per_period", "limits.minutes_per_period"]);
    terms.credits_per_period = 4000;
    terms.limits = Some(bpb::PlanLimitsInput { minutes_per_period: Some(limit(Some(600))), ..Default::default() });
    let changed = cat.update_plan(terms.clone()).await.unwrap().into_inner();
    let v2 = changed.created_version.unwrap();
    assert_eq!((v2.version, v2.price_minor, v2.credits_per_period), (2, 299_900, 4000));
    assert_eq!(limits_of(&v2), ((false, 20), (false, 600), (false, 0)));
    let now = changed.plan.unwrap();
    assert_eq!((now.plan.as_ref().unwrap().current_version, now.plan.as_ref().unwrap().credits_per_period), (2, 4000));
    assert_eq!(now.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);

    // The same values again change nothing, so its stale etag does not matter.
    terms.request_id = rid();
    let same = cat.update_plan(terms).await.unwrap().into_inner();
    assert!(same.created_version.is_none());
    assert_eq!(same.plan.unwrap(), now);

    // A new price: version 3 with version 2's credits and limits.
    let priced = reprice(&app, "team-monthly", 349_900, &now.plan.unwrap().etag).await.unwrap();
    let v3 = priced.version.unwrap();
    assert_eq!((v3.version, v3.price_minor, v3.credits_per_period), (3, 349_900, 4000));
    assert_eq!(limits_of(&v3), limits_of(&v2));
    assert_eq!(priced.plan.unwrap().plan.unwrap().price_minor, 349_900);

    // Archived: off sale, listed only with show_archived, still in BillingService's list.
    let archive = bpb::ArchivePlanRequest { plan_id: "team-monthly".into(), request_id: rid(), ..Default::default() };
    let archived = cat.archive_plan(archive.clone()).await.unwrap().into_inner().plan.unwrap();
    assert!(archived.archived_at.is_some());
    assert!(!archived.plan.as_ref().unwrap().active);
    let again = cat
        .archive_plan(bpb::ArchivePlanRequest { request_id: rid(), etag: "0123456789abcdef".into(), ..archive })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.plan.unwrap(), archived, "archived already: nothing changes, the etag is not asked");
    let ids = |r: bpb::PlanCatalogServiceListPlansResponse| r.plans.into_iter().map(|p| p.plan.unwrap().id).collect::<Vec<_>>();
    let on_sale = cat.list_plans(bpb::PlanCatalogServiceListPlansRequest::default()).await.unwrap().into_inner();
    assert_eq!(ids(on_sale), ["basic-monthly", "free", "pro-monthly"]);
    let all = bpb::PlanCatalogServiceListPlansRequest { show_archived: true, ..Default::default() };
    assert_eq!(ids(cat.list_plans(all).await.unwrap().into_inner()), ["basic-monthly", "free", "pro-monthly", "team-monthly"]);
    let listed = app.billing.clone().list_plans(bpb::ListPlansRequest::default()).await.unwrap().into_inner().plans;
    assert!(listed.iter().any(|p| p.id == "team-monthly" && !p.active), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_catalogue_pages_by_id_with_every_version() {
    let app = spawn_app().await;
    for i in 0..7 {
        app.create_plan(&format!("extra-{i}"), "Extra", 1000 + i, 10).await;
    }
    reprice(&app, "extra-3", 5000, "").await.unwrap();
    let mut cat = app.catalog.clone();
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let r = bpb::PlanCatalogServiceListPlansRequest { page_size: 3, page_token: token.clone(), show_archived: false };
        let page = cat.list_plans(r).await.unwrap().into_inner();
        assert!(page.plans.len() <= 3);
        seen.extend(page.plans);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let ids: Vec<String> = seen.iter().map(|p| p.plan.as_ref().unwrap().id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "by id, each once");
    assert_eq!(ids.len(), 10);
    let extra3 = seen.iter().find(|p| p.plan.as_ref().unwrap().id == "extra-3").unwrap();
    assert_eq!(extra3.versions.iter().map(|v| (v.version, v.price_minor)).collect::<Vec<_>>(), [(1, 1003), (2, 5000)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_request_id_answers_the_first_result_and_applies_nothing_again() {
    let app = spawn_app().await;
    let mut cat = app.catalog.clone();
    let create = team();
    let first = cat.create_plan(create.clone()).await.unwrap().into_inner();
    assert_eq!(cat.create_plan(create.clone()).await.unwrap().into_inner(), first, "a replay, not ALREADY_EXISTS");

    let price = reprice_request("team-monthly", 399_900, "");
    let made = cat.create_price_version(price.clone()).await.unwrap().into_inner();
    let replay = cat.create_price_version(price.clone()).await.unwrap().into_inner();
    assert_eq!(replay, made);
    assert_eq!(replay.version.unwrap().version, 2);
    let other = bpb::CreatePriceVersionRequest { price_minor: 1, ..price };
    let e = cat.create_price_version(other).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.get_error_details().error_info().unwrap().reason, "IDEMPOTENCY_KEY_REUSED");

    let mut rename = update("team-monthly", "", &["name"]);
    rename.name = "Team 2".into();
    let renamed = cat.update_plan(rename.clone()).await.unwrap().into_inner();
    assert_eq!(cat.update_plan(rename).await.unwrap().into_inner(), renamed);
    let archive = bpb::ArchivePlanRequest { plan_id: "team-monthly".into(), request_id: rid(), ..Default::default() };
    let archived = cat.archive_plan(archive.clone()).await.unwrap().into_inner();
    assert_eq!(cat.archive_plan(archive).await.unwrap().into_inner(), archived);

    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions WHERE plan_id = 'team-monthly'").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_only_answers_what_a_change_would_do_and_changes_nothing() {
    let app = spawn_app().await;
    let mut cat = app.catalog.clone();
    let mut db = app.billing_db().await;
    let versions = "SELECT count(*) AS n FROM plan_versions";
    let before = scalar(&mut db, versions).await;

    let dry = bpb::CreatePlanRequest { validate_only: true, ..team() };
    let would = cat.create_plan(dry.clone()).await.unwrap().into_inner().plan.unwrap();
    assert_eq!((would.plan.unwrap().id.as_str(), would.versions.len()), ("team-monthly", 1));
    let e = cat.get_plan(bpb::PlanCatalogServiceGetPlanRequest { plan_id: "team-monthly".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "nothing created");
    // Its request_id was not kept: the real call with it creates the plan.
    let real = cat.create_plan(bpb::CreatePlanRequest { validate_only: false, ..dry }).await.unwrap().into_inner();
    assert_eq!(real.plan.unwrap().versions.len(), 1);

    let tag = etag(&app, "basic-monthly").await;
    let dry = bpb::CreatePriceVersionRequest { validate_only: true, ..reprice_request("basic-monthly", 59_900, &tag) };
    let would = cat.create_price_version(dry).await.unwrap().into_inner();
    assert_eq!(would.version.map(|v| (v.version, v.price_minor)), Some((2, 59_900)));
    let archive =
        bpb::ArchivePlanRequest { plan_id: "basic-monthly".into(), request_id: rid(), validate_only: true, etag: tag.clone() };
    assert!(cat.archive_plan(archive).await.unwrap().into_inner().plan.unwrap().archived_at.is_some());
    let mut credits = update("basic-monthly", &tag, &["credits_per_period"]);
    credits.credits_per_period = 1;
    credits.validate_only = true;
    assert_eq!(cat.update_plan(credits).await.unwrap().into_inner().created_version.map(|v| v.credits_per_period), Some(1));
    assert_eq!(etag(&app, "basic-monthly").await, tag, "basic-monthly unchanged");
    assert_eq!(scalar(&mut db, versions).await, before + 1, "only team-monthly's version 1");

    // It refuses what the change would refuse.
    let stale = bpb::CreatePriceVersionRequest { validate_only: true, ..reprice_request("basic-monthly", 1, "0123456789abcdef") };
    assert_eq!(cat.create_price_version(stale).await.unwrap_err().code(), Code::Aborted);
    let taken = bpb::CreatePlanRequest { validate_only: true, request_id: rid(), ..team() };
    assert_eq!(cat.create_plan(taken).await.unwrap_err().code(), Code::AlreadyExists);
    let free = bpb::CreatePriceVersionRequest { validate_only: true, ..reprice_request("free", 100, "") };
    assert_eq!(cat.create_price_version(free).await.unwrap_err().code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_etag_is_aborted_and_changes_nothing() {
    let app = spawn_app().await;
    let mut cat = app.catalog.clone();
    // BillingService's Plan.etag is the same condition.
    let read = app.billing.clone().get_plan(bpb::GetPlanRequest { id: "pro-monthly".into() }).await.unwrap();
    let read = read.into_inner().plan.unwrap().etag;
    assert_eq!(read, etag(&app, "pro-monthly").await);
    reprice(&app, "pro-monthly", 159_900, &read).await.unwrap();
    let before = get(&app, "pro-monthly").await;

    let e = reprice(&app, "pro-monthly", 169_900, &read).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    let details = e.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "ETAG_MISMATCH");
    assert!(details.retry_info().is_none(), "resending cannot succeed");
    let mut rename = update("pro-monthly", &read, &["name"]);
    rename.name = "Pro+".into();
    assert_eq!(cat.update_plan(rename).await.unwrap_err().code(), Code::Aborted);
    let archive = bpb::ArchivePlanRequest { plan_id: "pro-monthly".into(), request_id: rid(), etag: read, ..Default::default() };
    assert_eq!(cat.archive_plan(archive).await.unwrap_err().code(), Code::Aborted);
    assert_eq!(get(&app, "pro-monthly").await, before);
}
