//! What the catalogue refuses, and how: bad fields (every one listed),
//! tokens that are not an admin's, unknown plans, taken ids, the free
//! plan's price and archive.
use proto::billing::v1 as bpb;
use tests::{
    clients::catalog_client,
    harness::SERVICE_TOKEN,
    helpers::{limit, new_plan, scalar},
    spawn_app,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{mask, reprice, reprice_request, rid};
use crate::support::precondition_type;

/// The fields a refusal lists, in its order.
fn fields(e: &Status) -> Vec<String> {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(e.get_error_details().error_info().unwrap().reason, "INVALID_FIELD", "{e:?}");
    e.get_error_details().bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_fields_are_invalid_argument_with_every_field_listed_and_nothing_written() {
    let app = spawn_app().await;
    let mut cat = app.catalog.clone();
    let mut db = app.billing_db().await;
    let versions = scalar(&mut db, "SELECT count(*) AS n FROM plan_versions").await;

    let bad = bpb::CreatePlanRequest {
        request_id: "not-a-uuid".into(),
        plan_id: "Team_Monthly".into(),
        name: String::new(),
        price_minor: -1,
        currency: "XYZ".into(),
        period: bpb::PlanPeriod::Unspecified as i32,
        credits_per_period: 0,
        deduction_interval_seconds: 0,
        limits: None,
        ..Default::default()
    };
    let e = cat.create_plan(bad).await.unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "request_id",
            "plan_id",
            "name",
            "price_minor",
            "currency",
            "period",
            "credits_per_period",
            "deduction_interval_seconds",
            "limits",
            "limits.sessions_per_period",
            "*"
        ],
        "{e:?}"
    );

    // Each rule alone.
    let cases: Vec<(&str, bpb::CreatePlanRequest)> = vec![
        ("price_minor", bpb::CreatePlanRequest { price_minor: 0, ..new_plan("a", "A", 1, 1) }),
        ("price_minor", bpb::CreatePlanRequest { price_minor: 1_000_000_000_001, ..new_plan("a", "A", 1, 1) }),
        ("currency", bpb::CreatePlanRequest { currency: "inr".into(), ..new_plan("a", "A", 1, 1) }),
        ("credits_per_period", new_plan("a", "A", 100, 0)),
        ("plan_id", new_plan("pro--monthly", "A", 1, 1)),
        ("plan_id", new_plan("pro-", "A", 1, 1)),
        ("plan_id", new_plan(&"a".repeat(64), "A", 1, 1)),
        ("request_id", bpb::CreatePlanRequest { request_id: String::new(), ..new_plan("a", "A", 1, 1) }),
        ("period", bpb::CreatePlanRequest { period: 7, ..new_plan("a", "A", 1, 1) }),
        ("name", bpb::CreatePlanRequest { name: "a\nb".into(), ..new_plan("a", "A", 1, 1) }),
    ];
    for (field, req) in cases {
        assert_eq!(fields(&cat.create_plan(req).await.unwrap_err()), [field]);
    }
    let unstated = |l: bpb::PlanLimitsInput| bpb::CreatePlanRequest { limits: Some(l), ..new_plan("a", "A", 1, 1) };
    let full = new_plan("a", "A", 1, 1).limits.unwrap();
    let limits_cases = [
        ("limits.sessions_per_period", bpb::PlanLimitsInput { sessions_per_period: None, ..full }),
        ("limits.sessions_per_period", bpb::PlanLimitsInput { sessions_per_period: Some(limit(Some(0))), ..full }),
        ("limits.minutes_per_period", bpb::PlanLimitsInput { minutes_per_period: Some(bpb::LimitValue { value: None }), ..full }),
        (
            "limits.minutes_per_period",
            bpb::PlanLimitsInput {
                minutes_per_period: Some(bpb::LimitValue { value: Some(bpb::limit_value::Value::Unlimited(false)) }),
                ..full
            },
        ),
        ("limits.minutes_per_period", bpb::PlanLimitsInput { minutes_per_period: Some(limit(Some(1 << 31))), ..full }),
        ("limits.upload_bytes", bpb::PlanLimitsInput { upload_bytes: Some(limit(Some(-1))), ..full }),
    ];
    for (field, l) in limits_cases {
        assert_eq!(fields(&cat.create_plan(unstated(l)).await.unwrap_err()), [field]);
    }

    // UpdatePlan: the mask says what changes, and must name something known.
    let update = |paths: &[&str]| bpb::UpdatePlanRequest {
        plan_id: "basic-monthly".into(),
        request_id: rid(),
        update_mask: mask(paths),
        ..Default::default()
    };
    assert_eq!(
        fields(&cat.update_plan(bpb::UpdatePlanRequest { update_mask: None, ..update(&[]) }).await.unwrap_err()),
        ["update_mask"]
    );
    assert_eq!(fields(&cat.update_plan(update(&["price_minor"])).await.unwrap_err()), ["update_mask"]);
    assert_eq!(fields(&cat.update_plan(update(&["name"])).await.unwrap_err()), ["name"]);
    assert_eq!(
        fields(&cat.update_plan(update(&["limits"])).await.unwrap_err()),
        ["limits.sessions_per_period", "limits.minutes_per_period", "limits.upload_bytes"]
    );
    // No credits for a plan with a price: known only from the plan.
    let e = cat.update_plan(update(&["credits_per_period"])).await.unwrap_err();
    assert_eq!(fields(&e), ["credits_per_period"]);

    // CreatePriceVersion.
    let e = reprice(&app, "basic-monthly", -5, "").await.unwrap_err();
    assert_eq!(fields(&e), ["price_minor"]);
    let e = cat
        .create_price_version(bpb::CreatePriceVersionRequest { currency: "US".into(), ..reprice_request("basic-monthly", 5, "") })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["currency"]);
    let e = reprice(&app, "basic-monthly", 5, "an etag with spaces").await.unwrap_err();
    assert_eq!(fields(&e), ["etag"]);

    // ListPlans and GetPlan.
    for (size, token) in [(501, ""), (-1, ""), (0, "zz"), (0, "6e6f7065")] {
        let r = bpb::PlanCatalogServiceListPlansRequest { page_size: size, page_token: token.into(), show_archived: false };
        let e = cat.list_plans(r).await;
        let want: &[&str] = if token == "6e6f7065" {
            &[]
        } else if size != 0 {
            &["page_size"]
        } else {
            &["page_token"]
        };
        match e {
            // A token of an id that does not exist is still an id: the page after it.
            Ok(_) => assert!(want.is_empty(), "{size} {token}"),
            Err(e) => assert_eq!(fields(&e), want, "{size} {token}"),
        }
    }
    let e = cat.get_plan(bpb::PlanCatalogServiceGetPlanRequest { plan_id: String::new() }).await.unwrap_err();
    assert_eq!(fields(&e), ["plan_id"]);

    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions").await, versions, "nothing written");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM idempotency_keys").await, 0, "no key kept for a refusal");
}

fn denied<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_admin_token_reaches_the_catalogue() {
    let app = spawn_app().await;
    let addr = app.billing_addr.to_string();
    let mut service = catalog_client(&addr, SERVICE_TOKEN).unwrap();
    denied(service.create_plan(new_plan("team-monthly", "Team", 1, 1)).await);
    denied(service.create_price_version(reprice_request("basic-monthly", 1, "")).await);
    let archive = bpb::ArchivePlanRequest { plan_id: "basic-monthly".into(), request_id: rid(), ..Default::default() };
    denied(service.archive_plan(archive).await);
    let unarchive = bpb::UnarchivePlanRequest { plan_id: "basic-monthly".into(), request_id: rid(), ..Default::default() };
    denied(service.unarchive_plan(unarchive).await);
    let update = bpb::UpdatePlanRequest { plan_id: "basic-monthly".into(), request_id: rid(), ..Default::default() };
    denied(service.update_plan(update).await);
    denied(service.get_plan(bpb::PlanCatalogServiceGetPlanRequest { plan_id: "free".into() }).await);
    denied(service.list_plans(bpb::PlanCatalogServiceListPlansRequest::default()).await);
    let mut anonymous = catalog_client(&addr, "").unwrap();
    let e = anonymous.list_plans(bpb::PlanCatalogServiceListPlansRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions").await, 3, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_plans_are_not_found_taken_ids_exist_and_the_free_plan_keeps_its_place() {
    let app = spawn_app().await;
    let mut cat = app.catalog.clone();
    let e = reprice(&app, "gold", 100, "").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.get_error_details().resource_info().unwrap().resource_name, "gold");
    let e = cat.get_plan(bpb::PlanCatalogServiceGetPlanRequest { plan_id: "gold".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let e = cat.create_plan(new_plan("basic-monthly", "Basic again", 1, 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let info = e.get_error_details();
    assert_eq!(info.error_info().unwrap().reason, "PLAN_EXISTS");
    assert_eq!(info.resource_info().unwrap().resource_name, "basic-monthly");

    let e = reprice(&app, "free", 100, "").await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "FREE_PLAN".to_owned()));
    let archive = bpb::ArchivePlanRequest { plan_id: "free".into(), request_id: rid(), ..Default::default() };
    let e = cat.archive_plan(archive).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "FREE_PLAN".to_owned()));
    // The free plan's credits and limits can change (no credits is allowed: it has no price).
    let none = bpb::UpdatePlanRequest {
        plan_id: "free".into(),
        request_id: rid(),
        update_mask: mask(&["credits_per_period"]),
        credits_per_period: 0,
        ..Default::default()
    };
    let v = cat.update_plan(none).await.unwrap().into_inner().created_version.unwrap();
    assert_eq!((v.version, v.price_minor, v.credits_per_period), (2, 0, 0));
}
