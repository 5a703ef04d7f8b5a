//! Cancelling the unpaid orders of retired or deleted checkout sessions.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use super::{OrderId, Status};
use crate::{Result, schema::orders};

/// Cancels the CREATED orders among `order_ids` (each under its row lock: a
/// concurrent capture either finishes first and the order stays PAID, or
/// finds it CANCELLED) and returns the ids of the orders to answer with
/// (the caller reads them as they are now). A renewal
/// order belongs to its subscription, not to the checkout sessions that
/// offered it: it is never cancelled here (it is still owed, and other
/// checkouts may offer it), only detached from a session recorded on it
/// before renewal checkouts stopped recording one, and left out of the
/// answer, as it is not the retired or deleted session's to cancel.
pub async fn cancel_unpaid(conn: &mut Conn, order_ids: &[OrderId], now: DateTime<Utc>) -> Result<Vec<OrderId>> {
    let ids: Vec<&str> = order_ids.iter().map(OrderId::as_str).collect();
    let detached: Vec<String> = diesel::update(
        orders::table
            .filter(orders::id.eq_any(&ids))
            .filter(orders::status.eq(Status::Created))
            .filter(orders::renews_subscription_id.is_not_null().or(orders::plan_change_id.is_not_null())),
    )
    .set((orders::checkout_session_id.eq(None::<Uuid>), orders::updated_at.eq(now)))
    .returning(orders::id)
    .get_results(conn)
    .await?;
    diesel::update(
        orders::table
            .filter(orders::id.eq_any(&ids))
            .filter(orders::status.eq(Status::Created))
            .filter(orders::renews_subscription_id.is_null())
            .filter(orders::plan_change_id.is_null()),
    )
    .set((orders::status.eq(Status::Cancelled), orders::updated_at.eq(now)))
    .execute(conn)
    .await?;
    Ok(order_ids.iter().filter(|id| !detached.iter().any(|d| d == id.as_str())).cloned().collect())
}
