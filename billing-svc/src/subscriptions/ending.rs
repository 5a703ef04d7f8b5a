//! How a live subscription ends early or is told not to renew:
//! CancelSubscription (now, or at period end), a full refund, and what a
//! paid renewal that will not be used becomes (money owed back). Lock order
//! as everywhere: order rows, then the subscription row.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{db::Conn, etag::Etag, ids::UserId, status::ErrorReason};
use uuid::Uuid;

use super::{LedgerKind, Status, Subscription, get, lock, lock_live, roll_if_due, take_credits};
use crate::{
    Error, Result, orders,
    schema::{ledger, subscriptions},
};

/// Ends a live subscription now (CancelSubscription now, a full refund of
/// the order that paid the current period): CANCELLED, the remaining
/// credits forfeited through a ledger row, its open renewal cancelled.
/// Caller holds the row lock (taken after any order lock).
pub async fn end_now(conn: &mut Conn, sub: &Subscription, now: DateTime<Utc>) -> Result<Subscription> {
    take_credits(conn, sub, LedgerKind::Forfeited, now).await?;
    orders::cancel_renewals_of(conn, sub.id, now).await?;
    refund_unused_renewals(conn, sub, now).await?;
    Ok(diesel::update(subscriptions::table.find(sub.id))
        .set((
            subscriptions::status.eq(Status::Cancelled),
            subscriptions::ended_at.eq(now),
            subscriptions::credits_remaining.eq(0),
            subscriptions::updated_at.eq(now),
        ))
        .returning(Subscription::as_returning())
        .get_result(conn)
        .await?)
}

/// No renewal after this period (a refunded renewal of the next period).
pub async fn set_cancel_at_period_end(conn: &mut Conn, id: Uuid, now: DateTime<Utc>) -> Result<()> {
    diesel::update(subscriptions::table.find(id))
        .set((subscriptions::cancel_at_period_end.eq(true), subscriptions::updated_at.eq(now)))
        .execute(conn)
        .await?;
    Ok(())
}

/// A replaced subscription's purchase was refunded in full: the credits it
/// carried into the user's live subscription are taken back there (as far
/// as they are left) through a FORFEITED ledger row. Caller holds `replaced`'s
/// lock; the live row is locked next.
pub async fn forfeit_carried(conn: &mut Conn, replaced: &Subscription, now: DateTime<Utc>) -> Result<()> {
    let carried: Vec<i64> = ledger::table
        .filter(ledger::subscription_id.eq(replaced.id))
        .filter(ledger::kind.eq(LedgerKind::CarryOver))
        .select(ledger::credits)
        .load(conn)
        .await?;
    let carried: i64 = carried.iter().sum();
    let Some(live) = lock_live(conn, &replaced.user_id).await? else { return Ok(()) };
    let take = carried.min(live.credits_remaining);
    if take > 0 {
        take_credits(conn, &Subscription { credits_remaining: take, ..live.clone() }, LedgerKind::Forfeited, now).await?;
        diesel::update(subscriptions::table.find(live.id))
            .set((subscriptions::credits_remaining.eq(live.credits_remaining - take), subscriptions::updated_at.eq(now)))
            .execute(conn)
            .await?;
        tracing::info!(subscription_id = %live.id, credits = take, "credits carried from a refunded purchase forfeited");
    }
    Ok(())
}

/// Renewals of `sub` paid for periods it will not have (it ends now, or at
/// period end):
/// each payment becomes a SUBSCRIPTION_ENDED discrepancy, which
/// `reconcile --fix` refunds. Caller holds the subscription's lock.
pub async fn refund_unused_renewals(conn: &mut Conn, sub: &Subscription, now: DateTime<Utc>) -> Result<()> {
    for order in orders::paid_renewals_from(conn, sub.id, sub.period_end).await? {
        refund_unused_renewal(conn, sub, &order, now).await?;
    }
    Ok(())
}

/// One paid renewal `order` of `sub` whose period `sub` will not have: its
/// payment becomes a SUBSCRIPTION_ENDED discrepancy (once: one per payment).
pub async fn refund_unused_renewal(conn: &mut Conn, sub: &Subscription, order: &orders::Order, now: DateTime<Utc>) -> Result<()> {
    use crate::discrepancies::{self, Discrepancy, Kind, Source};
    let Some(payment_id) = order.payment_id.clone() else { return Ok(()) };
    let d = Discrepancy {
        kind: Kind::SubscriptionEnded,
        order_id: Some(order.id.clone()),
        detail: format!(
            "renewal order {} paid the period from {} of subscription {}, which will not have that period (cancelled, refunded, replaced or expired)",
            order.id,
            order.renews_period_start.unwrap_or(sub.period_end),
            sub.id
        ),
        payment_id,
    };
    discrepancies::record(conn, &d, Some(order.amount()), Source::SubscriptionEnded, now).await
}

/// What CancelSubscription came to.
#[derive(Debug, Clone)]
pub struct Cancelled {
    pub subscription: Subscription,
    pub replayed: bool,
}

/// CancelSubscription (docs/design.md, "Subscription lifecycle"). At period
/// end: the flag is set, the open renewal order cancelled and a renewal
/// already paid recorded as owed back; the rollover ends the subscription at
/// `period_end`. Now: [`end_now`]. Renewal orders
/// are locked before the subscription, the capture path's lock order, so a
/// renewal being paid right now either commits first (and is then refunded
/// by whoever cancels) or finds its order CANCELLED.
///
/// With an `etag`, the change happens only if the subscription is still as
/// the caller read it, as every read shows it: rolled over to the period now
/// open (GetSubscription and ListSubscriptions show that view, and this
/// compares with the row once rolled, whoever rolled it). A rollover that
/// opened a newly paid period therefore stales an etag read before it.
/// Checked under the row lock, after the replays (a cancellation already in
/// effect changes nothing) and before the cancellation writes anything (a
/// refusal rolls back the rollover too).
pub async fn cancel(
    conn: &mut Conn,
    id: Uuid,
    user_id: &UserId,
    at_period_end: bool,
    etag: Option<&Etag>,
    now: DateTime<Utc>,
) -> Result<Cancelled> {
    use crate::schema::orders as o;
    shared::retry_tx!(conn, shared::db::Races::Conflicts, |c| {
        let _renewals: Vec<String> = o::table
            .filter(o::renews_subscription_id.eq(id))
            .filter(o::status.eq(orders::Status::Created))
            .select(o::id)
            .for_update()
            .load(c)
            .await?;
        let mut sub = lock(c, id).await?;
        if sub.user_id != user_id.as_str() {
            // Someone else's subscription reads as unknown.
            return Err(Error::not_found("subscription", id));
        }
        if roll_if_due(c, &sub, now).await? {
            sub = get(c, id).await?;
        }
        let as_read = |sub: &Subscription| Etag::check(etag, &[&sub.etag()], "subscription", id);
        let replay = |subscription| Ok(Cancelled { subscription, replayed: true });
        match sub.status {
            Status::Cancelled => return replay(sub),
            Status::Expired | Status::Replaced => {
                return Err(Error::precondition(
                    ErrorReason::SubscriptionEnded,
                    format!("subscription:{id}"),
                    format!("subscription {id} is {} and cannot be cancelled", sub.status),
                ));
            }
            Status::Active | Status::PastDue => {}
        }
        if sub.is_free() {
            return Err(Error::precondition(
                ErrorReason::FreePlan,
                format!("subscription:{id}"),
                "the free plan has nothing to cancel: it renews at no charge",
            ));
        }
        if at_period_end && sub.status == Status::Active {
            if sub.cancel_at_period_end {
                return replay(sub);
            }
            as_read(&sub)?;
            orders::cancel_renewals_of(c, id, now).await?;
            // A renewal collected early is owed back: it will not open.
            refund_unused_renewals(c, &sub, now).await?;
            let sub = diesel::update(subscriptions::table.find(id))
                .set((subscriptions::cancel_at_period_end.eq(true), subscriptions::updated_at.eq(now)))
                .returning(Subscription::as_returning())
                .get_result(c)
                .await?;
            tracing::info!(subscription_id = %id, period_end = %sub.period_end, "cancelled at period end");
            return Ok(Cancelled { subscription: sub, replayed: false });
        }
        // Now (or PAST_DUE, whose period already ended).
        as_read(&sub)?;
        let sub = end_now(c, &sub, now).await?;
        tracing::info!(subscription_id = %id, "cancelled now");
        Ok(Cancelled { subscription: sub, replayed: false })
    })
}
