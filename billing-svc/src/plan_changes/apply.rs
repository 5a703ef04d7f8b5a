//! A change taking effect now: an upgrade once its order is paid (the
//! capture path calls [`take_effect`] with the order row locked), or at
//! once when nothing is left to charge. A downgrade takes effect at the
//! period end, in `billing_roll_period` (the paid renewal order's plan).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use super::{PlanChange, Status, cancel_uncharged_renewals, close, lock_open_orders, prorate};
use crate::{
    Result, orders, plans,
    schema::{plan_changes as pc, subscriptions as s},
    subscriptions::{self, Subscription},
};

/// Why a paid upgrade no longer applies: its payment buys nothing and is
/// recorded as a refundable discrepancy by the caller.
#[derive(Debug, Clone)]
pub struct Superseded(pub String);

/// Applies the upgrade `change_id`, whose order the caller holds locked and
/// is about to mark PAID: the subscription moves to the new plan now, if it
/// is still exactly what the charge was priced for (the same plan, version
/// and period, ACTIVE, the change still open). Otherwise nothing changes
/// and the caller records the payment as superseded.
pub async fn take_effect(conn: &mut Conn, change_id: Uuid, now: DateTime<Utc>) -> Result<Result<Subscription, Superseded>> {
    let sub_id: Uuid = pc::table.find(change_id).select(pc::subscription_id).first(conn).await?;
    // Lock order: orders (the caller's, then the subscription's open ones),
    // the subscription, its change.
    lock_open_orders(conn, sub_id).await?;
    let mut sub = subscriptions::lock(conn, sub_id).await?;
    if subscriptions::roll_if_due(conn, &sub, now).await? {
        sub = subscriptions::get(conn, sub_id).await?;
    }
    let change: PlanChange = pc::table.find(change_id).select(PlanChange::as_select()).for_update().first(conn).await?;
    if let Some(why) = superseded(conn, &sub, &change).await? {
        return Ok(Err(Superseded(why)));
    }
    apply_in(conn, &sub, &change, now).await
}

/// Why `change` can no longer apply to `sub` as priced, if it cannot.
async fn superseded(conn: &mut Conn, sub: &Subscription, change: &PlanChange) -> Result<Option<String>> {
    let why = if change.status != Status::Open {
        format!("plan change {} was withdrawn or replaced by another change", change.id)
    } else if sub.status != subscriptions::Status::Active {
        format!("subscription {} is {}", sub.id, sub.status)
    } else if sub.plan_id != change.from_plan_id || sub.plan_version != change.from_version {
        format!(
            "subscription {} moved to plan {} version {} after the change from {} version {} was priced",
            sub.id, sub.plan_id, sub.plan_version, change.from_plan_id, change.from_version
        )
    } else if sub.period_start != change.period_start {
        format!(
            "the change was priced for the period from {}; the subscription is in the one from {}",
            change.period_start, sub.period_start
        )
    } else if orders::renewal_paid(conn, sub.id, sub.period_end).await? {
        format!("the period from {} is already paid at plan {}'s price", sub.period_end, sub.plan_id)
    } else {
        return Ok(None);
    };
    Ok(Some(why))
}

/// Moves `sub` (locked, with its open orders) to the change's plan now: the
/// period and its anchor stay; the credits left grow by the difference of
/// the two plans' grants for the share of the period the charge paid for
/// (rounded down, as the charge is: an upgrade an hour before the period
/// ends buys an hour's worth of credits, not a month's), never shrinking;
/// the open renewal order (priced at the old plan) is cancelled, so the
/// renewal job opens the next period's at the new price; the change is
/// APPLIED. `granted − remaining` (what was used, which the ledger adds up
/// to) does not change.
pub(super) async fn apply_in(
    conn: &mut Conn,
    sub: &Subscription,
    change: &PlanChange,
    now: DateTime<Utc>,
) -> Result<Result<Subscription, Superseded>> {
    // First, before anything is written: the only open renewal order of an
    // ACTIVE subscription is the next period's, so when the job claimed it
    // for a charge since `superseded` looked, nothing was cancelled.
    if !cancel_uncharged_renewals(conn, sub.id, now).await? {
        return Ok(Err(Superseded(format!(
            "the period from {} is being charged to the saved payment method at plan {}'s price",
            sub.period_end, sub.plan_id
        ))));
    }
    let from = plans::version(conn, &change.from_plan_id, change.from_version).await?;
    let to = plans::version(conn, &change.to_plan_id, change.to_version).await?;
    let extra =
        prorate(from.credits_per_period, to.credits_per_period, change.period_start, change.period_end, change.created_at);
    close(conn, change, Status::Applied, now).await?;
    let sub = diesel::update(s::table.find(sub.id))
        .set((
            s::plan_id.eq(&to.plan_id),
            s::plan_version.eq(to.version),
            // An operator's migration of the old plan no longer applies.
            s::next_plan_version.eq(None::<i32>),
            s::credits_granted.eq(sub.credits_granted.saturating_add(extra)),
            s::credits_remaining.eq(sub.credits_remaining.saturating_add(extra)),
            s::updated_at.eq(now),
        ))
        .returning(Subscription::as_returning())
        .get_result(conn)
        .await?;
    tracing::info!(subscription_id = %sub.id, plan_id = %to.plan_id, version = to.version, change_id = %change.id, credits = extra, "plan changed now");
    Ok(Ok(sub))
}
