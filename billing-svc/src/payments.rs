//! Payment capture: the one path by which an order becomes PAID and its
//! subscription is created, shared by VerifyPayment, the webhook and
//! reconciliation. Verify and webhook racing into duplicate or missing
//! subscriptions is impossible because the order row is locked for the whole
//! transaction, the order allows one payment id, and subscriptions allow one
//! row per order. A payment that must not buy anything (a late payment of a
//! superseded or cancelled order, a second payment) is recorded as a
//! payment discrepancy in the same transaction, never silently dropped.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::{Conn, Races};
use shared::status::ErrorReason;

use crate::{
    App, Error, Result,
    discrepancies::{self, Discrepancy, Kind, Source},
    gateway::PaymentStatus,
    money::Money,
    orders::{self, Order, OrderId, Status as OrderStatus},
    plan_changes, plans,
    schema::orders as orders_t,
    subscriptions::{self, SavedMethod, Subscription},
};

#[derive(Debug, Clone)]
pub struct Captured {
    pub order: Order,
    pub subscription: Subscription,
    /// The payment had been captured before (retry, webhook, race).
    pub replayed: bool,
}

/// What a gateway payment turned into.
#[derive(Debug, Clone)]
pub enum Capture {
    Captured(Box<Captured>),
    /// Money taken that buys nothing, recorded as an open discrepancy.
    Discrepancy(Discrepancy),
}

/// A payment as a capture path received it.
#[derive(Debug, Clone, Copy)]
pub struct Payment<'a> {
    pub order_id: &'a str,
    pub payment_id: &'a str,
    /// Amount and currency when the gateway told them (webhooks).
    pub paid: Option<Money<'a>>,
    /// The payment method the customer saved with this payment, for
    /// automatic renewals (the gateway's customer and recurring token).
    pub saved_method: Option<&'a SavedMethod>,
    pub source: Source,
}

/// Captures a payment inside the caller's transaction.
pub async fn capture_in_tx(conn: &mut Conn, p: Payment<'_>, now: DateTime<Utc>) -> Result<Capture> {
    let capture = decide(conn, p, now, Mode::Capture).await?;
    if let Capture::Captured(c) = &capture {
        if !c.replayed {
            tracing::info!(order_id = %c.order.id, subscription_id = %c.subscription.id, "payment captured");
        }
        shared::metrics::payment_captured(c.replayed);
    }
    Ok(capture)
}

/// What capturing `p` now would do, without doing it: the capture runs in a
/// transaction that is always rolled back, so the answer follows exactly
/// the rules of [`capture_in_tx`]. For a payment that is only authorized at
/// the gateway, which billing captures there only if the order can take it
/// (docs/design.md, Invariants 28). Nothing is recorded, not even a
/// discrepancy: a refusal here is not money billing holds.
pub async fn preview(conn: &mut Conn, p: Payment<'_>, now: DateTime<Utc>) -> Result<Capture> {
    use diesel_async::{AsyncConnection, TransactionManager};
    type Tm = <Conn as AsyncConnection>::TransactionManager;
    Tm::begin_transaction(conn).await?;
    let verdict = decide(conn, p, now, Mode::Preview).await;
    // Rolled back whatever the verdict: a preview never writes.
    Tm::rollback_transaction(conn).await?;
    verdict
}

/// Whether [`decide`] runs for real or inside [`preview`]'s rolled-back
/// transaction (where a refusal is neither logged nor recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Capture,
    Preview,
}

/// The rules of a capture (see the module doc), writing what they decide.
async fn decide(conn: &mut Conn, p: Payment<'_>, now: DateTime<Utc>, mode: Mode) -> Result<Capture> {
    let discrepancy = |kind, order_id: Option<&str>, detail: String| Discrepancy {
        kind,
        order_id: order_id.map(str::to_owned),
        payment_id: p.payment_id.to_owned(),
        detail,
    };
    let order = orders::lock_optional(conn, p.order_id).await?;
    // Once refused, a payment stays refused, whichever path meets it again.
    if let Some(d) = discrepancies::of_payment(conn, p.payment_id).await? {
        return Ok(Capture::Discrepancy(d));
    }
    let Some(order) = order else {
        let d = discrepancy(Kind::UnknownOrder, None, format!("unknown order {}", p.order_id));
        return refuse(conn, d, p, now, mode).await;
    };
    if let Some(paid) = p.paid
        && !paid.same_as(order.amount())
    {
        let detail = format!("paid {paid} but order {} is {}", order.id, order.amount());
        return refuse(conn, discrepancy(Kind::AmountMismatch, Some(&order.id), detail), p, now, mode).await;
    }
    if order.status == OrderStatus::Cancelled {
        let why = if order.renews_subscription_id.is_some() {
            "its subscription ended or was replaced before the renewal was paid"
        } else if order.plan_change_id.is_some() {
            "its plan change was withdrawn or replaced by another change before it was paid"
        } else {
            "its checkout session expired and was cleaned up"
        };
        let detail = format!("order {} was cancelled ({why})", order.id);
        return refuse(conn, discrepancy(Kind::OrderCancelled, Some(&order.id), detail), p, now, mode).await;
    }
    if let Some(sub_id) = order.renews_subscription_id {
        return renew(conn, order, sub_id, p, now, mode).await;
    }
    if let Some(change_id) = order.plan_change_id {
        return change_plan(conn, order, change_id, p, now, mode).await;
    }
    if order.is_paid() {
        if order.payment_id.as_deref() != Some(p.payment_id) {
            let detail = format!("order {} was already paid with another payment", order.id);
            return refuse(conn, discrepancy(Kind::SecondPayment, Some(&order.id), detail), p, now, mode).await;
        }
        return match subscriptions::by_order(conn, &order.id).await? {
            Some(subscription) => Ok(Capture::Captured(Box::new(Captured { order, subscription, replayed: true }))),
            // Paid without a subscription can only come from outside this
            // code (manual edits, restores): the same rules as a capture.
            None => subscribe(conn, order, p, now, true, mode).await,
        };
    }
    payment_unused(conn, p.payment_id).await?;
    subscribe(conn, order, p, now, false, mode).await
}

/// Refuses a payment id that already paid another order. Checked first so
/// the common case does not abort the transaction with a unique violation
/// (the constraint still guards the race).
async fn payment_unused(conn: &mut Conn, payment_id: &str) -> Result<()> {
    let used_by: Option<String> =
        orders_t::table.filter(orders_t::payment_id.eq(payment_id)).select(orders_t::id).first(conn).await.optional()?;
    if used_by.is_some() {
        return Err(Error::precondition(
            ErrorReason::PaymentUsed,
            format!("payment:{payment_id}"),
            "this payment id already paid another order",
        ));
    }
    Ok(())
}

async fn mark_paid(conn: &mut Conn, order_id: &str, payment_id: &str, now: DateTime<Utc>) -> Result<Order> {
    Ok(diesel::update(orders_t::table.find(order_id))
        .set((
            orders_t::status.eq(OrderStatus::Paid),
            orders_t::payment_id.eq(payment_id),
            orders_t::paid_at.eq(now),
            orders_t::next_charge_at.eq(None::<DateTime<Utc>>),
            orders_t::updated_at.eq(now),
        ))
        .returning(Order::as_returning())
        .get_result(conn)
        // A unique violation here is a concurrent capture of this payment
        // id on another order: retryable; the retry's pre-check answers
        // PAYMENT_USED without aborting the transaction.
        .await?)
}

/// A discrepancy of `kind` for payment `p` of `order`.
fn of_order(kind: Kind, order: &Order, p: &Payment<'_>, detail: String) -> Discrepancy {
    Discrepancy { kind, order_id: Some(order.id.clone()), payment_id: p.payment_id.to_owned(), detail }
}

/// A payment of an already paid `order` (a `what`) that is not the one that
/// paid it: SECOND_PAYMENT. None for the same payment (a replay).
fn second_payment(order: &Order, p: &Payment<'_>, what: &str) -> Option<Discrepancy> {
    (order.payment_id.as_deref() != Some(p.payment_id))
        .then(|| of_order(Kind::SecondPayment, order, p, format!("{what} {} was already paid with another payment", order.id)))
}

/// Captures the payment of a renewal order (order row locked): the order
/// becomes PAID and, once the period it pays for has begun, that period
/// opens at the old period end with the plan's credits (a PAST_DUE
/// subscription is ACTIVE again). Paid early, the period opens when the
/// current one ends. A subscription that is no longer live, or has moved
/// to another period, is not renewed: the payment is a discrepancy.
async fn renew(
    conn: &mut Conn,
    order: Order,
    sub_id: uuid::Uuid,
    p: Payment<'_>,
    now: DateTime<Utc>,
    mode: Mode,
) -> Result<Capture> {
    if order.is_paid() {
        if let Some(d) = second_payment(&order, &p, "renewal order") {
            return refuse(conn, d, p, now, mode).await;
        }
        // A replayed capture is also where a renewal that counts as paid
        // again (its refund failed) is seen: reopen the period if due.
        let sub = subscriptions::lock(conn, sub_id).await?;
        subscriptions::roll_if_due(conn, &sub, now).await?;
        let subscription = subscriptions::get(conn, sub_id).await?;
        return Ok(Capture::Captured(Box::new(Captured { order, subscription, replayed: true })));
    }
    payment_unused(conn, p.payment_id).await?;
    // Lock order: order row (held), then the subscription.
    let sub = subscriptions::lock(conn, sub_id).await?;
    if !sub.status.is_live() || order.renews_period_start != Some(sub.period_end) {
        let detail = format!(
            "renewal order {} is for a period subscription {} no longer renews into (it is {}, its period ends {})",
            order.id, sub.id, sub.status, sub.period_end
        );
        return refuse(conn, of_order(Kind::OrderSuperseded, &order, &p, detail), p, now, mode).await;
    }
    let order = mark_paid(conn, &order.id, p.payment_id, now).await?;
    if let Some(m) = p.saved_method {
        subscriptions::save_method(conn, sub.id, m, order.mandate_limits(), now).await?;
    }
    subscriptions::roll_if_due(conn, &sub, now).await?;
    let subscription = subscriptions::get(conn, sub.id).await?;
    Ok(Capture::Captured(Box::new(Captured { order, subscription, replayed: false })))
}

/// Captures the payment of an upgrade's prorated order (order row locked):
/// the order becomes PAID and the subscription moves to the new plan now
/// (docs/design.md, "Plan changes"), if it is still what the charge was
/// priced for; otherwise the payment is a refundable discrepancy and
/// nothing else changes.
async fn change_plan(
    conn: &mut Conn,
    order: Order,
    change_id: uuid::Uuid,
    p: Payment<'_>,
    now: DateTime<Utc>,
    mode: Mode,
) -> Result<Capture> {
    if order.is_paid() {
        if let Some(d) = second_payment(&order, &p, "plan change order") {
            return refuse(conn, d, p, now, mode).await;
        }
        let sub_id = plan_changes::subscription_of(conn, change_id).await?;
        let subscription = subscriptions::get(conn, sub_id).await?;
        return Ok(Capture::Captured(Box::new(Captured { order, subscription, replayed: true })));
    }
    payment_unused(conn, p.payment_id).await?;
    match plan_changes::take_effect(conn, change_id, now).await? {
        Ok(subscription) => {
            let order = mark_paid(conn, &order.id, p.payment_id, now).await?;
            Ok(Capture::Captured(Box::new(Captured { order, subscription, replayed: false })))
        }
        Err(plan_changes::Superseded(why)) => {
            let detail = format!("plan change order {}: {why}", order.id);
            refuse(conn, of_order(Kind::OrderSuperseded, &order, &p, detail), p, now, mode).await
        }
    }
}

/// Marks `order` PAID (unless it is already) and creates its subscription,
/// unless a newer purchase of the user exists (it bought the live
/// subscription, or it is still open): then the payment is a discrepancy
/// and nothing else changes.
async fn subscribe(
    conn: &mut Conn,
    order: Order,
    p: Payment<'_>,
    now: DateTime<Utc>,
    already_paid: bool,
    mode: Mode,
) -> Result<Capture> {
    // Lock order: order row (held), then the user's live subscription.
    let live = subscriptions::lock_live(conn, &order.user_id).await?;
    if let Some(newer) = newer_order(conn, &order, live.as_ref()).await? {
        let detail = format!("order {} was superseded by order {newer}, a newer purchase of the same user", order.id);
        let d = Discrepancy {
            kind: Kind::OrderSuperseded,
            order_id: Some(order.id.clone()),
            payment_id: p.payment_id.to_owned(),
            detail,
        };
        return refuse(conn, d, p, now, mode).await;
    }
    let order = if already_paid { order } else { mark_paid(conn, &order.id, p.payment_id, now).await? };
    // The version the order was priced at: what the customer bought.
    let version = plans::version(conn, &order.plan_id, order.plan_version).await?;
    let saved = p.saved_method.map(|m| (m, order.mandate_limits()));
    let subscription = subscriptions::create_paid(conn, &order.user_id, &version, &order.id, live, saved, now).await?;
    Ok(Capture::Captured(Box::new(Captured { order, subscription, replayed: false })))
}

/// A purchase of the same user created after `order` that is still open or
/// paid (not cancelled): the order that bought `live` when it is newer, or a
/// newer order not paid yet. Two purchases open at once are one customer
/// changing their mind (a plan change, a second checkout), so only the
/// newest may buy a subscription: paying the older one first must not buy a
/// plan that the newer one's payment then replaces, both kept
/// (docs/design.md, Invariants 7). Renewal orders pay periods, not plans,
/// and are not purchases here.
async fn newer_order(conn: &mut Conn, order: &Order, live: Option<&Subscription>) -> Result<Option<String>> {
    if let Some(live_order) = live.and_then(|s| s.order_id.as_deref()) {
        let seq: i64 = orders_t::table.find(live_order).select(orders_t::seq).first(conn).await?;
        if seq > order.seq {
            return Ok(Some(live_order.to_owned()));
        }
    }
    Ok(orders_t::table
        .filter(orders_t::user_id.eq(&order.user_id))
        .filter(orders_t::seq.gt(order.seq))
        .filter(orders_t::renews_subscription_id.is_null())
        .filter(orders_t::plan_change_id.is_null())
        .filter(orders_t::status.ne(OrderStatus::Cancelled))
        .order(orders_t::seq.desc())
        .select(orders_t::id)
        .first(conn)
        .await
        .optional()?)
}

async fn refuse(conn: &mut Conn, d: Discrepancy, p: Payment<'_>, now: DateTime<Utc>, mode: Mode) -> Result<Capture> {
    if mode == Mode::Capture {
        discrepancies::record(conn, &d, p.paid, p.source, now).await?;
    }
    Ok(Capture::Discrepancy(d))
}

/// Runs a capture in its own transaction, retrying lost races. A unique
/// violation is a concurrent capture of the same payment id, which the next
/// attempt's pre-check answers.
pub async fn capture(conn: &mut Conn, p: Payment<'_>, now: DateTime<Utc>) -> Result<Capture> {
    shared::retry_tx!(conn, Races::ConflictsAndUnique, |c| capture_in_tx(c, p, now).await)
}

/// VerifyPayment: checks the signature against the *stored* order id, then
/// asks the gateway for its record of the payment (with no pooled
/// connection held) and captures. A bad signature writes nothing; neither
/// does a payment the gateway places on another order
/// (FAILED_PRECONDITION PAYMENT_ORDER_MISMATCH) or has not captured yet
/// (FAILED_PRECONDITION PAYMENT_NOT_CAPTURED: verify again later). The
/// amount and currency the gateway reports go to the capture, which records
/// a mismatch with the order as a discrepancy; a payment that buys nothing is
/// recorded (committed) and answered FAILED_PRECONDITION. A gateway that
/// keeps no readable records (the sandbox) leaves the signature as the proof.
pub async fn verify(app: &App, order_id: &OrderId, payment_id: &str, signature: &str) -> Result<Captured> {
    let order = {
        let mut conn = app.conn().await?;
        orders::get(&mut conn, order_id.as_str()).await?
    };
    if !app.gateway.payment_signature_valid(&order.id, payment_id, signature) {
        tracing::warn!(order_id = %order.id, "payment signature mismatch");
        return Err(Error::BadSignature);
    }
    let at_gateway = app.gateway.fetch_payment(payment_id).await?;
    if let Some(p) = &at_gateway {
        if p.order_id.as_deref() != Some(order.id.as_str()) {
            tracing::warn!(order_id = %order.id, payment_id, gateway_order_id = ?p.order_id, "payment belongs to another order");
            return Err(Error::precondition(
                ErrorReason::PaymentOrderMismatch,
                format!("payment:{payment_id}"),
                format!("the gateway records this payment against another order than {}", order.id),
            ));
        }
        if p.status != PaymentStatus::Captured {
            let gateway_status = format!("{:?}", p.status).to_lowercase();
            return Err(Error::precondition_with(
                ErrorReason::PaymentNotCaptured,
                format!("payment:{payment_id}"),
                format!("the gateway reports this payment as {gateway_status}, not captured; verify again later"),
                vec![("gateway_status", gateway_status)],
            ));
        }
    }
    let paid = at_gateway.as_ref().map(|p| Money { minor: p.amount_minor, currency: &p.currency });
    let saved = at_gateway.as_ref().and_then(|p| p.saved_method.clone());
    let payment = Payment { order_id: &order.id, payment_id, paid, saved_method: saved.as_ref(), source: Source::VerifyPayment };
    let mut conn = app.conn().await?;
    match capture(&mut conn, payment, app.clock.now()).await? {
        Capture::Captured(c) => Ok(*c),
        Capture::Discrepancy(d) => Err(d.to_error()),
    }
}
