//! The plan catalogue's refusals (PlanCatalogService), on one stack: a
//! taken id, bad fields, the free plan, a stale etag, a migration of the
//! free plan, of an unknown version or to the same version, a service
//! token, a purchase of an archived plan, a trial of a plan that offers
//! none, a downgrade asked for now and a plan change of a past-due
//! subscription.
use proto::{billing::v1 as bpb, error::ErrorReason as R};
use tests::{clients::catalog_client, harness::SERVICE_TOKEN, helpers::new_plan, spawn_app};

use super::Walk;

pub(super) async fn walk_the_catalogue(w: &mut Walk) {
    let app = spawn_app().await;
    let mut cat = app.catalog.clone();
    let rid = || uuid::Uuid::new_v4().to_string();

    let s = w.saw(R::PlanExists, "CreatePlan(basic-monthly)", cat.create_plan(new_plan("basic-monthly", "Basic", 1, 1)).await);
    assert_eq!(
        (Walk::metadata(&s, "resource_type"), Walk::metadata(&s, "resource_name")),
        ("plan".into(), "basic-monthly".into())
    );
    w.saw(R::InvalidField, "CreatePlan(not a slug)", cat.create_plan(new_plan("Not A Slug", "X", 1, 1)).await);
    let r = bpb::PlanCatalogServiceGetPlanRequest { plan_id: "gold".into() };
    w.saw(R::ResourceNotFound, "PlanCatalogService.GetPlan(gold)", cat.get_plan(r).await);
    let archive_free = bpb::ArchivePlanRequest { plan_id: "free".into(), request_id: rid(), ..Default::default() };
    w.saw(R::FreePlan, "ArchivePlan(free)", cat.archive_plan(archive_free).await);
    let unarchive_free = bpb::UnarchivePlanRequest { plan_id: "free".into(), request_id: rid(), ..Default::default() };
    w.saw(R::FreePlan, "UnarchivePlan(free)", cat.unarchive_plan(unarchive_free).await);
    let stale = bpb::CreatePriceVersionRequest {
        plan_id: "pro-monthly".into(),
        request_id: rid(),
        etag: "0123456789abcdef".into(),
        price_minor: 1,
        currency: "INR".into(),
        ..Default::default()
    };
    w.saw(R::EtagMismatch, "CreatePriceVersion(stale etag)", cat.create_price_version(stale).await);
    let migrate = |plan: &str, from: i32, to: i32| bpb::MigrateSubscribersRequest {
        plan_id: plan.into(),
        request_id: rid(),
        validate_only: false,
        from_version: from,
        to_version: to,
    };
    w.saw(R::FreePlan, "MigrateSubscribers(free)", cat.migrate_subscribers(migrate("free", 1, 2)).await);
    let s = w.saw(
        R::ResourceNotFound,
        "MigrateSubscribers(no version 9)",
        cat.migrate_subscribers(migrate("pro-monthly", 1, 9)).await,
    );
    assert_eq!(Walk::metadata(&s, "resource_type"), "plan_version");
    w.saw(R::InvalidField, "MigrateSubscribers(from == to)", cat.migrate_subscribers(migrate("pro-monthly", 1, 1)).await);
    let r = bpb::GetPlanMigrationRequest { id: uuid::Uuid::new_v4().to_string() };
    w.saw(R::ResourceNotFound, "GetPlanMigration(unknown)", cat.get_plan_migration(r).await);
    let mut service = catalog_client(&app.billing_addr.to_string(), SERVICE_TOKEN).unwrap();
    let r = service.list_plans(bpb::PlanCatalogServiceListPlansRequest::default()).await;
    w.saw(R::AdminRequired, "PlanCatalogService.ListPlans with a service token", r);

    let archive = bpb::ArchivePlanRequest { plan_id: "pro-monthly".into(), request_id: rid(), ..Default::default() };
    cat.archive_plan(archive).await.unwrap();
    let order = bpb::CreateOrderRequest {
        checkout_session_id: uuid::Uuid::new_v4().to_string(),
        user_id: "late".into(),
        plan_id: "pro-monthly".into(),
    };
    w.saw(R::PlanNotPurchasable, "CreateOrder(archived plan)", app.billing.clone().create_order(order).await);
    let trial = bpb::StartTrialRequest { user_id: "curious".into(), plan_id: "basic-monthly".into() };
    w.saw(R::TrialNotAvailable, "StartTrial(basic-monthly: no trial)", app.billing.clone().start_trial(trial).await);

    let sub = app.subscribe("changer", "basic-monthly").await;
    app.create_plan("cheaper", "Cheaper", 100, 1).await;
    let change = |timing: bpb::PlanChangeTiming, proration: bpb::ProrationBehavior| bpb::ChangeSubscriptionPlanRequest {
        id: sub.id.clone(),
        user_id: "changer".into(),
        plan_id: "cheaper".into(),
        timing: timing as i32,
        proration: proration as i32,
        etag: String::new(),
    };
    let now = change(bpb::PlanChangeTiming::Immediately, bpb::ProrationBehavior::ProrateByTime);
    let r = app.billing.clone().change_subscription_plan(now).await;
    w.saw(R::PlanChangeNotAllowed, "ChangeSubscriptionPlan(a downgrade IMMEDIATELY)", r);
    let end = chrono::DateTime::from_timestamp(sub.period_end.unwrap_or_default().seconds, 0).unwrap_or_default();
    app.clock.set(end + chrono::Duration::hours(1));
    app.run_job("rollover").await;
    let later = change(bpb::PlanChangeTiming::AtPeriodEnd, bpb::ProrationBehavior::None);
    let r = app.billing.clone().change_subscription_plan(later).await;
    w.saw(R::SubscriptionPastDue, "ChangeSubscriptionPlan(PAST_DUE)", r);
}
