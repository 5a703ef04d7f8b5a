//! Subscription handlers: reading, listing and cancelling subscriptions,
//! starting a trial.
use proto::billing::v1 as pb;
use tonic::{Request, Response};
use tracing::instrument;

use shared::status::Violations;

use super::{
    RpcResult, convert,
    params::subscription_page_token,
    requests::{CancelSubscription, ListSubscriptions, StartTrial},
    run,
};
use crate::{
    App,
    row::{self, Row},
    subscriptions, trials, views,
};

#[instrument(skip_all, fields(subscription_id = %req.get_ref().id))]
pub(super) async fn get_subscription(
    app: &App,
    req: Request<pb::GetSubscriptionRequest>,
) -> RpcResult<pb::GetSubscriptionResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    let id = v.uuid("id", &r.id);
    v.finish()?;
    let app = app.clone();
    let view = run(async move { views::subscription(&mut *app.conn().await?, id, app.clock.now()).await }).await?;
    Ok(Response::new(pb::GetSubscriptionResponse { subscription: Some(convert::subscription_view(&view)) }))
}

#[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
pub(super) async fn list_subscriptions(
    app: &App,
    req: Request<pb::ListSubscriptionsRequest>,
) -> RpcResult<pb::ListSubscriptionsResponse> {
    let r = ListSubscriptions::try_from(req.into_inner())?;
    let app = app.clone();
    let (subs, next) = run(async move {
        views::subscriptions_of_user(&mut *app.conn().await?, &r.user_id, r.size, r.after, app.clock.now()).await
    })
    .await?;
    Ok(Response::new(pb::ListSubscriptionsResponse {
        subscriptions: subs.iter().map(convert::subscription_view).collect(),
        next_page_token: next.map(|(t, id)| subscription_page_token(t, id)).unwrap_or_default(),
    }))
}

#[instrument(skip_all, fields(subscription_id = %req.get_ref().id, policy = req.get_ref().policy))]
pub(super) async fn cancel_subscription(
    app: &App,
    req: Request<pb::CancelSubscriptionRequest>,
) -> RpcResult<pb::CancelSubscriptionResponse> {
    let r = CancelSubscription::try_from(req.into_inner())?;
    let app = app.clone();
    let c = run(async move {
        let _pass = row::admit(&app.gate, Row::User(&r.user_id)).await?;
        let mut conn = app.conn().await?;
        let c = subscriptions::cancel(&mut conn, r.id, &r.user_id, r.at_period_end, r.etag.as_ref(), app.clock.now()).await?;
        Ok((views::subscription_of(&mut conn, c.subscription).await?, c.replayed))
    })
    .await?;
    let (view, replayed) = c;
    Ok(Response::new(pb::CancelSubscriptionResponse { subscription: Some(convert::subscription_view(&view)), replayed }))
}

#[instrument(skip_all, fields(user_id = %req.get_ref().user_id, plan_id = %req.get_ref().plan_id))]
pub(super) async fn start_trial(app: &App, req: Request<pb::StartTrialRequest>) -> RpcResult<pb::StartTrialResponse> {
    let r = StartTrial::try_from(req.into_inner())?;
    let app = app.clone();
    let (view, replayed) = run(async move {
        let _pass = row::admit(&app.gate, Row::User(&r.user_id)).await?;
        let t = trials::start(&app, &r.user_id, &r.plan_id).await?;
        Ok((views::subscription_of(&mut *app.conn().await?, t.subscription).await?, t.replayed))
    })
    .await?;
    Ok(Response::new(pb::StartTrialResponse { subscription: Some(convert::subscription_view(&view)), replayed }))
}
