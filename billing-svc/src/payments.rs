//! Payment capture: the one path by which an order becomes PAID and its
//! subscription is created, shared by VerifyPayment and the webhook. Seed 001
//! (verify and webhook racing into duplicate or missing subscriptions) is
//! impossible because the order row is locked for the whole transaction,
//! the order allows one payment id, and subscriptions allow one row per order.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::db::Conn;

use crate::{
    App, Error, Result,
    error::TX_ATTEMPTS,
    orders::{self, Order},
    plans,
    schema::orders as orders_t,
    subscriptions::{self, Subscription},
};

#[derive(Debug, Clone)]
pub struct Captured {
    pub order: Order,
    pub subscription: Subscription,
    /// The payment had been captured before (retry, webhook, race).
    pub replayed: bool,
}

/// Captures `payment_id` for `order_id` inside the caller's transaction.
pub async fn capture_in_tx(conn: &mut Conn, order_id: &str, payment_id: &str, now: DateTime<Utc>) -> Result<Captured> {
    let order = orders::lock(conn, order_id).await?;
    if order.status == "CANCELLED" {
        tracing::error!(order_id, payment_id, "a payment arrived for a cancelled order; needs a refund");
        return Err(Error::FailedPrecondition {
            kind: "ORDER_CANCELLED",
            subject: format!("order:{order_id}"),
            description: "the order was cancelled (its checkout session expired and was cleaned up)".into(),
        });
    }
    if order.is_paid() {
        if order.payment_id.as_deref() != Some(payment_id) {
            tracing::error!(order_id, payment_id, "a second payment arrived for a paid order; needs a refund");
            return Err(Error::FailedPrecondition {
                kind: "ORDER_ALREADY_PAID",
                subject: format!("order:{order_id}"),
                description: "order was already paid with another payment".into(),
            });
        }
        let subscription = match subscriptions::by_order(conn, &order.id).await? {
            Some(s) => s,
            // Paid without a subscription can only come from outside this code
            // (manual edits, restores); the capture path repairs it.
            None => {
                let plan = plans::get(conn, &order.plan_id).await?;
                subscriptions::create_paid(conn, &order.user_id, &plan, &order.id, now).await?
            }
        };
        shared::metrics::payment_captured(true);
        return Ok(Captured { order, subscription, replayed: true });
    }
    // Checked first so the common case does not abort the transaction with a
    // unique violation (the constraint still guards the race).
    let used_by: Option<String> =
        orders_t::table.filter(orders_t::payment_id.eq(payment_id)).select(orders_t::id).first(conn).await.optional()?;
    if used_by.is_some() {
        return Err(payment_used(payment_id));
    }
    let order: Order = diesel::update(orders_t::table.find(&order.id))
        .set((
            orders_t::status.eq("PAID"),
            orders_t::payment_id.eq(payment_id),
            orders_t::paid_at.eq(now),
            orders_t::updated_at.eq(now),
        ))
        .returning(Order::as_returning())
        .get_result(conn)
        // A unique violation here is a concurrent capture of this payment id
        // on another order: retryable; the retry's pre-check answers
        // PAYMENT_USED without aborting the transaction.
        .await?;
    let plan = plans::get(conn, &order.plan_id).await?;
    let subscription = subscriptions::create_paid(conn, &order.user_id, &plan, &order.id, now).await?;
    tracing::info!(order_id = %order.id, subscription_id = %subscription.id, "payment captured");
    shared::metrics::payment_captured(false);
    Ok(Captured { order, subscription, replayed: false })
}

fn payment_used(payment_id: &str) -> Error {
    Error::FailedPrecondition {
        kind: "PAYMENT_USED",
        subject: format!("payment:{payment_id}"),
        description: "this payment id already paid another order".into(),
    }
}

/// Runs a capture in its own transaction, retrying lost races.
pub async fn capture(conn: &mut Conn, order_id: &str, payment_id: &str, now: DateTime<Utc>) -> Result<Captured> {
    let mut attempt = 1;
    loop {
        match conn.transaction(async |c| capture_in_tx(c, order_id, payment_id, now).await).await {
            Err(e) if e.is_retryable() && attempt < TX_ATTEMPTS => attempt += 1,
            other => return other,
        }
    }
}

/// VerifyPayment: checks the signature against the *stored* order id, then
/// captures. A bad signature writes nothing.
pub async fn verify(app: &App, order_id: &str, payment_id: &str, signature: &str) -> Result<Captured> {
    let mut conn = app.conn().await?;
    let order = orders::get(&mut conn, order_id).await?;
    if !app.gateway.payment_signature_valid(&order.id, payment_id, signature) {
        tracing::warn!(order_id = %order.id, "payment signature mismatch");
        return Err(Error::BadSignature);
    }
    let now = app.clock.now();
    let result = capture(&mut conn, &order.id, payment_id, now).await;
    if let Err(Error::FailedPrecondition { kind, description, .. }) = &result {
        // A second, validly signed payment for a paid order (or a payment id
        // reused across orders): money may have been taken twice. Record it
        // where reconciliation looks for discrepancies.
        record_discrepancy(&mut conn, &order.id, payment_id, kind, description, now).await?;
    }
    result
}

async fn record_discrepancy(
    conn: &mut Conn,
    order_id: &str,
    payment_id: &str,
    kind: &str,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    use crate::schema::webhook_events as ev;
    diesel::insert_into(ev::table)
        .values((
            ev::event_id.eq(format!("verify:{order_id}:{payment_id}")),
            ev::event_type.eq(format!("verify_payment.{}", kind.to_ascii_lowercase())),
            ev::body.eq(Vec::<u8>::new()),
            ev::order_id.eq(order_id),
            ev::outcome.eq("DISCREPANCY"),
            ev::detail.eq(format!("{detail} (payment {payment_id})")),
            ev::received_at.eq(now),
        ))
        .on_conflict(ev::event_id)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}
