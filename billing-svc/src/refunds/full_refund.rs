//! What a refund settling does to the order it refunds: a full refund ends
//! (or stops renewing) the subscription it paid for; a failed one makes a
//! renewal count as paid again.

use chrono::{DateTime, Utc};
use shared::db::Conn;

use super::processed_of;
use crate::{
    Result,
    orders::{self, Order},
    subscriptions,
};

/// What a full refund (PROCESSED) of `order` takes back. Order row held;
/// subscriptions are locked after it, as everywhere:
/// - the order paid the subscription's current period: it ends now, its
///   credits forfeited;
/// - a renewal of a period not begun yet: it will not open (the roll checks
///   refunds), and the subscription ends at period end instead of going
///   PAST_DUE; already PAST_DUE (the refund was settled after the period
///   ended), it ends now, CANCELLED at that period end;
/// - a purchase whose subscription was replaced: the credits it carried
///   into the user's live subscription are forfeited there.
pub async fn end_if_fully_refunded(conn: &mut Conn, order: &Order, now: DateTime<Utc>) -> Result<()> {
    let Some(payment_id) = &order.payment_id else { return Ok(()) };
    // An upgrade's prorated charge refunded is a goodwill refund: the
    // subscription keeps its plan and its paid period (docs/design.md,
    // "Plan changes").
    if order.plan_change_id.is_some() {
        return Ok(());
    }
    if processed_of(conn, payment_id).await? < order.amount_minor {
        return Ok(());
    }
    let sub_id = match order.renews_subscription_id {
        Some(id) => Some(id),
        None => subscriptions::by_order(conn, &order.id).await?.map(|s| s.id),
    };
    let Some(sub_id) = sub_id else { return Ok(()) };
    let sub = subscriptions::lock(conn, sub_id).await?;
    if sub.status == subscriptions::Status::Replaced {
        subscriptions::forfeit_carried(conn, &sub, now).await?;
        return Ok(());
    }
    if !sub.status.is_live() {
        return Ok(());
    }
    match order.renews_period_start {
        Some(start) if start == sub.period_end => {
            subscriptions::set_cancel_at_period_end(conn, sub.id, now).await?;
            if sub.status == subscriptions::Status::PastDue {
                // Its period already ended unpaid and now never will be
                // paid: it ends at that period end (CANCELLED, as the roll
                // does with the flag) instead of waiting out the grace
                // period to EXPIRE.
                orders::cancel_renewals_of(conn, sub.id, now).await?;
                subscriptions::roll(conn, sub.id, now).await?;
                tracing::info!(order_id = %order.id, subscription_id = %sub.id, "unpaid renewal refunded: past-due subscription ended");
            } else {
                tracing::info!(order_id = %order.id, subscription_id = %sub.id, "renewal refunded: ends at period end");
            }
        }
        Some(start) if start != sub.period_start => {}
        // A renewal of the current period, or the purchase while its first
        // period runs.
        _ if order.renews_period_start.is_some() || sub.period_start == sub.anchor_at => {
            subscriptions::end_now(conn, &sub, now).await?;
            tracing::info!(order_id = %order.id, subscription_id = %sub.id, "fully refunded: subscription cancelled");
        }
        _ => {}
    }
    Ok(())
}

/// A FAILED refund gives its amount back. A renewal it had made count as
/// unpaid counts as paid again, so a subscription that went PAST_DUE
/// meanwhile reopens its period now, anchored at the old period end
/// ([`subscriptions::roll_if_due`]; the next read, use or job would too).
/// A subscription that ended meanwhile (EXPIRED past its grace period,
/// cancelled) never opens that period: the renewal's payment is kept for
/// nothing, so it becomes a SUBSCRIPTION_ENDED discrepancy that reconcile
/// reports and `--fix` refunds. Order row held; the subscription is locked
/// after it.
pub(super) async fn reopen_if_paid_again(conn: &mut Conn, order: &Order, now: DateTime<Utc>) -> Result<()> {
    let Some(sub_id) = order.renews_subscription_id else { return Ok(()) };
    let sub = subscriptions::lock(conn, sub_id).await?;
    if subscriptions::roll_if_due(conn, &sub, now).await? {
        tracing::info!(order_id = %order.id, subscription_id = %sub.id, "renewal paid again (refund failed): period reopened");
        return Ok(());
    }
    let never_opened = order.renews_period_start.is_some_and(|start| start >= sub.period_end);
    if !sub.status.is_live() && order.is_paid() && never_opened {
        subscriptions::refund_unused_renewal(conn, &sub, order, now).await?;
        tracing::warn!(order_id = %order.id, subscription_id = %sub.id, status = %sub.status,
            "renewal paid again (refund failed) after its subscription ended: owed back");
    }
    Ok(())
}
