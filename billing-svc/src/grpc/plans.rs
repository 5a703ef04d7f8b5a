//! Plan handlers: the catalogue of plans.
use proto::billing::v1 as pb;
use tonic::{Request, Response};
use tracing::instrument;

use super::{
    RpcResult, convert,
    params::plan_page_token,
    requests::{GetPlan, ListPlans},
    run,
};
use crate::{App, plans};

#[instrument(skip_all)]
pub(super) async fn list_plans(app: &App, req: Request<pb::ListPlansRequest>) -> RpcResult<pb::ListPlansResponse> {
    let r = ListPlans::try_from(req.into_inner())?;
    let app = app.clone();
    let (plans, next) = run(async move { plans::page(&mut *app.conn().await?, r.size, r.after).await }).await?;
    Ok(Response::new(pb::ListPlansResponse {
        plans: plans.iter().map(convert::plan).collect(),
        next_page_token: next.map(|(price, id)| plan_page_token(price, &id)).unwrap_or_default(),
    }))
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().id))]
pub(super) async fn get_plan(app: &App, req: Request<pb::GetPlanRequest>) -> RpcResult<pb::GetPlanResponse> {
    let r = GetPlan::try_from(req.into_inner())?;
    let app = app.clone();
    let plan = run(async move { plans::get(&mut *app.conn().await?, r.id.as_str()).await }).await?;
    Ok(Response::new(pb::GetPlanResponse { plan: Some(convert::plan(&plan)) }))
}
