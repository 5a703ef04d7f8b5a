//! Plan handlers: the catalogue of plans.
use proto::billing::v1 as pb;
use shared::status::{MAX_ID_LEN, Violations};
use tonic::{Request, Response};
use tracing::instrument;

use super::{
    RpcResult, convert,
    params::{page_after, page_size, parse_plan_page_token, plan_page_token},
    run,
};
use crate::{App, plans};

#[instrument(skip_all)]
pub(super) async fn list_plans(app: &App, req: Request<pb::ListPlansRequest>) -> RpcResult<pb::ListPlansResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    // 0 keeps the answer of callers from before pagination: every plan.
    let size = (r.page_size != 0).then(|| page_size(r.page_size, &mut v));
    let after = page_after(&r.page_token, parse_plan_page_token, &mut v);
    v.finish()?;
    let app = app.clone();
    let (plans, next) = run(async move { plans::page(&mut *app.conn().await?, size, after).await }).await?;
    Ok(Response::new(pb::ListPlansResponse {
        plans: plans.iter().map(convert::plan).collect(),
        next_page_token: next.map(|(price, id)| plan_page_token(price, &id)).unwrap_or_default(),
    }))
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().id))]
pub(super) async fn get_plan(app: &App, req: Request<pb::GetPlanRequest>) -> RpcResult<pb::GetPlanResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    v.text("id", &r.id, MAX_ID_LEN);
    v.finish()?;
    let app = app.clone();
    let plan = run(async move { plans::get(&mut *app.conn().await?, &r.id).await }).await?;
    Ok(Response::new(pb::GetPlanResponse { plan: Some(convert::plan(&plan)) }))
}
