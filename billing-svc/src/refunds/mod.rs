//! Refunds of captured payments (docs/design.md, "Refunds"): of an order's
//! payment (RefundPayment) or of a payment that bought nothing (a payment
//! discrepancy, refunded by `reconcile --fix`). One path for both:
//!
//! 1. under the order's row lock (the discrepancy's, for a payment of no
//!    known order) the refund is checked against what is left and recorded
//!    PENDING, so racing refunds never add up to more than was captured,
//!    and the caller claims it: one caller at a time asks the gateway about
//!    one refund (`outcome`);
//! 2. the gateway is consulted, with no pooled connection held: a refund
//!    whose earlier outcome is unknown is looked up first, and asked again
//!    (same key) only when the gateway has none;
//! 3. under the same lock the answer is recorded: PROCESSED or PENDING
//!    (settled later by the `refund.*` webhooks or a look-up), FAILED only
//!    when the gateway refused and has no refund under the key (the amount
//!    is refundable again), or still PENDING with its outcome unknown (a
//!    timeout, a 5xx, a 409): its amount stays held and a retry with the
//!    same refund id resolves it. Nothing is ever deleted, so no refund the
//!    gateway made can drop out of the books.
//!
//! A subscription ends only on PROCESSED money: a full refund of the order
//! that paid its current period cancels it now; of a renewal not yet begun,
//! it will not renew; of a purchase that was replaced, the credits it carried
//! into the live subscription are forfeited.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;

use crate::{
    Result,
    gateway::RefundStatus,
    orders::{self, Order, OrderId},
    schema::refunds,
};

mod discrepancy;
mod full_refund;
mod order_refund;
mod outcome;
pub use discrepancy::{DiscrepancyRefund, refund_discrepancy};
pub use full_refund::end_if_fully_refunded;
use full_refund::reopen_if_paid_again;
pub use order_refund::refund_order;

/// Longest reason accepted.
pub const MAX_REASON: usize = 500;

shared::text_enum! {
    /// Where a refund is: PENDING moves to PROCESSED or FAILED.
    pub enum Status {
        Pending = "PENDING",
        Processed = "PROCESSED",
        Failed = "FAILED",
    }
}

impl From<RefundStatus> for Status {
    fn from(s: RefundStatus) -> Self {
        match s {
            RefundStatus::Pending => Status::Pending,
            RefundStatus::Processed => Status::Processed,
            RefundStatus::Failed => Status::Failed,
        }
    }
}

#[derive(serde::Deserialize)] // an event's payload (crate::events)
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = refunds, check_for_backend(diesel::pg::Pg))]
pub struct Refund {
    pub id: String,
    pub payment_id: String,
    pub order_id: Option<String>,
    pub discrepancy_id: Option<i64>,
    pub amount_minor: i64,
    pub currency: String,
    pub status: Status,
    pub reason: String,
    pub gateway_refund_id: Option<String>,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    /// While set and in the future, a caller is asking the gateway.
    pub asking_until: Option<DateTime<Utc>>,
    /// How many times a caller claimed it to ask the gateway.
    pub attempts: i32,
}

/// A RefundPayment request, checked by the handler.
#[derive(Debug, Clone)]
pub struct Request {
    pub order_id: OrderId,
    /// 0: everything that is left.
    pub amount_minor: i64,
    pub reason: String,
    pub refund_id: String,
}

/// What a refund request came to (the order as it is now is the caller's
/// to read: `views::order`).
#[derive(Debug, Clone)]
pub struct Refunded {
    pub refund: Refund,
    pub replayed: bool,
}

/// Refunds of these orders, oldest first.
pub async fn of_orders(conn: &mut Conn, order_ids: &[String]) -> Result<Vec<Refund>> {
    Ok(refunds::table
        .filter(refunds::order_id.eq_any(order_ids))
        .order((refunds::created_at, refunds::id))
        .select(Refund::as_select())
        .load(conn)
        .await?)
}

/// PENDING and PROCESSED refunds of a payment: what no longer can be refunded.
async fn refunded_of(conn: &mut Conn, payment_id: &str) -> Result<i64> {
    let amounts: Vec<i64> = refunds::table
        .filter(refunds::payment_id.eq(payment_id))
        .filter(refunds::status.ne(Status::Failed))
        .select(refunds::amount_minor)
        .load(conn)
        .await?;
    Ok(amounts.iter().sum())
}

async fn find(conn: &mut Conn, id: &str) -> Result<Option<Refund>> {
    Ok(refunds::table.find(id).select(Refund::as_select()).first(conn).await.optional()?)
}

/// Refund ids `reconcile --fix` uses for discrepancies; refused from callers.
pub const DISCREPANCY_PREFIX: &str = "discrepancy:";

#[allow(clippy::too_many_arguments)]
async fn insert_pending(
    conn: &mut Conn,
    id: &str,
    payment_id: &str,
    order_id: Option<&str>,
    discrepancy_id: Option<i64>,
    amount_minor: i64,
    currency: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Refund> {
    Ok(diesel::insert_into(refunds::table)
        .values((
            refunds::id.eq(id),
            refunds::payment_id.eq(payment_id),
            refunds::order_id.eq(order_id),
            refunds::discrepancy_id.eq(discrepancy_id),
            refunds::amount_minor.eq(amount_minor),
            refunds::currency.eq(currency),
            refunds::status.eq(Status::Pending),
            refunds::reason.eq(reason),
            refunds::created_at.eq(now),
            refunds::updated_at.eq(now),
        ))
        .returning(Refund::as_returning())
        .get_result(conn)
        .await?)
}

/// What follows a refund's move from PENDING to `after.status`, in the
/// transaction that made it (the order's lock held when it has one): a
/// PROCESSED refund of an order may end its subscription, a FAILED one may
/// make its renewal count as paid again (the period reopens); the payment's
/// discrepancy, if any, is closed or reopened by what is PROCESSED now.
async fn settled(conn: &mut Conn, after: &Refund, order: Option<&Order>, now: DateTime<Utc>) -> Result<()> {
    if after.status == Status::Pending {
        return Ok(());
    }
    if after.discrepancy_id.is_none()
        && let Some(order) = order
    {
        match after.status {
            Status::Processed => end_if_fully_refunded(conn, order, now).await?,
            Status::Failed => reopen_if_paid_again(conn, order, now).await?,
            Status::Pending => {}
        }
    }
    discrepancy::follow_refund(conn, after, now).await
}

/// PROCESSED refunds of a payment.
async fn processed_of(conn: &mut Conn, payment_id: &str) -> Result<i64> {
    let amounts: Vec<i64> = refunds::table
        .filter(refunds::payment_id.eq(payment_id))
        .filter(refunds::status.eq(Status::Processed))
        .select(refunds::amount_minor)
        .load(conn)
        .await?;
    Ok(amounts.iter().sum())
}

/// What a `refund.processed` / `refund.failed` event says, its fields
/// checked by the webhook parser.
#[derive(Debug, Clone)]
pub struct Event {
    /// The gateway's refund id.
    pub gateway_refund_id: String,
    /// Billing's refund id, when the event carries it (`notes.refund_key`).
    pub refund_key: Option<String>,
    /// The payment the refund returns money of.
    pub payment_id: String,
    pub amount_minor: i64,
    pub status: Status,
}

/// What a refund event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// It settled a PENDING refund of billing's.
    Applied,
    /// Not billing's refund, or nothing new about it (why).
    Ignored(String),
    /// It names billing's refund but disagrees with it (why): not applied,
    /// left to an operator (reconcile reports it).
    Rejected(String),
}

/// A `refund.processed` / `refund.failed` webhook (docs/design.md,
/// Invariants 22): settles the PENDING refund it belongs to, found by the
/// gateway's refund id or else by billing's refund id (`refund_key`, from
/// the refund's notes), whichever attempt's gateway id the row holds.
///
/// A refund key is only a name another integration or deployment on the
/// same gateway account may use too: a key match counts only when the
/// event's payment is the row's (else IGNORED, not billing's refund); then,
/// as for a match by gateway id, its amount must be the row's (else
/// REJECTED for review). A PROCESSED refund reported failed, or a FAILED one
/// reported processed, is not applied either: Razorpay documents
/// `processed` as final, so the operator checks the refund at the gateway
/// (REJECTED, reported by reconcile). A processed refund may complete a
/// full refund (see [`end_if_fully_refunded`]) or close the payment's
/// discrepancy; a failed one gives its amount back.
pub async fn settle(conn: &mut Conn, e: &Event, now: DateTime<Utc>) -> Result<Settled> {
    let by_gateway_id: Option<Refund> = refunds::table
        .filter(refunds::gateway_refund_id.eq(&e.gateway_refund_id))
        .select(Refund::as_select())
        .first(conn)
        .await
        .optional()?;
    let refund = match (by_gateway_id, &e.refund_key) {
        (Some(r), _) => {
            if r.payment_id != e.payment_id {
                return Ok(Settled::Rejected(format!(
                    "gateway refund {} is billing's refund {} of payment {}, but the event names payment {}",
                    e.gateway_refund_id, r.id, r.payment_id, e.payment_id
                )));
            }
            r
        }
        (None, Some(key)) => match find(conn, key).await? {
            Some(r) if r.payment_id == e.payment_id => r,
            Some(r) => {
                return Ok(Settled::Ignored(format!(
                    "refund key {key} is billing's refund of payment {}; this refund {} is of payment {}: not billing's",
                    r.payment_id, e.gateway_refund_id, e.payment_id
                )));
            }
            None => return Ok(Settled::Ignored(format!("no refund {} nor refund key {key}", e.gateway_refund_id))),
        },
        (None, None) => return Ok(Settled::Ignored(format!("no refund {}", e.gateway_refund_id))),
    };
    if refund.amount_minor != e.amount_minor {
        return Ok(Settled::Rejected(format!(
            "refund {} ({}) of payment {} is of {} {} in billing, the event says {}",
            refund.id, e.gateway_refund_id, refund.payment_id, refund.amount_minor, refund.currency, e.amount_minor
        )));
    }
    let order = match &refund.order_id {
        Some(id) => orders::lock_optional(conn, id).await?,
        None => None,
    };
    // The order's lock, then the discrepancy's, then the refund row: the
    // order every refund path takes.
    discrepancy::lock_of_payment(conn, &refund.payment_id).await?;
    // The first gateway id learnt stays (it is unique); the event settles
    // the row either way.
    let gateway_id = refund.gateway_refund_id.clone().unwrap_or_else(|| e.gateway_refund_id.clone());
    let after: Option<Refund> = diesel::update(refunds::table.find(&refund.id).filter(refunds::status.eq(Status::Pending)))
        .set((refunds::status.eq(e.status), refunds::gateway_refund_id.eq(gateway_id), refunds::updated_at.eq(now)))
        .returning(Refund::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(after) = after {
        settled(conn, &after, order.as_ref(), now).await?;
        return Ok(Settled::Applied);
    }
    // Settled already (before this event, or by a caller meanwhile).
    let now_status: Status = refunds::table.find(&refund.id).select(refunds::status).first(conn).await?;
    if now_status == e.status {
        return Ok(Settled::Ignored(format!("refund {} is {now_status} already", refund.id)));
    }
    Ok(Settled::Rejected(format!(
        "refund {} ({}) of payment {} is {now_status} in billing, the gateway now says {}; \
         check it at the gateway (see the runbook)",
        refund.id,
        e.gateway_refund_id,
        refund.payment_id,
        e.status.as_str().to_lowercase()
    )))
}
