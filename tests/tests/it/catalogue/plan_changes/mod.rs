//! Plan changes (docs/design.md, "Plan changes"): an upgrade charged the
//! price difference for the rest of the period, in effect once paid, the
//! anchor kept; a downgrade scheduled for the period end, renewed at the
//! new plan, cancellable until then; the refusals; and the races, each
//! checked in the database afterwards (one open change per subscription,
//! one live renewal order per period, Σ charged for a period ≤ the highest
//! plan's full price, ledger == balances).
mod checkout;
mod downgrades;
mod events;
mod guards;
mod races;
mod refusals;
mod upgrades;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use proto::billing::v1 as bpb;
use tests::{TestApp, helpers::scalar};
use tonic::Status;

pub(crate) const LITE: i64 = 10_000;
pub(crate) const LITE_CREDITS: i64 = 100;
pub(crate) const MID: i64 = 25_000;
pub(crate) const MAX: i64 = 40_000;
pub(crate) const MAX_CREDITS: i64 = 400;

/// Three monthly plans of rising price: lite, mid and max.
pub(crate) async fn plans(app: &TestApp) {
    app.create_plan("lite", "Lite", LITE, LITE_CREDITS).await;
    app.create_plan("mid", "Mid", MID, 250).await;
    app.create_plan("max", "Max", MAX, MAX_CREDITS).await;
}

pub(crate) fn request(
    sub: &bpb::Subscription,
    plan: &str,
    timing: bpb::PlanChangeTiming,
    proration: bpb::ProrationBehavior,
) -> bpb::ChangeSubscriptionPlanRequest {
    bpb::ChangeSubscriptionPlanRequest {
        id: sub.id.clone(),
        user_id: sub.user_id.clone(),
        plan_id: plan.into(),
        timing: timing as i32,
        proration: proration as i32,
        etag: String::new(),
    }
}

/// ChangeSubscriptionPlan IMMEDIATELY with proration by time.
pub(crate) async fn upgrade(
    app: &TestApp,
    sub: &bpb::Subscription,
    plan: &str,
) -> Result<bpb::ChangeSubscriptionPlanResponse, Status> {
    let r = request(sub, plan, bpb::PlanChangeTiming::Immediately, bpb::ProrationBehavior::ProrateByTime);
    app.billing.clone().change_subscription_plan(r).await.map(|r| r.into_inner())
}

/// ChangeSubscriptionPlan AT_PERIOD_END without proration.
pub(crate) async fn at_period_end(
    app: &TestApp,
    sub: &bpb::Subscription,
    plan: &str,
) -> Result<bpb::ChangeSubscriptionPlanResponse, Status> {
    let r = request(sub, plan, bpb::PlanChangeTiming::AtPeriodEnd, bpb::ProrationBehavior::None);
    app.billing.clone().change_subscription_plan(r).await.map(|r| r.into_inner())
}

/// Pays `order_id` through VerifyPayment.
pub(crate) async fn pay(app: &TestApp, order_id: &str) -> Result<bpb::VerifyPaymentResponse, Status> {
    let (payment_id, signature) = app.pay(order_id);
    let r = bpb::VerifyPaymentRequest { order_id: order_id.into(), payment_id, signature };
    app.billing.clone().verify_payment(r).await.map(|r| r.into_inner())
}

/// The expected prorated charge, computed independently of the service:
/// the difference times the milliseconds left over the period's, rounded
/// down.
pub(crate) fn expected_charge(diff: i64, sub: &bpb::Subscription, now: DateTime<Utc>) -> i64 {
    let precise = |t: &Option<prost_types::Timestamp>| {
        let t = (*t).unwrap_or_default();
        DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
    };
    let (start, end) = (precise(&sub.period_start), precise(&sub.period_end));
    let left = (end - now).num_milliseconds();
    let length = (end - start).num_milliseconds();
    ((i128::from(diff) * i128::from(left)) / i128::from(length)) as i64
}

/// What the user paid (PAID orders, any kind) for the period starting at
/// `period_start` of subscription `sub`: its purchase when that period is
/// its first, the renewal of the period, and the upgrades priced in it.
pub(crate) async fn charged_for_period(db: &mut AsyncPgConnection, sub: &str, period_start: DateTime<Utc>) -> i64 {
    let at = period_start.to_rfc3339();
    scalar(
        db,
        &format!(
            "SELECT coalesce(sum(o.amount_minor), 0)::bigint AS n FROM orders o \
              WHERE o.status = 'PAID' AND ( \
                    (o.renews_subscription_id = '{sub}' AND o.renews_period_start = '{at}') \
                 OR o.plan_change_id IN (SELECT id FROM plan_changes WHERE subscription_id = '{sub}' AND period_start = '{at}') \
                 OR o.id = (SELECT order_id FROM subscriptions WHERE id = '{sub}' AND anchor_at = '{at}'))"
        ),
    )
    .await
}

/// Renewal orders of `sub`'s period from `period_start` that are open or
/// paid (never more than one).
pub(crate) async fn live_renewals(db: &mut AsyncPgConnection, sub: &str, period_start: DateTime<Utc>) -> i64 {
    let at = period_start.to_rfc3339();
    scalar(
        db,
        &format!(
            "SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{sub}' AND renews_period_start = '{at}' \
               AND status <> 'CANCELLED'"
        ),
    )
    .await
}
