//! billing.v1.PlanCatalogService (docs/design.md, "Catalogue"): plans an
//! operator creates, changes, reprices and archives through real gRPC, with
//! request_id replays, validate_only and etags; subscribers pinned to the
//! price version they bought (renewals charge it, periods grant its credits
//! within its limits); and the races: versions of one plan numbered one at
//! a time, a request_id applied once, a reprice during a renewal run
//! changing nothing already created; the operator's CLI and the stack's
//! seed.
mod bad_input;
mod changes;
mod migrations;
mod operator_cli;
mod operator_cli_verbs;
mod periods;
mod pinned_versions;
mod plan_changes;
mod races;
mod trials;
mod unarchive;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use proto::billing::v1 as bpb;
use tests::{TestApp, helpers::scalar};
use tonic::Status;

pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let t = (*t).unwrap_or_default();
    DateTime::from_timestamp(t.seconds, 0).unwrap()
}

/// A new request_id.
pub(crate) fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

/// GetPlan of the catalogue: the plan with every version.
pub(crate) async fn get(app: &TestApp, id: &str) -> bpb::CatalogPlan {
    let r = app.catalog.clone().get_plan(bpb::PlanCatalogServiceGetPlanRequest { plan_id: id.into() }).await;
    r.unwrap().into_inner().plan.unwrap()
}

/// The plan's etag as the catalogue shows it.
pub(crate) async fn etag(app: &TestApp, id: &str) -> String {
    get(app, id).await.plan.unwrap().etag
}

pub(crate) fn reprice_request(id: &str, price_minor: i64, etag: &str) -> bpb::CreatePriceVersionRequest {
    bpb::CreatePriceVersionRequest {
        plan_id: id.into(),
        request_id: rid(),
        validate_only: false,
        etag: etag.into(),
        price_minor,
        currency: "INR".into(),
        trial_days: None,
    }
}

/// CreatePriceVersion of `id` at `price_minor` (with `etag`, empty: none).
pub(crate) async fn reprice(
    app: &TestApp,
    id: &str,
    price_minor: i64,
    etag: &str,
) -> Result<bpb::CreatePriceVersionResponse, Status> {
    app.catalog.clone().create_price_version(reprice_request(id, price_minor, etag)).await.map(|r| r.into_inner())
}

/// Orders whose amount or currency is not the price of the version they
/// name (docs/design.md, "Catalogue": never one), leaving out upgrades'
/// prorated orders, whose amount is their change's (checked by the plan
/// change tests).
pub(crate) async fn orders_off_their_version(db: &mut AsyncPgConnection) -> i64 {
    scalar(
        db,
        "SELECT count(*) AS n FROM orders o LEFT JOIN plan_versions v ON v.plan_id = o.plan_id AND v.version = o.plan_version \
          WHERE o.plan_change_id IS NULL AND (v.plan_id IS NULL OR o.amount_minor <> v.price_minor OR o.currency <> v.currency)",
    )
    .await
}
