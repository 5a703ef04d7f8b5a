//! Renewal orders: whether a period is paid, the paid and open renewal
//! orders of subscriptions, and stopping their collection or cancelling them.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use super::{Order, Status};
use crate::{
    Result,
    schema::{orders, subscriptions},
};

/// Locks the open renewal orders of the subscriptions holding the saved
/// method `token_id`, in id order, without locking those subscriptions: the
/// first step of forgetting that method. A renewal capture locks its order
/// row and then the subscription, so whoever changes both must take the
/// orders first (docs/design.md, Invariants 29).
pub async fn lock_open_renewals_of_token(conn: &mut Conn, token_id: &str) -> Result<Vec<String>> {
    let holders = subscriptions::table.filter(subscriptions::gateway_token_id.eq(token_id)).select(subscriptions::id);
    Ok(orders::table
        .filter(orders::renews_subscription_id.eq_any(holders.nullable()))
        .filter(orders::status.eq(Status::Created))
        .order(orders::id)
        .select(orders::id)
        .for_update()
        .load(conn)
        .await?)
}

/// Stops the automatic collection of the open renewal orders of these
/// subscriptions (their saved method can no longer be charged); they stay
/// payable through a renewal checkout.
pub async fn stop_collecting(conn: &mut Conn, subscription_ids: &[Uuid], why: &str, now: DateTime<Utc>) -> Result<usize> {
    Ok(diesel::update(
        orders::table
            .filter(orders::renews_subscription_id.eq_any(subscription_ids))
            .filter(orders::status.eq(Status::Created))
            .filter(orders::next_charge_at.is_not_null()),
    )
    .set((orders::next_charge_at.eq(None::<DateTime<Utc>>), orders::last_charge_error.eq(why), orders::updated_at.eq(now)))
    .execute(conn)
    .await?)
}

diesel::define_sql_function! {
    /// See the subscription lifecycle migration.
    fn billing_renewal_paid(subscription: diesel::sql_types::Uuid, period_start: diesel::sql_types::Timestamptz) -> diesel::sql_types::Bool;
}

/// Whether the period of `subscription_id` starting at `period_start` is
/// paid: its renewal order PAID, not owed back (no discrepancy recorded for
/// its payment) and not refunded in full. The one rule `billing_roll_period`
/// applies too.
pub async fn renewal_paid(conn: &mut Conn, subscription_id: Uuid, period_start: DateTime<Utc>) -> Result<bool> {
    Ok(diesel::select(billing_renewal_paid(subscription_id, period_start)).get_result(conn).await?)
}

/// The PAID renewal orders of `subscription_id` for periods starting at
/// or after `from`.
pub async fn paid_renewals_from(conn: &mut Conn, subscription_id: Uuid, from: DateTime<Utc>) -> Result<Vec<Order>> {
    Ok(orders::table
        .filter(orders::renews_subscription_id.eq(subscription_id))
        .filter(orders::renews_period_start.ge(from))
        .filter(orders::status.eq(Status::Paid))
        .select(Order::as_select())
        .load(conn)
        .await?)
}

/// The open (CREATED) renewal orders of these subscriptions.
pub async fn open_renewals(conn: &mut Conn, subscription_ids: &[Uuid]) -> Result<Vec<Order>> {
    Ok(orders::table
        .filter(orders::renews_subscription_id.eq_any(subscription_ids))
        .filter(orders::status.eq(Status::Created))
        .select(Order::as_select())
        .load(conn)
        .await?)
}

/// Cancels the open renewal orders of a subscription that will not renew
/// (ended, replaced, cancelled at period end), so a later payment of one is
/// refused as a discrepancy and no job charges it.
pub async fn cancel_renewals_of(conn: &mut Conn, subscription_id: Uuid, now: DateTime<Utc>) -> Result<usize> {
    Ok(diesel::update(
        orders::table.filter(orders::renews_subscription_id.eq(subscription_id)).filter(orders::status.eq(Status::Created)),
    )
    .set((orders::status.eq(Status::Cancelled), orders::next_charge_at.eq(None::<DateTime<Utc>>), orders::updated_at.eq(now)))
    .execute(conn)
    .await?)
}
