//! Creating the order of a checkout session: a new gateway order (with the
//! customer a card mandate needs), the session's existing one, or the open
//! renewal order a renewal checkout pays. Above orders and subscriptions,
//! as it asks both (docs/design.md, Components).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::{
    db::Conn,
    ids::{PlanId, UserId},
    status::ErrorReason,
};
use uuid::Uuid;

use crate::{
    App, Error, Result,
    gateway::{Mandate, NewOrder},
    orders::{MandateLimits, Order, Status},
    plans,
    schema::{gateway_customers, orders},
};

/// How long a card mandate registered with a purchase lasts. The card's own
/// expiry ends it earlier; a new purchase registers a new one.
const MANDATE_YEARS: u32 = 10;

/// CreateOrder's input, checked at the edge.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    pub checkout_session_id: Uuid,
    pub user_id: UserId,
    pub plan_id: PlanId,
}

/// Creates the order of a checkout session, or returns the existing one.
/// The gateway is called with no pooled connection held; two concurrent
/// first calls for one session may each create a gateway order, but only one
/// is stored and handed out (the other is never paid and lapses at the
/// gateway).
pub async fn create(app: &App, r: &OrderRequest) -> Result<Order> {
    let (session_id, user_id, plan_id) = (r.checkout_session_id, r.user_id.as_str(), r.plan_id.as_str());
    let plan = {
        let mut conn = app.conn().await?;
        if let Some(existing) = by_session(&mut conn, session_id).await? {
            return reuse(existing, session_id, user_id, plan_id);
        }
        if let Some(order) = order_to_pay(&mut conn, user_id, plan_id, app.clock.now()).await? {
            return Ok(order);
        }
        plans::get(&mut conn, plan_id).await?
    };
    not_purchasable(&plan)?;
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
        period: plan.period,
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
    // At the price and version read above, which the gateway order carries
    // (a reprice meanwhile does not change what this customer was shown),
    // unless the plan was archived meanwhile: the share lock holds off an
    // archive until the order is in, so none is made after one.
    let inserted: Option<Order> = conn
        .transaction(async |c| {
            not_purchasable(&plans::get_shared(c, plan_id).await?)?;
            Ok::<_, Error>(
                diesel::insert_into(orders::table)
                    .values((
                        orders::id.eq(&at_gateway.id),
                        orders::checkout_session_id.eq(session_id),
                        orders::user_id.eq(user_id),
                        orders::plan_id.eq(&plan.id),
                        orders::plan_version.eq(plan.current_version),
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
                    .get_result(c)
                    .await
                    .optional()?,
            )
        })
        .await?;
    match inserted {
        Some(order) => Ok(order),
        None => match by_session(&mut conn, session_id).await? {
            Some(existing) => reuse(existing, session_id, user_id, plan_id),
            None => Err(Error::from(shared::db::DbError::Conflict(format!("order of {session_id} changed")))),
        },
    }
}

/// FAILED_PRECONDITION `PLAN_NOT_PURCHASABLE` for a plan nobody may buy now:
/// archived (docs/design.md, "Catalogue"), or without a price (the free plan).
pub(crate) fn not_purchasable(plan: &plans::Plan) -> Result<()> {
    let subject = format!("plan:{}", plan.id);
    if !plan.active {
        return Err(Error::precondition(
            ErrorReason::PlanNotPurchasable,
            subject,
            format!("plan {} is archived: no new purchases (existing subscriptions go on)", plan.id),
        ));
    }
    if plan.price_minor <= 0 {
        return Err(Error::precondition(
            ErrorReason::PlanNotPurchasable,
            subject,
            format!("plan {} has no price: it cannot be bought", plan.id),
        ));
    }
    Ok(())
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
            ErrorReason::OrderExists,
            subject,
            "this checkout session already has an order for another user or plan",
        ));
    }
    // Only an order that can still be paid is handed out: a payment of a
    // cancelled order would be refused, and a paid one is spent.
    match existing.status {
        Status::Cancelled => Err(Error::precondition(
            ErrorReason::OrderCancelled,
            subject,
            format!(
                "the order of checkout session {session_id} was cancelled; start a new checkout (with a new idempotency key)"
            ),
        )),
        Status::Paid => Err(Error::precondition(
            ErrorReason::OrderPaid,
            subject,
            format!("the order of checkout session {session_id} is already paid"),
        )),
        Status::Created => Ok(existing),
    }
}

/// The order a checkout of `plan_id` by `user_id` pays instead of buying
/// the plan, in one query:
/// - a renewal checkout: a checkout for the plan of the user's live
///   subscription (or the plan a change scheduled for the period end, which
///   its renewal order charges) while its renewal order is open pays that
///   order (the period it renews), instead of buying a new subscription;
/// - an upgrade checkout: a checkout for the plan an open upgrade of the
///   user's ACTIVE subscription goes to (ChangeSubscriptionPlan IMMEDIATELY)
///   pays that upgrade's prorated order, instead of buying the plan again at
///   its full price (docs/design.md, "Plan changes"); not one priced for a
///   period that has ended (the roll has not cancelled it yet), whose
///   payment would be refused.
///
/// Either order belongs to its subscription or change, not to a checkout
/// session: every checkout the customer comes back with (a new one, a
/// recovered one, a plan change back) gets the same order, and billing
/// records none of them on it, so it never points at a session checkout did
/// not store (docs/design.md, Invariants 26).
async fn order_to_pay(conn: &mut Conn, user_id: &str, plan_id: &str, now: DateTime<Utc>) -> Result<Option<Order>> {
    use diesel::sql_types::{Text, Timestamptz};
    Ok(diesel::sql_query(
        "SELECT o.* FROM subscriptions s JOIN orders o ON o.status = 'CREATED' AND ( \
             (o.renews_subscription_id = s.id AND o.renews_period_start = s.period_end AND (s.plan_id = $2 OR o.plan_id = $2)) \
          OR (s.status = 'ACTIVE' AND o.plan_change_id = (SELECT c.id FROM plan_changes c \
                WHERE c.subscription_id = s.id AND c.status = 'OPEN' AND c.to_plan_id = $2 AND c.period_end > $3))) \
          WHERE s.user_id = $1 AND s.status IN ('ACTIVE', 'PAST_DUE') \
          LIMIT 1",
    )
    .bind::<Text, _>(user_id)
    .bind::<Text, _>(plan_id)
    .bind::<Timestamptz, _>(now)
    .get_result(conn)
    .await
    .optional()?)
}
