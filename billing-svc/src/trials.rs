//! StartTrial: a user's first purchase of a plan whose current version
//! offers a trial, charged nothing until the trial ends (docs/design.md,
//! "Catalogue"). Above plans and subscriptions, as it asks both.
use chrono::{DateTime, Duration, Utc};
use shared::{
    db::{Conn, Races},
    ids::{PlanId, UserId},
    status::ErrorReason,
};

use crate::{
    App, Error, Result, checkout_orders, plans,
    subscriptions::{self, Trial},
};

/// The longest trial a version may offer, in days.
pub const MAX_TRIAL_DAYS: i64 = 365;

/// Starts `user_id`'s trial of `plan_id`, or answers the one already
/// running (replayed). Concurrent calls serialize on the user's live
/// subscription row; the database's one-trial-per-user-and-plan index is
/// the last word, and a retry after its unique violation finds the winner.
pub async fn start(app: &App, user_id: &UserId, plan_id: &PlanId) -> Result<Trial> {
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| start_in(c, user_id.as_str(), plan_id.as_str(), now).await)
}

async fn start_in(c: &mut Conn, user_id: &str, plan_id: &str, now: DateTime<Utc>) -> Result<Trial> {
    // Share lock: no new version or archive until the trial is in.
    let plan = plans::get_shared(c, plan_id).await?;
    // The live subscription it replaces, if any: a user who never used the
    // service gets no free month first (a purchase does not either), so no
    // free credits are carried into the trial.
    let live = subscriptions::live_locked(c, user_id, now).await?;
    if let Some(live) = live.as_ref().filter(|l| l.plan_id == plan.id && l.trial_end.is_some()) {
        return Ok(Trial { subscription: live.clone(), replayed: true });
    }
    checkout_orders::not_purchasable(&plan)?;
    let unavailable = |why: &str| Error::precondition(ErrorReason::TrialNotAvailable, format!("plan:{plan_id}"), why.to_owned());
    if subscriptions::had_plan(c, user_id, plan_id).await? {
        // A concurrent start may have committed since the live row was
        // read (a new user has no row to serialize on): its trial is the
        // answer, not a refusal.
        let now_live = subscriptions::live_locked(c, user_id, now).await?;
        if let Some(live) = now_live.filter(|l| l.plan_id == plan.id && l.trial_end.is_some()) {
            return Ok(Trial { subscription: live, replayed: true });
        }
        return Err(unavailable(
            "one trial per user and plan: this user had a trial or a subscription of this plan; buy it with CreateOrder",
        ));
    }
    let version = plans::version(c, plan_id, plan.current_version).await?;
    let Some(days) = version.trial_days.filter(|d| *d > 0) else {
        return Err(unavailable("the plan's current version offers no trial; buy it with CreateOrder"));
    };
    let trial_end = now + Duration::days(i64::from(days));
    let subscription = subscriptions::start_trial(c, &version, user_id, trial_end, live, now).await?;
    tracing::info!(subscription_id = %subscription.id, plan_id, %trial_end, "trial started");
    Ok(Trial { subscription, replayed: false })
}
