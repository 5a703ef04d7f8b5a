//! Plan handlers: the catalogue of plans.
use proto::billing::v1 as pb;
use tonic::{Request, Response};
use tracing::instrument;

use super::{RpcResult, convert, requests::GetPlan, run};
use crate::{App, plans};

#[instrument(skip_all)]
pub(super) async fn list_plans(app: &App, _req: Request<pb::ListPlansRequest>) -> RpcResult<pb::ListPlansResponse> {
    let app = app.clone();
    let plans = run(async move { plans::list(&mut *app.conn().await?).await }).await?;
    Ok(Response::new(pb::ListPlansResponse { plans: plans.iter().map(convert::plan).collect() }))
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().id))]
pub(super) async fn get_plan(app: &App, req: Request<pb::GetPlanRequest>) -> RpcResult<pb::GetPlanResponse> {
    let r = GetPlan::try_from(req.into_inner())?;
    let app = app.clone();
    let plan = run(async move { plans::get(&mut *app.conn().await?, r.id.as_str()).await }).await?;
    Ok(Response::new(pb::GetPlanResponse { plan: Some(convert::plan(&plan)) }))
}
