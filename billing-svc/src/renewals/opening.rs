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
    orders::Status as OrderStatus,
    plan_changes, plans,
    schema::{orders as o, subscriptions as s},
    subscriptions::{self, Status, Subscription},
};

/// Our gateway `receipt` for the renewal of `sub` into the period starting
/// at `period_start`: deterministic (a retried create finds the order a
/// timed-out attempt made) and within Razorpay's 40 characters.
pub(super) fn receipt(sub: Uuid, period_start: DateTime<Utc>) -> String {
    reopened_receipt(sub, period_start, 0)
}

/// The receipt of the renewal order opened after `cancelled` orders of the
/// same period were cancelled (a plan change repriced the period): a new
/// one, so the gateway's look-up by receipt never hands back a cancelled
/// order's.
fn reopened_receipt(sub: Uuid, period_start: DateTime<Utc>, cancelled: i64) -> String {
    let seed = match cancelled {
        0 => format!("{sub}/{}", period_start.timestamp()),
        n => format!("{sub}/{}/{n}", period_start.timestamp()),
    };
    format!("rnw_{}", &hex::encode(Sha256::digest(seed))[..32])
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
                    .filter(o::renews_period_start.eq(s::period_end.nullable()))
                    // A cancelled one was priced at a plan the period will
                    // not have (a plan change): it is opened again.
                    .filter(o::status.ne(OrderStatus::Cancelled)),
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
    // The plan change the subscriber scheduled for the period end, else the
    // version the subscription is pinned to or the one a migration of its
    // plan scheduled, never the plan's current price: a subscriber keeps
    // what they bought, chose or were migrated to (docs/design.md,
    // "Catalogue", "Plan changes").
    let (change, terms, cancelled) = {
        let mut conn = app.conn().await?;
        let change = plan_changes::scheduled(&mut conn, sub.id).await?;
        let (plan_id, version) = match &change {
            Some(c) => (c.to_plan_id.as_str(), c.to_version),
            None => (sub.plan_id.as_str(), sub.next_plan_version.unwrap_or(sub.plan_version)),
        };
        let terms = plans::version(&mut conn, plan_id, version).await?;
        let cancelled: i64 = o::table
            .filter(o::renews_subscription_id.eq(sub.id))
            .filter(o::renews_period_start.eq(sub.period_end))
            .count()
            .get_result(&mut conn)
            .await?;
        (change.map(|c| c.id), terms, cancelled)
    };
    if terms.price_minor <= 0 {
        tracing::warn!(subscription_id = %sub.id, plan_id = %terms.plan_id, "plan version has no price; nothing to renew");
        return Ok(false);
    }
    let receipt = reopened_receipt(sub.id, sub.period_end, cancelled);
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
            || fresh.plan_id != sub.plan_id
            || fresh.plan_version != sub.plan_version
            // A migration committed since it was read: the next run opens
            // the order at the version it scheduled.
            || fresh.next_plan_version != sub.next_plan_version
            // A plan change scheduled or withdrawn since: likewise.
            || plan_changes::scheduled(c, sub.id).await?.map(|c| c.id) != change
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
            // One open or paid renewal order per period (a partial unique
            // index), and one row per gateway order: a replica that opened
            // it first wins.
            .on_conflict_do_nothing()
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
