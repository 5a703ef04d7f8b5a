//! Step 2 of the renewal job: opening the renewal orders that are due.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Settings;
use crate::{
    App, Result,
    gateway::NewOrder,
    plans,
    schema::{orders as o, subscriptions as s},
    subscriptions::{self, Status, Subscription},
};

/// Our gateway `receipt` for the renewal of `sub` into the period starting
/// at `period_start`: deterministic (a retried create finds the order a
/// timed-out attempt made) and within Razorpay's 40 characters.
pub(super) fn receipt(sub: Uuid, period_start: DateTime<Utc>) -> String {
    let digest = Sha256::digest(format!("{sub}/{}", period_start.timestamp()));
    format!("rnw_{}", &hex::encode(digest)[..32])
}

/// Creates the renewal orders that are due.
pub(super) async fn open_due(app: &App, now: DateTime<Utc>, st: Settings, batch: i64) -> Result<usize> {
    let due: Vec<Subscription> = {
        let mut conn = app.conn().await?;
        s::table
            .filter(s::status.eq_any([Status::Active, Status::PastDue]))
            .filter(s::calendar_periods.eq(false))
            .filter(s::cancel_at_period_end.eq(false))
            .filter(s::period_end.le(now + st.lead))
            .filter(s::period_end.gt(now - st.grace))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                o::table
                    .filter(o::renews_subscription_id.eq(s::id.nullable()))
                    .filter(o::renews_period_start.eq(s::period_end.nullable())),
            )))
            .select(Subscription::as_select())
            // The most urgent first; the rest on the next iterations.
            .order(s::period_end)
            .limit(batch)
            .load(&mut conn)
            .await?
    };
    let mut created = 0;
    for sub in due {
        match open_one(app, &sub, now).await {
            Ok(true) => created += 1,
            Ok(false) => {}
            // One subscription's trouble (the gateway down) must not stop
            // the others; the next iteration tries again.
            Err(e) => tracing::warn!(subscription_id = %sub.id, error = %e, "renewal order not created; retried next run"),
        }
    }
    Ok(created)
}

async fn open_one(app: &App, sub: &Subscription, now: DateTime<Utc>) -> Result<bool> {
    // The version the subscription is pinned to, or the one a migration of
    // its plan scheduled, never the plan's current price: a subscriber keeps
    // what they bought or were migrated to (docs/design.md, "Catalogue").
    let version = sub.next_plan_version.unwrap_or(sub.plan_version);
    let terms = plans::version(&mut *app.conn().await?, &sub.plan_id, version).await?;
    if terms.price_minor <= 0 {
        tracing::warn!(subscription_id = %sub.id, plan_id = %terms.plan_id, "plan version has no price; nothing to renew");
        return Ok(false);
    }
    let receipt = receipt(sub.id, sub.period_end);
    let at_gateway = app
        .gateway
        .create_order(&NewOrder {
            amount_minor: terms.price_minor,
            currency: &terms.currency,
            receipt: &receipt,
            user_id: &sub.user_id,
            plan_id: &terms.plan_id,
            mandate: None,
        })
        .await?;
    let next_charge_at = subscriptions::saved_method(sub).map(|_| now);
    let mut conn = app.conn().await?;
    shared::retry_tx!(&mut conn, shared::db::Races::Conflicts, |c| {
        // Still renewing into this period (not cancelled, replaced or
        // expired meanwhile)? The lock keeps it so until the insert commits.
        let fresh = subscriptions::lock(c, sub.id).await?;
        if !fresh.status.is_live()
            || fresh.cancel_at_period_end
            || fresh.period_end != sub.period_end
            || fresh.plan_version != sub.plan_version
            // A migration committed since it was read: the next run opens
            // the order at the version it scheduled.
            || fresh.next_plan_version != sub.next_plan_version
        {
            return Ok(false);
        }
        let n = diesel::insert_into(o::table)
            .values((
                o::id.eq(&at_gateway.id),
                o::user_id.eq(&sub.user_id),
                o::plan_id.eq(&terms.plan_id),
                o::plan_version.eq(terms.version),
                o::amount_minor.eq(terms.price_minor),
                o::currency.eq(&terms.currency),
                o::renews_subscription_id.eq(sub.id),
                o::renews_period_start.eq(sub.period_end),
                o::next_charge_at.eq(next_charge_at),
                o::created_at.eq(now),
                o::updated_at.eq(now),
            ))
            .on_conflict((o::renews_subscription_id, o::renews_period_start))
            .do_nothing()
            .execute(c)
            .await?;
        if n == 1 {
            tracing::info!(subscription_id = %sub.id, order_id = %at_gateway.id, period_start = %sub.period_end, "renewal order created");
        }
        Ok::<_, crate::Error>(n == 1)
    })
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn receipts_are_stable_and_fit_razorpay() {
        let sub = Uuid::nil();
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        assert_eq!(receipt(sub, t), receipt(sub, t));
        assert_ne!(receipt(sub, t), receipt(sub, t + Duration::days(30)));
        assert!(receipt(sub, t).len() <= 40);
    }
}
