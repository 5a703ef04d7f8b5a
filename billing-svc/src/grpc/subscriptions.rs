//! Subscription handlers: reading, listing and cancelling subscriptions.
use proto::billing::v1 as pb;
use shared::status::{MAX_ID_LEN, Violations};
use tonic::{Request, Response};
use tracing::instrument;

use super::{
    RpcResult, convert,
    params::{page_after, page_size, parse_subscription_page_token, subscription_page_token},
    run,
};
use crate::{App, subscriptions, views};

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
    let r = req.into_inner();
    let mut v = Violations::new();
    v.text("user_id", &r.user_id, MAX_ID_LEN);
    let size = page_size(r.page_size, &mut v);
    let after = page_after(&r.page_token, parse_subscription_page_token, &mut v);
    v.finish()?;
    let app = app.clone();
    let (subs, next) =
        run(async move { views::subscriptions_of_user(&mut *app.conn().await?, &r.user_id, size, after).await }).await?;
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
    let r = req.into_inner();
    let mut v = Violations::new();
    let id = v.uuid("id", &r.id);
    v.text("user_id", &r.user_id, MAX_ID_LEN);
    let at_period_end = cancellation_at_period_end(&r, &mut v);
    v.finish()?;
    let app = app.clone();
    let c = run(async move {
        let _pass = app.gate.enter(&format!("user:{}", r.user_id)).await?;
        let mut conn = app.conn().await?;
        let c = subscriptions::cancel(&mut conn, id, &r.user_id, at_period_end, app.clock.now()).await?;
        Ok((views::subscription_of(&mut conn, c.subscription).await?, c.replayed))
    })
    .await?;
    let (view, replayed) = c;
    Ok(Response::new(pb::CancelSubscriptionResponse { subscription: Some(convert::subscription_view(&view)), replayed }))
}

/// Whether the cancellation waits for period_end. An unset
/// `at_period_end` once meant "now, forfeiting the credits": the zero value
/// of the request cancelled at once, so the server now asks for the policy
/// and refuses the ambiguous form; the legacy `at_period_end = true` is
/// unambiguous and still accepted.
#[allow(deprecated)] // reads the legacy at_period_end
fn cancellation_at_period_end(r: &pb::CancelSubscriptionRequest, v: &mut Violations) -> bool {
    use pb::CancellationPolicy as P;
    match (P::try_from(r.policy), r.at_period_end) {
        (Ok(P::AtPeriodEnd), _) | (Ok(P::Unspecified), true) => true,
        (Ok(P::Immediately), false) => false,
        (Ok(P::Immediately), true) => {
            v.add("policy", "CANCELLATION_POLICY_IMMEDIATELY contradicts at_period_end = true");
            false
        }
        (Ok(P::Unspecified), false) => {
            v.add(
                "policy",
                "is required: CANCELLATION_POLICY_IMMEDIATELY or CANCELLATION_POLICY_AT_PERIOD_END \
                 (an unset at_period_end no longer cancels now)",
            );
            false
        }
        (Err(_), _) => {
            v.add("policy", "unknown cancellation policy");
            false
        }
    }
}
