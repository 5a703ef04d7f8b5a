//! Plan changes of a paid subscription (docs/design.md, "Plan changes"):
//! an upgrade takes effect now, once the order charging the price
//! difference for the rest of the period is paid; a downgrade takes effect
//! at the period end, where the renewal order of the next period charges
//! the new plan. A subscription has at most one OPEN change (the database's
//! partial unique index), shown as its `pending_change`. Above plans,
//! orders and subscriptions, as it asks all three.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use crate::{
    Result,
    orders::{self, Order},
    schema::{orders as o, plan_changes as pc},
};

mod apply;
mod request;

pub use apply::{Superseded, take_effect};
pub use request::{ChangeRequest, Changed, change, withdraw};

shared::text_enum! {
    /// When a change takes effect.
    pub enum Timing {
        /// Now, once its prorated charge is paid (an upgrade).
        Immediately = "IMMEDIATELY",
        /// At the end of the current period (a downgrade, or any change
        /// asked for then).
        AtPeriodEnd = "AT_PERIOD_END",
    }
}

shared::text_enum! {
    /// Where a change is: OPEN moves to APPLIED or CANCELLED, both final.
    pub enum Status {
        Open = "OPEN",
        Applied = "APPLIED",
        /// Withdrawn (CancelPlanChange), superseded by another change, or
        /// its subscription moved on before it could apply.
        Cancelled = "CANCELLED",
    }
}

#[derive(serde::Deserialize)] // an event's payload (crate::grpc::events)
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = pc, check_for_backend(diesel::pg::Pg))]
pub struct PlanChange {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub timing: Timing,
    pub status: Status,
    pub from_plan_id: String,
    pub from_version: i32,
    pub to_plan_id: String,
    pub to_version: i32,
    /// The period the change was priced in (IMMEDIATELY), or whose end it
    /// takes effect at (AT_PERIOD_END).
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// The prorated charge (0 at period end).
    pub amount_minor: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
}

/// A change with the order paying it (IMMEDIATELY with a charge).
#[derive(Debug, Clone)]
pub struct ChangeView {
    pub change: PlanChange,
    pub order: Option<Order>,
}

/// The time-prorated charge of moving from a plan costing `from_price` a
/// period to one costing `to_price`, for what is left of the period
/// `[start, end)` at `now`: `(to − from) × left / length`, in minor units,
/// **rounded down** (a fraction of a paisa/cent is the customer's). So the
/// charges of a period never add up to more than the highest plan's full
/// price: `from + Σ (next − previous) × left_i ≤ highest` with `left_i ≤ 1`.
/// Nothing left, or no difference: 0.
pub fn prorate(from_price: i64, to_price: i64, start: DateTime<Utc>, end: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let length = (end - start).num_milliseconds();
    let left = (end - now).num_milliseconds().clamp(0, length.max(0));
    let diff = to_price.saturating_sub(from_price);
    if length <= 0 || diff <= 0 {
        return 0;
    }
    let charge = i128::from(diff) * i128::from(left) / i128::from(length);
    i64::try_from(charge).unwrap_or(diff)
}

/// The open change of each of these subscriptions, with its order.
pub async fn open_of(conn: &mut Conn, subscription_ids: &[Uuid]) -> Result<Vec<ChangeView>> {
    let changes: Vec<PlanChange> = pc::table
        .filter(pc::subscription_id.eq_any(subscription_ids))
        .filter(pc::status.eq(Status::Open))
        .select(PlanChange::as_select())
        .load(conn)
        .await?;
    let ids: Vec<Uuid> = changes.iter().map(|c| c.id).collect();
    let orders: Vec<Order> = o::table.filter(o::plan_change_id.eq_any(&ids)).select(Order::as_select()).load(conn).await?;
    Ok(changes
        .into_iter()
        .map(|change| {
            let order = orders.iter().find(|o| o.plan_change_id == Some(change.id)).cloned();
            ChangeView { change, order }
        })
        .collect())
}

/// The subscription's open change scheduled for its period end (the plan
/// its next renewal order charges), if any.
pub async fn scheduled(conn: &mut Conn, subscription_id: Uuid) -> Result<Option<PlanChange>> {
    Ok(pc::table
        .filter(pc::subscription_id.eq(subscription_id))
        .filter(pc::status.eq(Status::Open))
        .filter(pc::timing.eq(Timing::AtPeriodEnd))
        .select(PlanChange::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The subscription a change is of.
pub async fn subscription_of(conn: &mut Conn, change_id: Uuid) -> Result<Uuid> {
    Ok(pc::table.find(change_id).select(pc::subscription_id).first(conn).await?)
}

/// The subscription's open change, locked (caller holds the subscription's
/// lock: the order is orders, subscription, change).
async fn lock_open(conn: &mut Conn, subscription_id: Uuid) -> Result<Option<PlanChange>> {
    Ok(pc::table
        .filter(pc::subscription_id.eq(subscription_id))
        .filter(pc::status.eq(Status::Open))
        .select(PlanChange::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Locks the subscription's open orders before the subscription itself:
/// the order of its open change first, then its renewal orders, the order
/// in which an upgrade's capture takes them (it holds its own order when it
/// locks the renewals). A capture locks its order and then the
/// subscription, so whoever changes both takes the orders first
/// (docs/design.md, Invariants 29).
async fn lock_open_orders(conn: &mut Conn, subscription_id: Uuid) -> Result<()> {
    let open_changes =
        pc::table.filter(pc::subscription_id.eq(subscription_id)).filter(pc::status.eq(Status::Open)).select(pc::id);
    let _change_orders: Vec<String> = o::table
        .filter(o::status.eq(orders::Status::Created))
        .filter(o::plan_change_id.eq_any(open_changes.nullable()))
        .order(o::id)
        .select(o::id)
        .for_update()
        .load(conn)
        .await?;
    let _renewals: Vec<String> = o::table
        .filter(o::status.eq(orders::Status::Created))
        .filter(o::renews_subscription_id.eq(subscription_id))
        .order(o::id)
        .select(o::id)
        .for_update()
        .load(conn)
        .await?;
    Ok(())
}

/// Renewal orders being collected: collection not stopped
/// (`next_charge_at` set) and a saved method's charge claimed or made (an
/// attempt counted, or a payment remembered): a retry is scheduled, or an
/// attempt's outcome is not known yet. Such a charge may land at any
/// moment, so a plan change never cancels one (docs/design.md, "Plan
/// changes"). Collection stopped (no method, the mandate's limits, a
/// revoked token) charges nothing more.
type InCollection = diesel::dsl::And<
    diesel::dsl::IsNotNull<o::next_charge_at>,
    diesel::dsl::Or<diesel::dsl::Gt<o::charge_attempts, i32>, diesel::dsl::IsNotNull<o::pending_payment_id>>,
>;

fn in_collection() -> InCollection {
    o::next_charge_at.is_not_null().and(o::charge_attempts.gt(0).or(o::pending_payment_id.is_not_null()))
}

/// Whether an open renewal order of the subscription is being collected
/// ([`in_collection`]). Caller holds the renewal orders' locks, which the
/// job's claim takes too.
async fn renewal_in_collection(conn: &mut Conn, subscription_id: Uuid) -> Result<bool> {
    let n: i64 = o::table
        .filter(o::renews_subscription_id.eq(subscription_id))
        .filter(o::status.eq(orders::Status::Created))
        .filter(in_collection())
        .count()
        .get_result(conn)
        .await?;
    Ok(n > 0)
}

/// Cancels the subscription's open renewal orders that are not being
/// collected, for a plan change that reprices the next period, and answers
/// whether none is left open. The condition is re-checked on each row as
/// the update locks it, so an order the renewal job opened and claimed
/// after the caller looked (it is not among the rows the caller locked) is
/// left alone and reported: the caller then refuses the change (rolling
/// this back), and the charge settles the period.
async fn cancel_uncharged_renewals(conn: &mut Conn, subscription_id: Uuid, now: DateTime<Utc>) -> Result<bool> {
    diesel::update(
        o::table
            .filter(o::renews_subscription_id.eq(subscription_id))
            .filter(o::status.eq(orders::Status::Created))
            .filter(diesel::dsl::not(in_collection())),
    )
    .set((o::status.eq(orders::Status::Cancelled), o::next_charge_at.eq(None::<DateTime<Utc>>), o::updated_at.eq(now)))
    .execute(conn)
    .await?;
    Ok(!renewal_in_collection(conn, subscription_id).await?)
}

/// The refusal of a change while the next period's renewal is being
/// charged to the saved method.
fn being_charged(subscription_id: Uuid) -> crate::Error {
    crate::Error::precondition(
        shared::status::ErrorReason::PlanChangeNotAllowed,
        format!("subscription:{subscription_id}"),
        "the next period's renewal is being charged to the saved payment method: change the plan once that charge settled \
         (it is paid, or collection stopped), or after the next period began",
    )
}

/// Closes an open change (APPLIED or CANCELLED). A CANCELLED change's
/// unpaid order is cancelled with it, so a late payment of it is refused as
/// a refundable discrepancy; a cancelled change at period end takes the
/// renewal order opened at its plan with it (the renewal job opens the
/// period's order again at the subscription's own), unless that order is
/// being charged: then the change is refused (`PLAN_CHANGE_NOT_ALLOWED`).
/// Caller holds the locks of [`lock_open_orders`] and the subscription's.
async fn close(conn: &mut Conn, change: &PlanChange, status: Status, now: DateTime<Utc>) -> Result<()> {
    let applied_at = (status == Status::Applied).then_some(now);
    diesel::update(pc::table.find(change.id))
        .set((pc::status.eq(status), pc::applied_at.eq(applied_at), pc::updated_at.eq(now)))
        .execute(conn)
        .await?;
    if status == Status::Cancelled {
        diesel::update(o::table.filter(o::plan_change_id.eq(change.id)).filter(o::status.eq(orders::Status::Created)))
            .set((o::status.eq(orders::Status::Cancelled), o::next_charge_at.eq(None::<DateTime<Utc>>), o::updated_at.eq(now)))
            .execute(conn)
            .await?;
        if change.timing == Timing::AtPeriodEnd && !cancel_uncharged_renewals(conn, change.subscription_id, now).await? {
            return Err(being_charged(change.subscription_id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn proration_is_by_time_and_rounds_down() {
        let (start, end) = (t("2026-01-01T00:00:00Z"), t("2026-01-31T00:00:00Z"));
        // Half the period left: half the difference.
        assert_eq!(prorate(49_900, 99_900, start, end, t("2026-01-16T00:00:00Z")), 25_000);
        // A third left of 100: 33.33… rounds down to 33.
        assert_eq!(prorate(0, 100, start, end, t("2026-01-21T00:00:00Z")), 33);
        // All of it left at the start; nothing at or past the end.
        assert_eq!(prorate(100, 400, start, end, start), 300);
        assert_eq!(prorate(100, 400, start, end, end), 0);
        assert_eq!(prorate(100, 400, start, end, end + Duration::days(1)), 0);
        // Before the period (clock skew): never more than the difference.
        assert_eq!(prorate(100, 400, start, end, start - Duration::days(1)), 300);
        // No upgrade, nothing to charge.
        assert_eq!(prorate(400, 100, start, end, start), 0);
    }

    #[test]
    fn a_periods_charges_never_exceed_the_highest_full_price() {
        let (start, end) = (t("2024-02-01T00:00:00Z"), t("2024-03-01T00:00:00Z"));
        let prices = [9_900_i64, 19_900, 29_999, 49_999];
        for step_ms in [1_i64, 7_777, 86_400_000, 123_456_789] {
            let mut paid = prices[0];
            let mut now = start;
            for pair in prices.windows(2) {
                now += Duration::milliseconds(step_ms);
                paid += prorate(pair[0], pair[1], start, end, now);
            }
            assert!(paid <= prices[3], "paid {paid} > {} with steps of {step_ms} ms", prices[3]);
        }
    }
}
