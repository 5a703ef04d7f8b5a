//! Plan change handlers: ChangeSubscriptionPlan and CancelPlanChange, and
//! their requests parsed into domain inputs (docs/design.md, "Plan
//! changes").
use proto::billing::v1 as pb;
use shared::{
    etag::Etag,
    ids::{PlanId, UserId, field},
    status::Violations,
};
use tonic::{Request, Response, Status};
use tracing::instrument;
use uuid::Uuid;

use super::{RpcResult, convert, run};
use crate::{
    App,
    plan_changes::{self, ChangeRequest, Timing},
    row::{self, Row},
    views,
};

impl TryFrom<pb::ChangeSubscriptionPlanRequest> for ChangeRequest {
    type Error = Status;
    fn try_from(r: pb::ChangeSubscriptionPlanRequest) -> Result<Self, Status> {
        use pb::{PlanChangeTiming as T, ProrationBehavior as P};
        let mut v = Violations::new();
        let subscription_id = v.uuid("id", &r.id);
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        let plan_id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        let timing = match T::try_from(r.timing) {
            Ok(T::Immediately) => Some(Timing::Immediately),
            Ok(T::AtPeriodEnd) => Some(Timing::AtPeriodEnd),
            Ok(T::Unspecified) => {
                v.add("timing", "is required: PLAN_CHANGE_TIMING_IMMEDIATELY (upgrades) or PLAN_CHANGE_TIMING_AT_PERIOD_END");
                None
            }
            Err(_) => {
                v.add("timing", "unknown plan change timing");
                None
            }
        };
        // Each timing has one proration; asking for it says the caller
        // knows what the change charges.
        match (timing, P::try_from(r.proration)) {
            (_, Ok(P::Unspecified)) => v.add(
                "proration",
                "is required: PRORATION_BEHAVIOR_PRORATE_BY_TIME with IMMEDIATELY, PRORATION_BEHAVIOR_NONE with AT_PERIOD_END",
            ),
            (_, Err(_)) => v.add("proration", "unknown proration behavior"),
            (Some(Timing::Immediately), Ok(P::None)) => {
                v.add("proration", "an IMMEDIATELY change is charged the prorated difference: PRORATION_BEHAVIOR_PRORATE_BY_TIME")
            }
            (Some(Timing::AtPeriodEnd), Ok(P::ProrateByTime)) => {
                v.add("proration", "a change at period end has nothing to prorate: PRORATION_BEHAVIOR_NONE")
            }
            _ => {}
        }
        let etag = field(&mut v, "etag", Etag::parse_optional(r.etag));
        v.finish()?;
        let timing = timing.ok_or_else(|| Status::internal("timing checked above"))?;
        Ok(Self { subscription_id, user_id: user_id?, plan_id: plan_id?, timing, etag: etag? })
    }
}

#[instrument(skip_all, fields(subscription_id = %req.get_ref().id, plan_id = %req.get_ref().plan_id, timing = req.get_ref().timing))]
pub(super) async fn change_subscription_plan(
    app: &App,
    req: Request<pb::ChangeSubscriptionPlanRequest>,
) -> RpcResult<pb::ChangeSubscriptionPlanResponse> {
    let r = ChangeRequest::try_from(req.into_inner())?;
    let app = app.clone();
    let (view, change, replayed) = run(async move {
        let _pass = row::admit(&app.gate, Row::User(&r.user_id)).await?;
        let c = plan_changes::change(&app, &r).await?;
        let view = views::subscription_of(&mut *app.conn().await?, c.subscription).await?;
        Ok((view, c.change, c.replayed))
    })
    .await?;
    Ok(Response::new(pb::ChangeSubscriptionPlanResponse {
        subscription: Some(convert::subscription_view(&view)),
        change: change.as_ref().map(convert::plan_change),
        replayed,
    }))
}

#[instrument(skip_all, fields(subscription_id = %req.get_ref().id))]
pub(super) async fn cancel_plan_change(
    app: &App,
    req: Request<pb::CancelPlanChangeRequest>,
) -> RpcResult<pb::CancelPlanChangeResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    let id: Uuid = v.uuid("id", &r.id);
    let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
    v.finish()?;
    let user_id = user_id?;
    let app = app.clone();
    let (view, replayed) = run(async move {
        let _pass = row::admit(&app.gate, Row::User(&user_id)).await?;
        let (sub, replayed) = plan_changes::withdraw(&app, id, &user_id).await?;
        Ok((views::subscription_of(&mut *app.conn().await?, sub).await?, replayed))
    })
    .await?;
    Ok(Response::new(pb::CancelPlanChangeResponse { subscription: Some(convert::subscription_view(&view)), replayed }))
}
