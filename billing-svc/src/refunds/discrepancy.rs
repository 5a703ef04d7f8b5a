//! `reconcile --fix` refunds a payment that bought nothing (a payment
//! discrepancy) through the steps of every refund (see the parent module):
//! under the order's lock when the payment names a known order, then the
//! discrepancy's; only what other refunds of the payment have not returned.
//!
//! A discrepancy is REFUNDED only when PROCESSED refunds of its payment
//! cover its amount (docs/design.md, Invariants 23): a pending answer leaves
//! it OPEN (reported) until the webhook or a later run's look-up settles the
//! refund; a refund that fails leaves it OPEN, or reopens it, audited, and
//! the next `--fix` refunds it again with a fresh refund id
//! (`discrepancy:<id>:<n>`). A refund the gateway refused outright is left
//! to an operator.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{
    db::{Conn, Races},
    error::ServiceError,
};

use super::{
    DISCREPANCY_PREFIX, Refund, Status, insert_pending,
    outcome::{self, Answer, Claim},
    processed_of, refunded_of,
};
use crate::{
    App, Error, Result,
    audit::{self, FindingKind},
    discrepancies::Status as DiscrepancyStatus,
    orders,
    schema::{orders as orders_table, payment_discrepancies as pd, refunds},
};

/// What reconciliation's refund of a discrepancy came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscrepancyRefund {
    /// Refunds of its payment are PROCESSED for its amount: REFUNDED.
    Refunded(String),
    /// Not (yet) refunded; the reason (pending at the gateway, refused,
    /// unreachable, no amount known, no longer OPEN).
    Left(String),
}

/// id, payment id, order id, amount, currency, status of a discrepancy.
type DiscrepancyRow = (i64, String, Option<String>, Option<i64>, Option<String>, DiscrepancyStatus);

async fn lock_discrepancy(c: &mut Conn, key: DiscrepancyKey<'_>) -> Result<Option<DiscrepancyRow>> {
    let id = match key {
        DiscrepancyKey::Id(id) => id,
        DiscrepancyKey::Payment(p) => {
            match pd::table.filter(pd::payment_id.eq(p)).select(pd::id).first::<i64>(c).await.optional()? {
                Some(id) => id,
                None => return Ok(None),
            }
        }
    };
    Ok(pd::table
        .find(id)
        .select((pd::id, pd::payment_id, pd::order_id, pd::amount_minor, pd::currency, pd::status))
        .for_update()
        .first(c)
        .await
        .optional()?)
}

/// Takes the lock of `payment_id`'s discrepancy, if it has one, before a
/// refund row of that payment is written. One lock order for every path
/// that touches both (docs/design.md, "Refunds"): the order, then the
/// discrepancy, then the refund row; [`begin_discrepancy`] claims refund
/// rows under the discrepancy's lock, and recording an answer or a webhook
/// later locks the discrepancy again in [`follow_refund`].
pub(super) async fn lock_of_payment(c: &mut Conn, payment_id: &str) -> Result<()> {
    lock_discrepancy(c, DiscrepancyKey::Payment(payment_id)).await?;
    Ok(())
}

#[derive(Clone, Copy)]
enum DiscrepancyKey<'a> {
    Id(i64),
    Payment(&'a str),
}

/// What is owed back for a discrepancy: the amount and currency the gateway
/// reported, else its order's (a VerifyPayment capture through a gateway
/// that reports neither); None when unknown.
async fn owed_amount(c: &mut Conn, row: &DiscrepancyRow) -> Result<Option<(i64, String)>> {
    let (_, _, order_id, amount, currency, _) = row;
    if let (Some(a), Some(cur)) = (amount, currency) {
        return Ok(Some((*a, cur.clone())));
    }
    let Some(order_id) = order_id else { return Ok(None) };
    Ok(orders_table::table
        .find(order_id)
        .select((orders_table::amount_minor, orders_table::currency))
        .first(c)
        .await
        .optional()?)
}

/// Step 1 of a discrepancy refund, under the order's row lock (when the
/// payment names a known order) and then the discrepancy's: the claimed
/// PENDING refund to ask about, or why there is nothing to ask.
async fn begin_discrepancy(
    c: &mut Conn,
    discrepancy_id: i64,
    now: DateTime<Utc>,
    lease: chrono::Duration,
) -> Result<std::result::Result<Claim, DiscrepancyRefund>> {
    let order_id: Option<String> = pd::table.find(discrepancy_id).select(pd::order_id).first(c).await.optional()?.flatten();
    // The order's lock first: refunds of one payment serialize on it,
    // whichever path asks (RefundPayment, this one, a webhook).
    let order = match &order_id {
        Some(id) => orders::lock_optional(c, id).await?,
        None => None,
    };
    let Some(row) = lock_discrepancy(c, DiscrepancyKey::Id(discrepancy_id)).await? else {
        return Err(Error::not_found("payment_discrepancy", discrepancy_id));
    };
    let left = |why: String| Ok(Err(DiscrepancyRefund::Left(why)));
    let status = row.5;
    if status != DiscrepancyStatus::Open {
        return left(format!("discrepancy is {status}"));
    }
    let payment_id = row.1.clone();
    let Some((amount, currency)) = owed_amount(c, &row).await? else {
        return left("the amount is unknown; refund by hand and acknowledge".into());
    };
    let ours: Vec<Refund> =
        refunds::table.filter(refunds::discrepancy_id.eq(discrepancy_id)).select(Refund::as_select()).load(c).await?;
    if processed_of(c, &payment_id).await? >= amount {
        let id = ours.iter().find(|r| r.status == Status::Processed).map_or("other refunds of its payment", |r| r.id.as_str());
        mark_refunded(c, discrepancy_id, id, now).await?;
        return Ok(Err(DiscrepancyRefund::Refunded(id.to_owned())));
    }
    // Our refund still pending (or of unknown outcome): resolve it first.
    if let Some(pending) = ours.iter().find(|r| r.status == Status::Pending) {
        return match outcome::claim(c, pending, true, now, lease).await {
            Ok(claim) => Ok(Ok(claim)),
            Err(Error::Service(ServiceError::IdempotencyKeyInFlight)) => {
                left(format!("refund {} is being asked at the gateway by another caller", pending.id))
            }
            Err(e) => Err(e),
        };
    }
    // Refused outright (no refund made): asking again would be refused again.
    if let Some(refused) = ours.iter().find(|r| r.status == Status::Failed && r.gateway_refund_id.is_none()) {
        return left(format!("the gateway refused refund {}: {}; refund by hand and acknowledge", refused.id, refused.detail));
    }
    // What other refunds of this payment (pending or processed) return is
    // not owed again.
    let owed = amount - refunded_of(c, &payment_id).await?;
    if owed <= 0 {
        return left("refunds of this payment are pending at the gateway; it closes once they are processed".into());
    }
    // The first refund keeps the id earlier releases used; a fresh attempt
    // after a failed one gets the next number.
    let refund_id = match ours.len() {
        0 => format!("{DISCREPANCY_PREFIX}{discrepancy_id}"),
        n => format!("{DISCREPANCY_PREFIX}{discrepancy_id}:{}", n + 1),
    };
    let reason = "payment discrepancy: money taken that bought nothing";
    let known_order = order.as_ref().map(|o| o.id.as_str());
    let p = insert_pending(c, &refund_id, &payment_id, known_order, Some(discrepancy_id), owed, &currency, reason, now).await?;
    Ok(Ok(outcome::claim(c, &p, false, now, lease).await?))
}

async fn audit(c: &mut Conn, discrepancy_id: i64, action: &str, note: &str, now: DateTime<Utc>) -> Result<()> {
    let kind = FindingKind::PaymentDiscrepancy.as_str();
    audit::record(c, kind, &discrepancy_id.to_string(), action, Some(note), now).await?;
    tracing::info!(discrepancy_id, action, note, "payment discrepancy");
    Ok(())
}

/// OPEN -> REFUNDED, audited (the caller checked that PROCESSED refunds
/// cover it).
async fn mark_refunded(c: &mut Conn, discrepancy_id: i64, refund_id: &str, now: DateTime<Utc>) -> Result<()> {
    let note = format!("refunded: refund {refund_id} processed");
    let n = diesel::update(pd::table.find(discrepancy_id).filter(pd::status.eq(DiscrepancyStatus::Open)))
        .set((pd::status.eq(DiscrepancyStatus::Refunded), pd::note.eq(&note), pd::resolved_at.eq(now)))
        .execute(c)
        .await?;
    if n == 1 {
        audit(c, discrepancy_id, "refunded", &note, now).await?;
    }
    Ok(())
}

/// A refund of a discrepancy's payment moved to PROCESSED or FAILED: the
/// discrepancy becomes REFUNDED when PROCESSED refunds now cover it, or
/// OPEN again when they no longer do; a failed refund of it is audited.
/// The caller holds the order's lock (if the refund has an order).
pub(super) async fn follow_refund(c: &mut Conn, refund: &Refund, now: DateTime<Utc>) -> Result<()> {
    let Some(row) = lock_discrepancy(c, DiscrepancyKey::Payment(&refund.payment_id)).await? else { return Ok(()) };
    let id = row.0;
    // A refund the gateway accepted and then failed (the bank's answer, by
    // webhook or look-up) is audited; a refusal made nothing and is
    // reported by reconcile's finding.
    if refund.status == Status::Failed && refund.discrepancy_id == Some(id) && refund.gateway_refund_id.is_some() {
        let note = format!("refund {} failed ({}); the money is still owed", refund.id, refund.detail);
        audit(c, id, "refund failed", &note, now).await?;
    }
    let Some((amount, _)) = owed_amount(c, &row).await? else { return Ok(()) };
    let covered = processed_of(c, &refund.payment_id).await? >= amount;
    match row.5 {
        DiscrepancyStatus::Open if covered && refund.status == Status::Processed => mark_refunded(c, id, &refund.id, now).await,
        DiscrepancyStatus::Refunded if !covered => {
            let note =
                format!("reopened: refund {} {}; its payment's processed refunds no longer cover it", refund.id, refund.status);
            diesel::update(pd::table.find(id).filter(pd::status.eq(DiscrepancyStatus::Refunded)))
                .set((pd::status.eq(DiscrepancyStatus::Open), pd::note.eq(&note), pd::resolved_at.eq(None::<DateTime<Utc>>)))
                .execute(c)
                .await?;
            audit(c, id, "reopened", &note, now).await
        }
        _ => Ok(()),
    }
}

/// Refunds what is still owed of the payment of an OPEN discrepancy,
/// through the same steps as [`super::refund_order`], and marks it REFUNDED
/// (audited) once refunds of its payment are PROCESSED for its amount.
/// Safe to run concurrently and repeatedly: a refund is claimed by one run
/// at a time, and a new one is made only when none is pending.
pub async fn refund_discrepancy(app: &App, discrepancy_id: i64) -> Result<DiscrepancyRefund> {
    let now = app.clock.now();
    let lease = outcome::lease(app);
    let claim = {
        let mut conn = app.conn().await?;
        match shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| begin_discrepancy(c, discrepancy_id, now, lease).await)?
        {
            Ok(claim) => claim,
            Err(done) => return Ok(done),
        }
    };
    let answer = outcome::consult(app, &claim).await;
    let mut conn = app.conn().await?;
    shared::retry_tx!(&mut conn, Races::Conflicts, |c| {
        let order = match &claim.refund.order_id {
            Some(order_id) => orders::lock_optional(c, order_id).await?,
            None => None,
        };
        lock_of_payment(c, &claim.refund.payment_id).await?;
        let (recorded, settled_here) = outcome::record(c, &claim, &answer, now).await?;
        if settled_here {
            super::settled(c, &recorded, order.as_ref(), now).await?;
        }
        let status: DiscrepancyStatus = pd::table.find(discrepancy_id).select(pd::status).first(c).await?;
        Ok::<_, Error>(match (&answer, status) {
            (_, DiscrepancyStatus::Refunded) => DiscrepancyRefund::Refunded(recorded.id.clone()),
            (Answer::Unknown(e), _) => DiscrepancyRefund::Left(format!(
                "the outcome of refund {} is unknown ({e}); the next run looks it up",
                recorded.id
            )),
            (Answer::Refused(why), _) => DiscrepancyRefund::Left(format!("the gateway refused refund {}: {why}", recorded.id)),
            _ => DiscrepancyRefund::Left(format!(
                "refund {} is {} at the gateway; it closes once processed",
                recorded.id,
                recorded.status.as_str().to_lowercase()
            )),
        })
    })
}
