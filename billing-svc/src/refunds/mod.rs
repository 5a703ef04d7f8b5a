//! Refunds of captured payments (docs/design.md, "Refunds"): of an order's
//! payment (RefundPayment) or of a payment that bought nothing (a payment
//! discrepancy, refunded by `reconcile --fix`). One path for both:
//!
//! 1. under the order's row lock (the discrepancy's, for a payment of no
//!    known order) the refund is checked against what is left and recorded
//!    PENDING, so racing refunds never add up to more than was captured,
//!    and the caller claims it: one caller at a time asks the gateway about
//!    one refund ([`outcome`]);
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
use shared::db::{Conn, Races};

use crate::{
    App, Error, Result,
    gateway::RefundStatus,
    orders::{self, Order},
    schema::refunds,
    subscriptions,
};

mod discrepancy;
mod outcome;
pub use discrepancy::{DiscrepancyRefund, refund_discrepancy};
use outcome::{Answer, Claim};

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
    pub order_id: String,
    /// 0: everything that is left.
    pub amount_minor: i64,
    pub reason: String,
    pub refund_id: String,
}

/// What a refund request came to.
#[derive(Debug, Clone)]
pub struct Refunded {
    pub refund: Refund,
    pub order: orders::OrderView,
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

/// Step 1 of an order refund, under the order's row lock: a replay of a
/// settled refund, or the PENDING row this caller claimed (new, or one
/// still pending or of unknown outcome).
enum Begun {
    Replay(Refund),
    Ask(Claim),
}

/// Refund ids `reconcile --fix` uses for discrepancies; refused from callers.
pub const DISCREPANCY_PREFIX: &str = "discrepancy:";

async fn begin(conn: &mut Conn, r: &Request, now: DateTime<Utc>, lease: chrono::Duration) -> Result<Begun> {
    let order = orders::lock_optional(conn, &r.order_id).await?.ok_or_else(|| Error::not_found("order", &r.order_id))?;
    let subject = format!("order:{}", order.id);
    if let Some(prior) = find(conn, &r.refund_id).await? {
        let same = prior.order_id.as_deref() == Some(order.id.as_str())
            && prior.discrepancy_id.is_none()
            && (r.amount_minor == 0 || r.amount_minor == prior.amount_minor);
        if !same {
            return Err(Error::precondition(
                "REFUND_ID_REUSED",
                format!("refund:{}", r.refund_id),
                "this refund_id was used for another order or amount; use a new refund_id",
            ));
        }
        if prior.status == Status::Pending {
            return Ok(Begun::Ask(outcome::claim(conn, &prior, true, now, lease).await?));
        }
        return Ok(Begun::Replay(prior));
    }
    let Some(payment_id) = order.payment_id.clone().filter(|_| order.is_paid()) else {
        return Err(Error::precondition("ORDER_NOT_PAID", subject, format!("order {} has no captured payment", order.id)));
    };
    let left = order.amount_minor - refunded_of(conn, &payment_id).await?;
    let amount = if r.amount_minor == 0 { left } else { r.amount_minor };
    if left <= 0 || amount > left {
        return Err(Error::precondition(
            "REFUND_EXCEEDS_CAPTURED",
            subject,
            format!(
                "order {} captured {} {} and {left} is left to refund; {amount} asked",
                order.id, order.amount_minor, order.currency
            ),
        ));
    }
    let pending =
        insert_pending(conn, &r.refund_id, &payment_id, Some(&order.id), None, amount, &order.currency, &r.reason, now).await?;
    Ok(Begun::Ask(outcome::claim(conn, &pending, false, now, lease).await?))
}

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

/// RefundPayment: refunds (part of) an order's captured payment.
pub async fn refund_order(app: &App, r: &Request) -> Result<Refunded> {
    let now = app.clock.now();
    let lease = outcome::lease(app);
    let begun = {
        let mut conn = app.conn().await?;
        shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| begin(c, r, now, lease).await)?
    };
    let claim = match begun {
        Begun::Replay(refund) => {
            let order = orders::view(&mut *app.conn().await?, &r.order_id).await?;
            return Ok(Refunded { refund, order, replayed: true });
        }
        Begun::Ask(claim) => claim,
    };
    let answer = outcome::consult(app, &claim).await;
    let mut conn = app.conn().await?;
    let recorded = shared::retry_tx!(&mut conn, Races::Conflicts, |c| {
        let order = orders::lock_optional(c, &r.order_id).await?.ok_or_else(|| Error::not_found("order", &r.order_id))?;
        discrepancy::lock_of_payment(c, &claim.refund.payment_id).await?;
        let (recorded, settled_here) = outcome::record(c, &claim, &answer, now).await?;
        if settled_here {
            settled(c, &recorded, Some(&order), now).await?;
        }
        Ok::<_, Error>(recorded)
    })?;
    match &answer {
        Answer::Unknown(e) => {
            tracing::warn!(refund_id = %recorded.id, order_id = %r.order_id, error = %e, "refund outcome unknown; stays PENDING");
            Err(e.clone().into())
        }
        Answer::Refused(why) if recorded.status == Status::Failed => {
            tracing::warn!(refund_id = %recorded.id, order_id = %r.order_id, %why, "gateway refused a refund");
            Err(Error::precondition(
                "GATEWAY_REFUSED",
                format!("refund:{}", recorded.id),
                format!("the gateway refused the refund ({why}); it is recorded FAILED and the order is unchanged"),
            ))
        }
        // Refused, but another caller has claimed the refund since: its
        // answer decides; this caller retries.
        Answer::Refused(_) => Err(shared::error::ServiceError::IdempotencyKeyInFlight.into()),
        Answer::Accepted { .. } | Answer::StillPending => {
            tracing::info!(refund_id = %recorded.id, order_id = %r.order_id, amount = recorded.amount_minor, status = %recorded.status, "refund recorded");
            let order = orders::view(&mut conn, &r.order_id).await?;
            Ok(Refunded { refund: recorded, order, replayed: claim.replayed })
        }
    }
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

/// What a full refund (PROCESSED) of `order` takes back. Order row held;
/// subscriptions are locked after it, as everywhere:
/// - the order paid the subscription's current period: it ends now, its
///   credits forfeited;
/// - a renewal of a period not begun yet: it will not open (the roll checks
///   refunds), and the subscription ends at period end instead of going
///   PAST_DUE; already PAST_DUE (the refund was settled after the period
///   ended), it ends now, CANCELLED at that period end;
/// - a purchase whose subscription was replaced: the credits it carried
///   into the user's live subscription are forfeited there.
pub async fn end_if_fully_refunded(conn: &mut Conn, order: &Order, now: DateTime<Utc>) -> Result<()> {
    let Some(payment_id) = &order.payment_id else { return Ok(()) };
    if processed_of(conn, payment_id).await? < order.amount_minor {
        return Ok(());
    }
    let sub_id = match order.renews_subscription_id {
        Some(id) => Some(id),
        None => subscriptions::by_order(conn, &order.id).await?.map(|s| s.id),
    };
    let Some(sub_id) = sub_id else { return Ok(()) };
    let sub = subscriptions::lock(conn, sub_id).await?;
    if sub.status == subscriptions::Status::Replaced {
        subscriptions::forfeit_carried(conn, &sub, now).await?;
        return Ok(());
    }
    if !sub.status.is_live() {
        return Ok(());
    }
    match order.renews_period_start {
        Some(start) if start == sub.period_end => {
            subscriptions::set_cancel_at_period_end(conn, sub.id, now).await?;
            if sub.status == subscriptions::Status::PastDue {
                // Its period already ended unpaid and now never will be
                // paid: it ends at that period end (CANCELLED, as the roll
                // does with the flag) instead of waiting out the grace
                // period to EXPIRE.
                orders::cancel_renewals_of(conn, sub.id, now).await?;
                subscriptions::roll(conn, sub.id, now).await?;
                tracing::info!(order_id = %order.id, subscription_id = %sub.id, "unpaid renewal refunded: past-due subscription ended");
            } else {
                tracing::info!(order_id = %order.id, subscription_id = %sub.id, "renewal refunded: ends at period end");
            }
        }
        Some(start) if start != sub.period_start => {}
        // A renewal of the current period, or the purchase while its first
        // period runs.
        _ if order.renews_period_start.is_some() || sub.period_start == sub.anchor_at => {
            subscriptions::end_now(conn, &sub, now).await?;
            tracing::info!(order_id = %order.id, subscription_id = %sub.id, "fully refunded: subscription cancelled");
        }
        _ => {}
    }
    Ok(())
}

/// A FAILED refund gives its amount back. A renewal it had made count as
/// unpaid counts as paid again, so a subscription that went PAST_DUE
/// meanwhile reopens its period now, anchored at the old period end
/// ([`subscriptions::roll_if_due`]; the next read, use or job would too).
/// A subscription that ended meanwhile (EXPIRED past its grace period,
/// cancelled) never opens that period: the renewal's payment is kept for
/// nothing, so it becomes a SUBSCRIPTION_ENDED discrepancy that reconcile
/// reports and `--fix` refunds. Order row held; the subscription is locked
/// after it.
async fn reopen_if_paid_again(conn: &mut Conn, order: &Order, now: DateTime<Utc>) -> Result<()> {
    let Some(sub_id) = order.renews_subscription_id else { return Ok(()) };
    let sub = subscriptions::lock(conn, sub_id).await?;
    if subscriptions::roll_if_due(conn, &sub, now).await? {
        tracing::info!(order_id = %order.id, subscription_id = %sub.id, "renewal paid again (refund failed): period reopened");
        return Ok(());
    }
    let never_opened = order.renews_period_start.is_some_and(|start| start >= sub.period_end);
    if !sub.status.is_live() && order.is_paid() && never_opened {
        subscriptions::refund_unused_renewal(conn, &sub, order, now).await?;
        tracing::warn!(order_id = %order.id, subscription_id = %sub.id, status = %sub.status,
            "renewal paid again (refund failed) after its subscription ended: owed back");
    }
    Ok(())
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
