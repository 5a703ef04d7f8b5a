//! Gateway orders: one per checkout session (the natural idempotency key),
//! and one renewal order per (subscription, period it pays for).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use crate::{
    App, Error, Result,
    gateway::{Mandate, NewOrder},
    plans,
    schema::{gateway_customers, orders, subscriptions},
    subscriptions::{MandateLimits, Status as SubStatus},
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

/// How long a card mandate registered with a purchase lasts. The card's own
/// expiry ends it earlier; a new purchase registers a new one.
const MANDATE_YEARS: u32 = 10;

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

/// Creates the order of a checkout session, or returns the existing one.
/// The gateway is called with no pooled connection held; two concurrent
/// first calls for one session may each create a gateway order, but only one
/// is stored and handed out (the other is never paid and lapses at the
/// gateway).
pub async fn create(app: &App, session_id: Uuid, user_id: &str, plan_id: &str) -> Result<Order> {
    let plan = {
        let mut conn = app.conn().await?;
        if let Some(existing) = by_session(&mut conn, session_id).await? {
            return reuse(existing, session_id, user_id, plan_id);
        }
        if let Some(renewal) = renewal_to_pay(&mut conn, user_id, plan_id).await? {
            return Ok(renewal);
        }
        plans::get(&mut conn, plan_id).await?
    };
    if !plan.active || plan.price_minor <= 0 {
        return Err(Error::precondition(
            "PLAN_NOT_PURCHASABLE",
            format!("plan:{plan_id}"),
            format!("plan {plan_id} cannot be bought"),
        ));
    }
    let receipt = session_id.to_string();
    let now = app.clock.now();
    // With RAZORPAY_CARD_MANDATES the purchase registers a card mandate for
    // automatic renewals, limited to the price the customer agrees to now: a
    // later price above it is paid through a renewal checkout, never charged
    // to the mandate. Such an order can only be paid by card, so without the
    // setting it is a plain order any method pays, renewed through checkout.
    let customer = if app.config.gateway.card_mandates { customer_of(app, user_id, now).await? } else { None };
    let limits = customer.as_ref().map(|_| MandateLimits {
        max_amount_minor: plan.price_minor,
        expires_at: now.checked_add_months(chrono::Months::new(12 * MANDATE_YEARS)).unwrap_or(now),
    });
    let mandate = customer.as_deref().zip(limits).map(|(customer_id, l)| Mandate {
        customer_id,
        max_amount_minor: l.max_amount_minor,
        expire_at: l.expires_at.timestamp(),
    });
    let at_gateway = app
        .gateway
        .create_order(&NewOrder {
            amount_minor: plan.price_minor,
            currency: &plan.currency,
            receipt: &receipt,
            user_id,
            plan_id: &plan.id,
            mandate,
        })
        .await?;
    let mut conn = app.conn().await?;
    let inserted: Option<Order> = diesel::insert_into(orders::table)
        .values((
            orders::id.eq(&at_gateway.id),
            orders::checkout_session_id.eq(session_id),
            orders::user_id.eq(user_id),
            orders::plan_id.eq(&plan.id),
            orders::amount_minor.eq(plan.price_minor),
            orders::currency.eq(&plan.currency),
            orders::mandate_max_amount_minor.eq(limits.map(|l| l.max_amount_minor)),
            orders::mandate_expires_at.eq(limits.map(|l| l.expires_at)),
            orders::created_at.eq(now),
            orders::updated_at.eq(now),
        ))
        .on_conflict(orders::checkout_session_id)
        .do_nothing()
        .returning(Order::as_returning())
        .get_result(&mut conn)
        .await
        .optional()?;
    match inserted {
        Some(order) => Ok(order),
        None => match by_session(&mut conn, session_id).await? {
            Some(existing) => reuse(existing, session_id, user_id, plan_id),
            None => Err(Error::from(shared::db::DbError::Conflict(format!("order of {session_id} changed")))),
        },
    }
}

/// The gateway's customer of `user_id` (stored once per user, created at the
/// gateway the first time, with no pooled connection held), or None when the
/// gateway registers no mandates. A customer the gateway refuses to create
/// leaves the purchase a plain order: its renewals are paid through checkout.
async fn customer_of(app: &App, user_id: &str, now: DateTime<Utc>) -> Result<Option<String>> {
    let stored = gateway_customers::table.find(user_id.to_owned()).select(gateway_customers::customer_id);
    if let Some(id) = stored.clone().first::<String>(&mut *app.conn().await?).await.optional()? {
        return Ok(Some(id));
    }
    let created = match app.gateway.create_customer(user_id).await {
        Ok(Some(id)) => id,
        Ok(None) => return Ok(None),
        Err(crate::gateway::GatewayError::Refused { code, message }) => {
            tracing::warn!(user_id, %code, %message, "the gateway refused to create a customer; no recurring mandate");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mut conn = app.conn().await?;
    // Two first purchases at once: the first stored customer is the one.
    diesel::insert_into(gateway_customers::table)
        .values((
            gateway_customers::user_id.eq(user_id),
            gateway_customers::customer_id.eq(&created),
            gateway_customers::created_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await?;
    Ok(Some(stored.first::<String>(&mut conn).await?))
}

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

async fn by_session(conn: &mut Conn, session_id: Uuid) -> Result<Option<Order>> {
    Ok(orders::table
        .filter(orders::checkout_session_id.eq(session_id))
        .select(Order::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The session's existing order, if it is the same purchase and can still
/// be paid.
fn reuse(existing: Order, session_id: Uuid, user_id: &str, plan_id: &str) -> Result<Order> {
    let subject = format!("checkout_session:{session_id}");
    if existing.user_id != user_id || existing.plan_id != plan_id {
        return Err(Error::precondition(
            "ORDER_EXISTS",
            subject,
            "this checkout session already has an order for another user or plan",
        ));
    }
    // Only an order that can still be paid is handed out: a payment of a
    // cancelled order would be refused, and a paid one is spent.
    match existing.status {
        Status::Cancelled => Err(Error::precondition(
            "ORDER_CANCELLED",
            subject,
            format!(
                "the order of checkout session {session_id} was cancelled; start a new checkout (with a new idempotency key)"
            ),
        )),
        Status::Paid => {
            Err(Error::precondition("ORDER_PAID", subject, format!("the order of checkout session {session_id} is already paid")))
        }
        Status::Created => Ok(existing),
    }
}

/// A renewal checkout: a checkout for the plan of the user's live
/// subscription while its renewal order is open pays that order (the period
/// it renews), instead of buying a new subscription. The order belongs to
/// its subscription, not to a checkout session: every checkout the customer
/// comes back with (a new one, a recovered one, a plan change back) gets the
/// same order, and billing records none of them on it, so it never points
/// at a session checkout did not store (docs/design.md, Invariants 26).
async fn renewal_to_pay(conn: &mut Conn, user_id: &str, plan_id: &str) -> Result<Option<Order>> {
    Ok(orders::table
        .inner_join(subscriptions::table.on(subscriptions::id.nullable().eq(orders::renews_subscription_id)))
        .filter(subscriptions::user_id.eq(user_id))
        .filter(subscriptions::plan_id.eq(plan_id))
        .filter(subscriptions::status.eq_any([SubStatus::Active, SubStatus::PastDue]))
        .filter(orders::renews_period_start.eq(subscriptions::period_end.nullable()))
        .filter(orders::status.eq(Status::Created))
        .select(Order::as_select())
        .first(conn)
        .await
        .optional()?)
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

/// Cancels the CREATED orders among `order_ids` (each under its row lock: a
/// concurrent capture either finishes first and the order stays PAID, or
/// finds it CANCELLED) and returns the orders as they are now. A renewal
/// order belongs to its subscription, not to the checkout sessions that
/// offered it: it is never cancelled here (it is still owed, and other
/// checkouts may offer it), only detached from a session recorded on it
/// before renewal checkouts stopped recording one, and left out of the
/// answer, as it is not the retired or deleted session's to cancel.
pub async fn cancel_unpaid(conn: &mut Conn, order_ids: &[String], now: DateTime<Utc>) -> Result<Vec<OrderView>> {
    let detached: Vec<String> = diesel::update(
        orders::table
            .filter(orders::id.eq_any(order_ids))
            .filter(orders::status.eq(Status::Created))
            .filter(orders::renews_subscription_id.is_not_null()),
    )
    .set((orders::checkout_session_id.eq(None::<Uuid>), orders::updated_at.eq(now)))
    .returning(orders::id)
    .get_results(conn)
    .await?;
    diesel::update(
        orders::table
            .filter(orders::id.eq_any(order_ids))
            .filter(orders::status.eq(Status::Created))
            .filter(orders::renews_subscription_id.is_null()),
    )
    .set((orders::status.eq(Status::Cancelled), orders::updated_at.eq(now)))
    .execute(conn)
    .await?;
    let remaining: Vec<String> = order_ids.iter().filter(|id| !detached.contains(id)).cloned().collect();
    batch_get(conn, &remaining, &[]).await
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
