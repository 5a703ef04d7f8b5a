//! Trial subscriptions (docs/design.md, "Catalogue"): ACTIVE, no order, a
//! first period [now, trial_end) with the version's credits, paid periods
//! anchored at trial_end. At trial_end the renewal machinery converts it as
//! it renews any paid subscription (anniversary periods, `calendar_periods`
//! false): nothing here knows about the conversion.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use super::{Status, Subscription, get, mandate_limits, point_to, retire, save_method, saved_method};
use crate::{Result, plans::Version, schema::subscriptions};

/// A started trial, or the one a repeat found.
#[derive(Debug, Clone)]
pub struct Trial {
    pub subscription: Subscription,
    pub replayed: bool,
}

/// Whether `user_id` ever had a subscription of `plan_id` (a trial or a
/// purchase, of any status): a trial is for a first purchase only.
pub async fn had_plan(conn: &mut Conn, user_id: &str, plan_id: &str) -> Result<bool> {
    let q = subscriptions::table.filter(subscriptions::user_id.eq(user_id)).filter(subscriptions::plan_id.eq(plan_id));
    Ok(diesel::select(diesel::dsl::exists(q)).get_result(conn).await?)
}

/// Starts the trial of `version` until `trial_end`, replacing `old` (the
/// user's live subscription as the caller locked it, if any) as a purchase
/// does (`retire`); its saved payment method carries over, so the trial
/// converts by charging it. The partial unique index
/// `subscriptions_one_trial_per_user_and_plan` refuses a second trial of
/// the plan (a unique violation: the caller's retry answers the first).
/// Call inside a transaction.
pub async fn start_trial(
    conn: &mut Conn,
    version: &Version,
    user_id: &str,
    trial_end: DateTime<Utc>,
    old: Option<Subscription>,
    now: DateTime<Utc>,
) -> Result<Subscription> {
    let id = Uuid::new_v4();
    let carried = match &old {
        Some(old) => retire(conn, old, now).await?,
        None => 0,
    };
    let credits = version.credits_per_period + carried;
    diesel::insert_into(subscriptions::table)
        .values((
            subscriptions::id.eq(id),
            subscriptions::user_id.eq(user_id),
            subscriptions::plan_id.eq(&version.plan_id),
            subscriptions::plan_version.eq(version.version),
            subscriptions::status.eq(Status::Active),
            // Paid periods count from the trial's end.
            subscriptions::anchor_at.eq(trial_end),
            subscriptions::calendar_periods.eq(false),
            subscriptions::period_start.eq(now),
            subscriptions::period_end.eq(trial_end),
            subscriptions::trial_end.eq(trial_end),
            subscriptions::credits_granted.eq(credits),
            subscriptions::credits_remaining.eq(credits),
            subscriptions::created_at.eq(now),
            subscriptions::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    if let Some(old) = old {
        point_to(conn, old.id, id).await?;
        if let Some(m) = saved_method(&old) {
            save_method(conn, id, &m, mandate_limits(&old), now).await?;
        }
    }
    get(conn, id).await
}
