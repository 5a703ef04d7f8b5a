//! Refunds of captured payments (docs/design.md, "Refunds"): of an order's
//! payment (RefundPayment) or of a payment that bought nothing (a payment
//! discrepancy, refunded by `reconcile --fix`). One path for both:
//!
//! 1. under the order's row lock (the discrepancy's, for a payment of no
//!    known order) the refund is checked against what is left and recorded
//!    PENDING, so racing refunds never add up to more than was captured;
//! 2. the gateway is asked, with no pooled connection held;
//! 3. under the same lock the answer is recorded: PROCESSED or PENDING
//!    (settled later by the `refund.*` webhooks), or FAILED (the amount is
//!    refundable again). An unreachable gateway leaves the row PENDING
//!    without a gateway id, its outcome unknown (a timed-out call may have
//!    refunded): its amount stays held, a retry with the same refund id asks
//!    the gateway again with the same key, and the gateway's webhook settles
//!    it by that key. Nothing is ever deleted, so no refund the gateway made
//!    can drop out of the books.
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
    gateway::{GatewayError, RefundStatus},
    orders::{self, Order},
    schema::refunds,
    subscriptions,
};

mod discrepancy;
pub use discrepancy::{DiscrepancyRefund, refund_discrepancy};

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

/// Step 1 of an order refund, under the order's row lock: a replay, or the
/// PENDING row to ask the gateway about (new, or one whose outcome is
/// unknown because the gateway could not be reached).
enum Begun {
    Replay(Refund),
    Ask(Refund),
}

/// Refund ids `reconcile --fix` uses for discrepancies; refused from callers.
pub const DISCREPANCY_PREFIX: &str = "discrepancy:";

async fn begin(conn: &mut Conn, r: &Request, now: DateTime<Utc>) -> Result<Begun> {
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
        if prior.status == Status::Pending && prior.gateway_refund_id.is_none() {
            return Ok(Begun::Ask(prior));
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
    Ok(Begun::Ask(pending))
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

/// The gateway's answer, as recorded.
enum Answer {
    Accepted { gateway_id: String, status: Status },
    Refused(String),
    Unreachable(GatewayError),
}

async fn ask_gateway(app: &App, refund: &Refund) -> Answer {
    match app.gateway.refund(&refund.payment_id, refund.amount_minor, &refund.id).await {
        Ok(r) => Answer::Accepted { gateway_id: r.id, status: r.status.into() },
        Err(GatewayError::Refused { code, message }) => Answer::Refused(format!("{code}: {message}")),
        Err(e @ GatewayError::Unavailable { .. }) => Answer::Unreachable(e),
    }
}

/// Step 3: records the answer (caller holds the lock step 1 took). Returns
/// the refund as recorded; None when it was no longer PENDING (a webhook
/// settled it in between).
async fn record(conn: &mut Conn, id: &str, answer: &Answer, now: DateTime<Utc>) -> Result<Option<Refund>> {
    let target = refunds::table.find(id).filter(refunds::status.eq(Status::Pending));
    Ok(match answer {
        Answer::Accepted { gateway_id, status } => diesel::update(target)
            .set((refunds::status.eq(*status), refunds::gateway_refund_id.eq(gateway_id), refunds::updated_at.eq(now)))
            .returning(Refund::as_returning())
            .get_result(conn)
            .await
            .optional()?,
        Answer::Refused(why) => diesel::update(target)
            .set((refunds::status.eq(Status::Failed), refunds::detail.eq(why), refunds::updated_at.eq(now)))
            .returning(Refund::as_returning())
            .get_result(conn)
            .await
            .optional()?,
        Answer::Unreachable(e) => diesel::update(target)
            .set((
                refunds::detail.eq(format!("outcome unknown: {e}; retry with the same refund_id")),
                refunds::updated_at.eq(now),
            ))
            .returning(Refund::as_returning())
            .get_result(conn)
            .await
            .optional()?,
    })
}

/// RefundPayment: refunds (part of) an order's captured payment.
pub async fn refund_order(app: &App, r: &Request) -> Result<Refunded> {
    let now = app.clock.now();
    let begun = {
        let mut conn = app.conn().await?;
        shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| begin(c, r, now).await)?
    };
    let pending = match begun {
        Begun::Replay(refund) => {
            let order = orders::view(&mut *app.conn().await?, &r.order_id).await?;
            return Ok(Refunded { refund, order, replayed: true });
        }
        Begun::Ask(p) => p,
    };
    let answer = ask_gateway(app, &pending).await;
    let mut conn = app.conn().await?;
    let recorded = shared::retry_tx!(&mut conn, Races::Conflicts, |c| {
        let order = orders::lock_optional(c, &r.order_id).await?.ok_or_else(|| Error::not_found("order", &r.order_id))?;
        let recorded = record(c, &pending.id, &answer, now).await?;
        match recorded.as_ref().map(|r| r.status) {
            Some(Status::Processed) => end_if_fully_refunded(c, &order, now).await?,
            Some(Status::Failed) => reopen_if_paid_again(c, &order, now).await?,
            _ => {}
        }
        Ok::<_, Error>(recorded)
    })?;
    match (&answer, recorded) {
        (Answer::Unreachable(e), _) => Err(e.clone().into()),
        (Answer::Refused(why), _) => {
            tracing::warn!(refund_id = %pending.id, order_id = %r.order_id, %why, "gateway refused a refund");
            Err(Error::precondition(
                "GATEWAY_REFUSED",
                format!("refund:{}", pending.id),
                format!("the gateway refused the refund ({why}); it is recorded FAILED and the order is unchanged"),
            ))
        }
        (Answer::Accepted { .. }, Some(refund)) => {
            tracing::info!(refund_id = %refund.id, order_id = %r.order_id, amount = refund.amount_minor, status = %refund.status, "refund recorded");
            let order = orders::view(&mut conn, &r.order_id).await?;
            Ok(Refunded { refund, order, replayed: false })
        }
        // Settled by a webhook between the steps: read it as it is.
        (Answer::Accepted { .. }, None) => {
            let refund = find(&mut conn, &pending.id).await?.ok_or_else(|| Error::not_found("refund", &pending.id))?;
            let order = orders::view(&mut conn, &r.order_id).await?;
            Ok(Refunded { refund, order, replayed: false })
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
///   PAST_DUE;
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
            tracing::info!(order_id = %order.id, subscription_id = %sub.id, "renewal refunded: ends at period end");
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
/// Order row held; the subscription is locked after it.
async fn reopen_if_paid_again(conn: &mut Conn, order: &Order, now: DateTime<Utc>) -> Result<()> {
    let Some(sub_id) = order.renews_subscription_id else { return Ok(()) };
    let sub = subscriptions::lock(conn, sub_id).await?;
    if subscriptions::roll_if_due(conn, &sub, now).await? {
        tracing::info!(order_id = %order.id, subscription_id = %sub.id, "renewal paid again (refund failed): period reopened");
    }
    Ok(())
}

/// A `refund.processed` / `refund.failed` webhook: settles the PENDING
/// refund the gateway names, by its gateway id or, for a refund whose
/// answer never reached billing, by billing's refund id (`refund_key`).
/// Returns false when no PENDING refund matches (already settled, or not
/// billing's). A processed refund may complete a full refund (see
/// [`end_if_fully_refunded`]).
pub async fn settle(
    conn: &mut Conn,
    gateway_refund_id: &str,
    refund_key: Option<&str>,
    status: Status,
    now: DateTime<Utc>,
) -> Result<bool> {
    let pending = refunds::table.filter(refunds::status.eq(Status::Pending));
    let found: Option<Refund> = match pending
        .filter(refunds::gateway_refund_id.eq(gateway_refund_id))
        .select(Refund::as_select())
        .first(conn)
        .await
        .optional()?
    {
        Some(r) => Some(r),
        None => match refund_key {
            Some(key) => pending
                .filter(refunds::id.eq(key))
                .filter(refunds::gateway_refund_id.is_null())
                .select(Refund::as_select())
                .first(conn)
                .await
                .optional()?,
            None => None,
        },
    };
    let Some(refund) = found else { return Ok(false) };
    let order = match &refund.order_id {
        Some(id) => orders::lock_optional(conn, id).await?,
        None => None,
    };
    let n = diesel::update(refunds::table.find(&refund.id).filter(refunds::status.eq(Status::Pending)))
        .set((refunds::status.eq(status), refunds::gateway_refund_id.eq(gateway_refund_id), refunds::updated_at.eq(now)))
        .execute(conn)
        .await?;
    if n == 1
        && let Some(order) = order
        && refund.discrepancy_id.is_none()
    {
        match status {
            Status::Processed => end_if_fully_refunded(conn, &order, now).await?,
            Status::Failed => reopen_if_paid_again(conn, &order, now).await?,
            Status::Pending => {}
        }
    }
    Ok(n == 1)
}
