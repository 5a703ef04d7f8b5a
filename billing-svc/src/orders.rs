//! Gateway orders: one per checkout session (the natural idempotency key).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use crate::{
    App, Error, Result,
    gateway::NewOrder,
    plans,
    schema::{orders, subscriptions},
};

pub const MAX_BATCH: usize = 500;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
pub struct Order {
    pub id: String,
    pub checkout_session_id: Uuid,
    pub user_id: String,
    pub plan_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub payment_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Creation order, strictly increasing.
    pub seq: i64,
}

impl Order {
    pub fn is_paid(&self) -> bool {
        self.status == "PAID"
    }
}

/// An order with the subscription its payment created, if any.
#[derive(Debug, Clone)]
pub struct OrderView {
    pub order: Order,
    pub subscription_id: Option<Uuid>,
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
    let at_gateway = app
        .gateway
        .create_order(&NewOrder {
            amount_minor: plan.price_minor,
            currency: &plan.currency,
            receipt: &receipt,
            user_id,
            plan_id: &plan.id,
        })
        .await?;
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    let inserted: Option<Order> = diesel::insert_into(orders::table)
        .values((
            orders::id.eq(&at_gateway.id),
            orders::checkout_session_id.eq(session_id),
            orders::user_id.eq(user_id),
            orders::plan_id.eq(&plan.id),
            orders::amount_minor.eq(plan.price_minor),
            orders::currency.eq(&plan.currency),
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
    match existing.status.as_str() {
        "CANCELLED" => Err(Error::precondition(
            "ORDER_CANCELLED",
            subject,
            format!(
                "the order of checkout session {session_id} was cancelled; start a new checkout (with a new idempotency key)"
            ),
        )),
        "PAID" => {
            Err(Error::precondition("ORDER_PAID", subject, format!("the order of checkout session {session_id} is already paid")))
        }
        _ => Ok(existing),
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
    Ok(rows.into_iter().map(|(order, subscription_id)| OrderView { order, subscription_id }).collect())
}

/// Cancels the CREATED orders among `order_ids` (each under its row lock: a
/// concurrent capture either finishes first and the order stays PAID, or
/// finds it CANCELLED) and returns the orders as they are now.
pub async fn cancel_unpaid(conn: &mut Conn, order_ids: &[String], now: DateTime<Utc>) -> Result<Vec<OrderView>> {
    diesel::update(orders::table.filter(orders::id.eq_any(order_ids)).filter(orders::status.eq("CREATED")))
        .set((orders::status.eq("CANCELLED"), orders::updated_at.eq(now)))
        .execute(conn)
        .await?;
    batch_get(conn, order_ids, &[]).await
}
