//! PlanCatalogService (admin token only): the catalogue's changes and reads
//! (docs/design.md, "Catalogue"). Handlers check the token and the fields,
//! then run one catalogue function on its own task; every change is keyed
//! on its `request_id`.
mod migrations;
mod requests;
mod sale;

use proto::billing::v1::{self as pb, plan_catalog_service_server::PlanCatalogService};
use shared::{
    auth::require_admin,
    idempotency::{Key, encode_with, respond},
    time::{opt_to_proto, to_proto},
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{RpcResult, convert, run};
use crate::{
    App,
    plans::{
        Version,
        catalogue::{self, CatalogPlan, Changed},
    },
};
use requests::{CreatePlan, CreatePriceVersion, GetPlan, ListPlans, UpdatePlan, page_token};

pub struct PlanCatalogGrpc {
    app: App,
}

impl PlanCatalogGrpc {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

fn catalog_plan(p: &CatalogPlan) -> pb::CatalogPlan {
    pb::CatalogPlan {
        plan: Some(convert::plan(&p.plan)),
        versions: p.versions.iter().map(price_version).collect(),
        archived_at: opt_to_proto(p.plan.archived_at),
        created_at: Some(to_proto(p.plan.created_at)),
    }
}

fn price_version(v: &Version) -> pb::PriceVersion {
    pb::PriceVersion {
        plan_id: v.plan_id.clone(),
        version: v.version,
        price_minor: v.price_minor,
        currency: v.currency.clone(),
        period: convert::period(v.period) as i32,
        credits_per_period: v.credits_per_period,
        limits: Some(convert::limits(&v.limits())),
        created_at: Some(to_proto(v.created_at)),
        trial_days: v.trial_days.unwrap_or(0),
    }
}

fn create_plan_response(c: &Changed) -> pb::CreatePlanResponse {
    pb::CreatePlanResponse { plan: Some(catalog_plan(&c.plan)) }
}

fn update_plan_response(c: &Changed) -> pb::UpdatePlanResponse {
    pb::UpdatePlanResponse { plan: Some(catalog_plan(&c.plan)), created_version: c.version.as_ref().map(price_version) }
}

fn create_price_version_response(c: &Changed) -> pb::CreatePriceVersionResponse {
    pb::CreatePriceVersionResponse { plan: Some(catalog_plan(&c.plan)), version: c.version.as_ref().map(price_version) }
}

/// A change without its key (the request's parsing refuses that first).
fn no_request_id() -> Status {
    shared::status::invalid_field("request_id", "is required: a UUID, new per change")
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().plan_id))]
async fn create_plan(app: &App, req: Request<pb::CreatePlanRequest>) -> RpcResult<pb::CreatePlanResponse> {
    require_admin(&req)?;
    let r = CreatePlan::try_from(req.get_ref().clone())?;
    let key = Key::from_request_with_id(&req, "billing.CreatePlan", |r: &mut pb::CreatePlanRequest| &mut r.request_id)?
        .ok_or_else(no_request_id)?;
    let app = app.clone();
    let out = run(async move {
        let encode = encode_with(create_plan_response);
        let how = catalogue::Run { key: &key, validate_only: r.validate_only, encode: &encode, now: app.clock.now() };
        catalogue::create(&mut *app.conn().await?, &how, &r.plan).await
    })
    .await?;
    respond(out, create_plan_response)
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().plan_id))]
async fn update_plan(app: &App, req: Request<pb::UpdatePlanRequest>) -> RpcResult<pb::UpdatePlanResponse> {
    require_admin(&req)?;
    let r = UpdatePlan::try_from(req.get_ref().clone())?;
    let key = Key::from_request_with_id(&req, "billing.UpdatePlan", |r: &mut pb::UpdatePlanRequest| &mut r.request_id)?
        .ok_or_else(no_request_id)?;
    let app = app.clone();
    let out = run(async move {
        let encode = encode_with(update_plan_response);
        let how = catalogue::Run { key: &key, validate_only: r.validate_only, encode: &encode, now: app.clock.now() };
        catalogue::update(&mut *app.conn().await?, &how, &r.id, r.etag.as_ref(), &r.changes).await
    })
    .await?;
    respond(out, update_plan_response)
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().plan_id, price_minor = req.get_ref().price_minor))]
async fn create_price_version(
    app: &App,
    req: Request<pb::CreatePriceVersionRequest>,
) -> RpcResult<pb::CreatePriceVersionResponse> {
    require_admin(&req)?;
    let r = CreatePriceVersion::try_from(req.get_ref().clone())?;
    let key =
        Key::from_request_with_id(&req, "billing.CreatePriceVersion", |r: &mut pb::CreatePriceVersionRequest| &mut r.request_id)?
            .ok_or_else(no_request_id)?;
    let app = app.clone();
    let out = run(async move {
        let encode = encode_with(create_price_version_response);
        let how = catalogue::Run { key: &key, validate_only: r.validate_only, encode: &encode, now: app.clock.now() };
        catalogue::reprice(&mut *app.conn().await?, &how, &r.id, r.etag.as_ref(), &r.price).await
    })
    .await?;
    respond(out, create_price_version_response)
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().plan_id))]
async fn get_plan(
    app: &App,
    req: Request<pb::PlanCatalogServiceGetPlanRequest>,
) -> RpcResult<pb::PlanCatalogServiceGetPlanResponse> {
    require_admin(&req)?;
    let r = GetPlan::try_from(req.into_inner())?;
    let app = app.clone();
    let plan = run(async move { catalogue::get(&mut *app.conn().await?, r.id.as_str()).await }).await?;
    Ok(Response::new(pb::PlanCatalogServiceGetPlanResponse { plan: Some(catalog_plan(&plan)) }))
}

#[instrument(skip_all)]
async fn list_plans(
    app: &App,
    req: Request<pb::PlanCatalogServiceListPlansRequest>,
) -> RpcResult<pb::PlanCatalogServiceListPlansResponse> {
    require_admin(&req)?;
    let r = ListPlans::try_from(req.into_inner())?;
    let app = app.clone();
    let (plans, next) =
        run(async move { catalogue::page(&mut *app.conn().await?, r.size, r.after, r.show_archived).await }).await?;
    Ok(Response::new(pb::PlanCatalogServiceListPlansResponse {
        plans: plans.iter().map(catalog_plan).collect(),
        next_page_token: next.map(|id| page_token(&id)).unwrap_or_default(),
    }))
}

#[tonic::async_trait]
impl PlanCatalogService for PlanCatalogGrpc {
    async fn create_plan(&self, req: Request<pb::CreatePlanRequest>) -> RpcResult<pb::CreatePlanResponse> {
        create_plan(&self.app, req).await
    }

    async fn update_plan(&self, req: Request<pb::UpdatePlanRequest>) -> RpcResult<pb::UpdatePlanResponse> {
        update_plan(&self.app, req).await
    }

    async fn create_price_version(
        &self,
        req: Request<pb::CreatePriceVersionRequest>,
    ) -> RpcResult<pb::CreatePriceVersionResponse> {
        create_price_version(&self.app, req).await
    }

    async fn archive_plan(&self, req: Request<pb::ArchivePlanRequest>) -> RpcResult<pb::ArchivePlanResponse> {
        sale::put(&self.app, req).await
    }

    async fn unarchive_plan(&self, req: Request<pb::UnarchivePlanRequest>) -> RpcResult<pb::UnarchivePlanResponse> {
        sale::put(&self.app, req).await
    }

    async fn get_plan(
        &self,
        req: Request<pb::PlanCatalogServiceGetPlanRequest>,
    ) -> RpcResult<pb::PlanCatalogServiceGetPlanResponse> {
        get_plan(&self.app, req).await
    }

    async fn list_plans(
        &self,
        req: Request<pb::PlanCatalogServiceListPlansRequest>,
    ) -> RpcResult<pb::PlanCatalogServiceListPlansResponse> {
        list_plans(&self.app, req).await
    }

    async fn migrate_subscribers(
        &self,
        req: Request<pb::MigrateSubscribersRequest>,
    ) -> RpcResult<pb::MigrateSubscribersResponse> {
        migrations::migrate_subscribers(&self.app, req).await
    }

    async fn get_plan_migration(&self, req: Request<pb::GetPlanMigrationRequest>) -> RpcResult<pb::GetPlanMigrationResponse> {
        migrations::get_plan_migration(&self.app, req).await
    }

    async fn list_plan_migrations(
        &self,
        req: Request<pb::ListPlanMigrationsRequest>,
    ) -> RpcResult<pb::ListPlanMigrationsResponse> {
        migrations::list_plan_migrations(&self.app, req).await
    }
}
