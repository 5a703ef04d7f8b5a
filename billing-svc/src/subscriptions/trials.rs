//! Trial subscriptions (docs/design.md, "Catalogue"): ACTIVE, no order, a
//! first period [now, trial_end) with the version's credits, paid periods
//! anchored at trial_end. At trial_end the renewal machinery converts it as
//! it renews any paid subscription (anniversary periods, `calendar_periods`
//! false): nothing here knows about the conversion.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;

use super::{NewLive, Subscription, get, mandate_limits, replace_with, save_method, saved_method};
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
/// does; its saved payment method carries over, so the trial
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
    // Paid periods count from the trial's end.
    let new = NewLive { version, order_id: None, anchor_at: trial_end, period_end: trial_end, trial_end: Some(trial_end) };
    let sub = replace_with(conn, user_id, old.as_ref(), new, now).await?;
    match old.as_ref().and_then(|old| saved_method(old).map(|m| (m, mandate_limits(old)))) {
        Some((m, limits)) => {
            save_method(conn, sub.id, &m, limits, now).await?;
            get(conn, sub.id).await
        }
        None => Ok(sub),
    }
}
