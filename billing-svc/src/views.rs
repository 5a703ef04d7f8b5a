//! The read model: an order with the subscription its payment created (or
//! renews) and its refunds, a subscription with its open renewal order.
//! Reads only. It sits above orders, subscriptions and refunds, so none of
//! those needs another's view (docs/design.md, Components).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use shared::ids::UserId;
use uuid::Uuid;

use crate::{
    Result,
    orders::{self, Order, OrderId, Status},
    plan_changes,
    refunds::{self, Refund},
    schema::{orders as orders_table, plan_changes as plan_changes_table, subscriptions as subscriptions_table},
    subscriptions::{self, Subscription},
};

/// An order with the subscription its payment created (or renews), if any,
/// and its refunds when they were loaded.
#[derive(Debug, Clone)]
pub struct OrderView {
    pub order: Order,
    pub subscription_id: Option<Uuid>,
    pub refunds: Vec<Refund>,
}

impl OrderView {
    pub fn new(order: Order, subscription_id: Option<Uuid>) -> Self {
        let subscription_id = subscription_id.or(order.renews_subscription_id);
        Self { order, subscription_id, refunds: Vec::new() }
    }
}

/// Up to [`orders::MAX_BATCH`] orders by order id or checkout session id,
/// with their subscriptions, in one query (checkout's completion sync).
pub async fn batch_orders(conn: &mut Conn, order_ids: &[OrderId], session_ids: &[Uuid]) -> Result<Vec<OrderView>> {
    use orders_table as o;
    use plan_changes_table as pc;
    use subscriptions_table as s;
    let order_ids: Vec<&str> = order_ids.iter().map(OrderId::as_str).collect();
    let rows: Vec<(Order, Option<Uuid>, Option<Uuid>)> = o::table
        .left_join(s::table.on(s::order_id.eq(o::id.nullable())))
        .left_join(pc::table.on(o::plan_change_id.eq(pc::id.nullable())))
        .filter(o::id.eq_any(&order_ids).or(o::checkout_session_id.eq_any(session_ids)))
        .select((Order::as_select(), s::id.nullable(), pc::subscription_id.nullable()))
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|(order, bought, changed)| OrderView::new(order, bought.or(changed))).collect())
}

/// Loads the refunds of `views` (the FULL view of a batch), one query.
pub async fn with_refunds(conn: &mut Conn, views: &mut [OrderView]) -> Result<()> {
    let ids: Vec<String> = views.iter().map(|v| v.order.id.clone()).collect();
    let refunds = refunds::of_orders(conn, &ids).await?;
    for v in views.iter_mut() {
        v.refunds = refunds.iter().filter(|r| r.order_id.as_deref() == Some(v.order.id.as_str())).cloned().collect();
    }
    Ok(())
}

/// One order with its subscription and refunds.
pub async fn order(conn: &mut Conn, id: &OrderId) -> Result<OrderView> {
    let id = id.as_str();
    use subscriptions_table as s;
    let order = orders::get(conn, id).await?;
    let sub: Option<Uuid> = match order.plan_change_id {
        Some(change) => Some(plan_changes::subscription_of(conn, change).await?),
        None => s::table.filter(s::order_id.eq(id)).select(s::id).first(conn).await.optional()?,
    };
    let mut v = OrderView::new(order, sub);
    v.refunds = refunds::of_orders(conn, &[v.order.id.clone()]).await?;
    Ok(v)
}

/// Filters of ListOrders.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub user_id: Option<UserId>,
    pub status: Option<Status>,
    pub payment_id: Option<String>,
}

/// A page of orders, newest first (keyset on seq), with their subscriptions
/// and refunds, and the seq to continue after when more follow.
pub async fn list_orders(
    conn: &mut Conn,
    f: &OrderFilter,
    page_size: i64,
    after: Option<i64>,
) -> Result<(Vec<OrderView>, Option<i64>)> {
    use orders_table as o;
    use plan_changes_table as pc;
    use subscriptions_table as s;
    let mut q = o::table
        .left_join(s::table.on(s::order_id.eq(o::id.nullable())))
        .left_join(pc::table.on(o::plan_change_id.eq(pc::id.nullable())))
        .select((Order::as_select(), s::id.nullable(), pc::subscription_id.nullable()))
        .into_boxed();
    if let Some(u) = &f.user_id {
        q = q.filter(o::user_id.eq(u.as_str()));
    }
    if let Some(st) = f.status {
        q = q.filter(o::status.eq(st));
    }
    if let Some(p) = &f.payment_id {
        q = q.filter(o::payment_id.eq(p));
    }
    if let Some(seq) = after {
        q = q.filter(o::seq.lt(seq));
    }
    let rows: Vec<(Order, Option<Uuid>, Option<Uuid>)> = q.order(o::seq.desc()).limit(page_size + 1).load(conn).await?;
    let mut rows: Vec<(Order, Option<Uuid>)> = rows.into_iter().map(|(o, bought, changed)| (o, bought.or(changed))).collect();
    let next = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last().map(|(o, _)| o.seq)
    } else {
        None
    };
    let ids: Vec<String> = rows.iter().map(|(o, _)| o.id.clone()).collect();
    let mut refunds = refunds::of_orders(conn, &ids).await?;
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

/// A subscription with an open renewal order of it, if any (the conversion
/// shows it only when it renews the period that follows the current one).
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    pub subscription: Subscription,
    pub renewal: Option<Order>,
    /// Its open plan change (docs/design.md, "Plan changes"), shown while
    /// it is live.
    pub pending_change: Option<plan_changes::ChangeView>,
}

/// The subscriptions with their open renewal orders.
async fn with_renewals(conn: &mut Conn, subs: Vec<Subscription>) -> Result<Vec<SubscriptionView>> {
    let ids: Vec<Uuid> = subs.iter().map(|s| s.id).collect();
    let renewals = orders::open_renewals(conn, &ids).await?;
    let live: Vec<Uuid> = subs.iter().filter(|s| s.status.is_live()).map(|s| s.id).collect();
    let changes = if live.is_empty() { Vec::new() } else { plan_changes::open_of(conn, &live).await? };
    Ok(subs
        .into_iter()
        .map(|s| {
            let renewal = renewals.iter().find(|o| o.renews_subscription_id == Some(s.id)).cloned();
            let pending_change = changes.iter().find(|c| c.change.subscription_id == s.id).cloned();
            SubscriptionView { subscription: s, renewal, pending_change }
        })
        .collect())
}

/// One subscription with its open renewal order.
pub async fn subscription_of(conn: &mut Conn, s: Subscription) -> Result<SubscriptionView> {
    let renewal = orders::open_renewals(conn, &[s.id]).await?.into_iter().next();
    let pending_change = if s.status.is_live() { plan_changes::open_of(conn, &[s.id]).await?.into_iter().next() } else { None };
    Ok(SubscriptionView { subscription: s, renewal, pending_change })
}

/// One subscription as GetSubscription shows it: past its period end it
/// reads as the period now open would be.
pub async fn subscription(conn: &mut Conn, id: Uuid, now: DateTime<Utc>) -> Result<SubscriptionView> {
    let s = subscriptions::get(conn, id).await?;
    let s = subscriptions::as_of(conn, s, now).await?;
    subscription_of(conn, s).await
}

/// A page of a user's subscriptions (see [`subscriptions::list_for_user`])
/// with their open renewal orders, each as GetSubscription shows it (past
/// its period end: the period now open), so both show the same etag. Only
/// the user's one live subscription can be due: at most one more query.
pub async fn subscriptions_of_user(
    conn: &mut Conn,
    user_id: &UserId,
    page_size: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
    now: DateTime<Utc>,
) -> Result<(Vec<SubscriptionView>, Option<(DateTime<Utc>, Uuid)>)> {
    let (stored, next) = subscriptions::list_for_user(conn, user_id, page_size, after).await?;
    let mut subs = Vec::with_capacity(stored.len());
    for s in stored {
        subs.push(subscriptions::as_of(conn, s, now).await?);
    }
    Ok((with_renewals(conn, subs).await?, next))
}
