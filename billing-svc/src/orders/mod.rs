//! Gateway orders: one per checkout session (the natural idempotency key),
//! and one renewal order per (subscription, period it pays for).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use crate::{
    Error, Result,
    schema::{orders, subscriptions},
    subscriptions::MandateLimits,
};

mod cancel;
mod create;
mod renewals;

pub use cancel::cancel_unpaid;
pub use create::create;
pub use renewals::{
    billing_renewal_paid, cancel_renewals_of, lock_open_renewals_of_token, open_renewals, paid_renewals_from, renewal_paid,
    stop_collecting,
};

pub const MAX_BATCH: usize = 500;

shared::text_enum! {
    /// Where an order is: CREATED moves to PAID or CANCELLED, both final.
    pub enum Status {
        Created = "CREATED",
        Paid = "PAID",
        /// Withdrawn before payment: its checkout session was cleaned up,
        /// or the subscription it renews ended.
        Cancelled = "CANCELLED",
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
pub struct Order {
    pub id: String,
    /// None for a renewal order nobody opened a checkout for.
    pub checkout_session_id: Option<Uuid>,
    pub user_id: String,
    pub plan_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: Status,
    pub payment_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Creation order, strictly increasing.
    pub seq: i64,
    /// A renewal order: the subscription it renews and the start of the
    /// period it pays for.
    pub renews_subscription_id: Option<Uuid>,
    pub renews_period_start: Option<DateTime<Utc>>,
    pub charge_attempts: i32,
    /// When the saved payment method is charged next (renewals only).
    pub next_charge_at: Option<DateTime<Utc>>,
    pub last_charge_error: Option<String>,
    /// A charge's payment not captured yet (asked about before charging
    /// again).
    pub pending_payment_id: Option<String>,
    /// The recurring mandate this purchase order registers (its payment
    /// saves a token later renewals charge within these limits).
    pub mandate_max_amount_minor: Option<i64>,
    pub mandate_expires_at: Option<DateTime<Utc>>,
}

impl Order {
    pub fn is_paid(&self) -> bool {
        self.status == Status::Paid
    }

    pub fn mandate_limits(&self) -> Option<MandateLimits> {
        match (self.mandate_max_amount_minor, self.mandate_expires_at) {
            (Some(max_amount_minor), Some(expires_at)) => Some(MandateLimits { max_amount_minor, expires_at }),
            _ => None,
        }
    }
}

/// An order with the subscription its payment created (or renews), if any,
/// and its refunds when they were loaded.
#[derive(Debug, Clone)]
pub struct OrderView {
    pub order: Order,
    pub subscription_id: Option<Uuid>,
    pub refunds: Vec<crate::refunds::Refund>,
}

impl OrderView {
    pub fn new(order: Order, subscription_id: Option<Uuid>) -> Self {
        let subscription_id = subscription_id.or(order.renews_subscription_id);
        Self { order, subscription_id, refunds: Vec::new() }
    }
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Order> {
    orders::table.find(id).select(Order::as_select()).first(conn).await.optional()?.ok_or_else(|| Error::not_found("order", id))
}

/// Locks the order row, if it exists, for the rest of the transaction.
pub async fn lock_optional(conn: &mut Conn, id: &str) -> Result<Option<Order>> {
    Ok(orders::table.find(id).select(Order::as_select()).for_update().first(conn).await.optional()?)
}

/// Up to [`MAX_BATCH`] orders by order id or checkout session id, with their
/// subscriptions, in one query (checkout's completion sync).
pub async fn batch_get(conn: &mut Conn, order_ids: &[String], session_ids: &[Uuid]) -> Result<Vec<OrderView>> {
    let rows: Vec<(Order, Option<Uuid>)> = orders::table
        .left_join(subscriptions::table.on(subscriptions::order_id.eq(orders::id.nullable())))
        .filter(orders::id.eq_any(order_ids).or(orders::checkout_session_id.eq_any(session_ids)))
        .select((Order::as_select(), subscriptions::id.nullable()))
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|(order, subscription_id)| OrderView::new(order, subscription_id)).collect())
}

/// One order with its subscription and refunds.
pub async fn view(conn: &mut Conn, id: &str) -> Result<OrderView> {
    let order = get(conn, id).await?;
    let sub: Option<Uuid> =
        subscriptions::table.filter(subscriptions::order_id.eq(id)).select(subscriptions::id).first(conn).await.optional()?;
    let mut v = OrderView::new(order, sub);
    v.refunds = crate::refunds::of_orders(conn, &[v.order.id.clone()]).await?;
    Ok(v)
}

/// Filters of ListOrders.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub user_id: Option<String>,
    pub status: Option<Status>,
    pub payment_id: Option<String>,
}

/// A page of orders, newest first (keyset on seq), with their subscriptions
/// and refunds, and the seq to continue after when more follow.
pub async fn list(conn: &mut Conn, f: &ListFilter, page_size: i64, after: Option<i64>) -> Result<(Vec<OrderView>, Option<i64>)> {
    let mut q = orders::table
        .left_join(subscriptions::table.on(subscriptions::order_id.eq(orders::id.nullable())))
        .select((Order::as_select(), subscriptions::id.nullable()))
        .into_boxed();
    if let Some(u) = &f.user_id {
        q = q.filter(orders::user_id.eq(u));
    }
    if let Some(st) = f.status {
        q = q.filter(orders::status.eq(st));
    }
    if let Some(p) = &f.payment_id {
        q = q.filter(orders::payment_id.eq(p));
    }
    if let Some(seq) = after {
        q = q.filter(orders::seq.lt(seq));
    }
    let mut rows: Vec<(Order, Option<Uuid>)> = q.order(orders::seq.desc()).limit(page_size + 1).load(conn).await?;
    let next = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last().map(|(o, _)| o.seq)
    } else {
        None
    };
    let ids: Vec<String> = rows.iter().map(|(o, _)| o.id.clone()).collect();
    let mut refunds = crate::refunds::of_orders(conn, &ids).await?;
    let views = rows
        .into_iter()
        .map(|(o, s)| {
            let mut v = OrderView::new(o, s);
            let (mine, rest): (Vec<_>, Vec<_>) =
                refunds.drain(..).partition(|r| r.order_id.as_deref() == Some(v.order.id.as_str()));
            refunds = rest;
            v.refunds = mine;
            v
        })
        .collect();
    Ok((views, next))
}
