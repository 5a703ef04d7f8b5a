//! `reconcile --fix` refunds a payment that bought nothing (a payment
//! discrepancy) through the steps of every refund (see the parent module):
//! under the order's lock when the payment names a known order, then the
//! discrepancy's; only what other refunds of the payment have not returned.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::{Conn, Races};

use super::{Answer, DISCREPANCY_PREFIX, Refund, Status, ask_gateway, find, insert_pending, record, refunded_of};
use crate::{
    App, Error, Result,
    discrepancies::Status as DiscrepancyStatus,
    orders,
    schema::{payment_discrepancies as pd, reconcile_audit},
};

/// What reconciliation's refund of a discrepancy came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscrepancyRefund {
    /// Refunded now (or found refunded): the discrepancy is REFUNDED.
    Refunded(String),
    /// Not refunded; the reason (no amount known, gateway refused or down,
    /// no longer OPEN).
    Left(String),
}

/// payment id, order id, amount, currency, status of a discrepancy.
type DiscrepancyRow = (String, Option<String>, Option<i64>, Option<String>, DiscrepancyStatus);

/// Step 1 of a discrepancy refund, under the order's row lock (when the
/// payment names a known order) and then the discrepancy's: the PENDING
/// refund to ask about, or why there is nothing to ask.
async fn begin_discrepancy(
    c: &mut Conn,
    discrepancy_id: i64,
    refund_id: &str,
    now: DateTime<Utc>,
) -> Result<std::result::Result<Refund, DiscrepancyRefund>> {
    let order_id: Option<String> = pd::table.find(discrepancy_id).select(pd::order_id).first(c).await.optional()?.flatten();
    // The order's lock first: refunds of one payment serialize on it,
    // whichever path asks (RefundPayment, this one).
    let order = match &order_id {
        Some(id) => orders::lock_optional(c, id).await?,
        None => None,
    };
    let row: Option<DiscrepancyRow> = pd::table
        .find(discrepancy_id)
        .select((pd::payment_id, pd::order_id, pd::amount_minor, pd::currency, pd::status))
        .for_update()
        .first(c)
        .await
        .optional()?;
    let Some((payment_id, _, amount, currency, status)) = row else {
        return Err(Error::not_found("payment_discrepancy", discrepancy_id));
    };
    let left = |why: String| Ok(Err(DiscrepancyRefund::Left(why)));
    if status != DiscrepancyStatus::Open {
        return left(format!("discrepancy is {status}"));
    }
    if let Some(prior) = find(c, refund_id).await? {
        if prior.discrepancy_id != Some(discrepancy_id) || prior.payment_id != payment_id {
            return left(format!("refund id {refund_id} belongs to another payment; refund by hand and acknowledge"));
        }
        return match prior.status {
            Status::Failed => left(format!("refund {refund_id} failed: {}; refund by hand and acknowledge", prior.detail)),
            Status::Pending if prior.gateway_refund_id.is_none() => Ok(Ok(prior)),
            _ => {
                mark_refunded(c, discrepancy_id, refund_id, prior.gateway_refund_id.as_deref().unwrap_or("pending"), now).await?;
                Ok(Err(DiscrepancyRefund::Refunded(refund_id.to_owned())))
            }
        };
    }
    // Amount and currency as the gateway reported them, else the order's
    // (a VerifyPayment capture through a gateway that reports neither).
    let (amount, currency) = match (amount, currency, &order) {
        (Some(a), Some(cur), _) => (a, cur),
        (_, _, Some(o)) => (o.amount_minor, o.currency.clone()),
        _ => return left("the amount is unknown; refund by hand and acknowledge".into()),
    };
    // What other refunds of this payment already returned is not owed again.
    let owed = amount - refunded_of(c, &payment_id).await?;
    if owed <= 0 {
        mark_refunded(c, discrepancy_id, refund_id, "refunds of this payment already cover it", now).await?;
        return Ok(Err(DiscrepancyRefund::Refunded(refund_id.to_owned())));
    }
    let reason = "payment discrepancy: money taken that bought nothing";
    let known_order = order.as_ref().map(|o| o.id.as_str());
    let p = insert_pending(c, refund_id, &payment_id, known_order, Some(discrepancy_id), owed, &currency, reason, now).await?;
    Ok(Ok(p))
}

async fn mark_refunded(c: &mut Conn, discrepancy_id: i64, refund_id: &str, gateway: &str, now: DateTime<Utc>) -> Result<()> {
    let note = format!("refunded by reconcile --fix: refund {refund_id} (gateway {gateway})");
    let n = diesel::update(pd::table.find(discrepancy_id).filter(pd::status.eq(DiscrepancyStatus::Open)))
        .set((pd::status.eq(DiscrepancyStatus::Refunded), pd::note.eq(&note), pd::resolved_at.eq(now)))
        .execute(c)
        .await?;
    if n == 1 {
        diesel::insert_into(reconcile_audit::table)
            .values((
                reconcile_audit::kind.eq(crate::reconcile::FindingKind::PaymentDiscrepancy.as_str()),
                reconcile_audit::subject_id.eq(discrepancy_id.to_string()),
                reconcile_audit::action.eq("refunded"),
                reconcile_audit::note.eq(&note),
                reconcile_audit::created_at.eq(now),
            ))
            .execute(c)
            .await?;
        tracing::info!(discrepancy_id, refund_id, "payment discrepancy refunded");
    }
    Ok(())
}

/// Refunds what is still owed of the payment of an OPEN discrepancy,
/// through the same steps as [`refund_order`], and marks it REFUNDED with an
/// audit row. Safe to run concurrently and repeatedly: the refund id is
/// derived from the discrepancy, so there is one refund at most.
pub async fn refund_discrepancy(app: &App, discrepancy_id: i64) -> Result<DiscrepancyRefund> {
    let now = app.clock.now();
    let refund_id = format!("{DISCREPANCY_PREFIX}{discrepancy_id}");
    let pending = {
        let mut conn = app.conn().await?;
        match shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| begin_discrepancy(c, discrepancy_id, &refund_id, now)
            .await)?
        {
            Ok(p) => p,
            Err(done) => return Ok(done),
        }
    };
    let answer = ask_gateway(app, &pending).await;
    let mut conn = app.conn().await?;
    shared::retry_tx!(&mut conn, Races::Conflicts, |c| {
        if let Some(order_id) = &pending.order_id {
            orders::lock_optional(c, order_id).await?;
        }
        pd::table.find(discrepancy_id).select(pd::id).for_update().first::<i64>(c).await?;
        record(c, &pending.id, &answer, now).await?;
        Ok::<_, Error>(match &answer {
            Answer::Accepted { gateway_id, .. } => {
                mark_refunded(c, discrepancy_id, &refund_id, gateway_id, now).await?;
                DiscrepancyRefund::Refunded(refund_id.clone())
            }
            Answer::Refused(why) => DiscrepancyRefund::Left(format!("the gateway refused the refund: {why}")),
            Answer::Unreachable(e) => {
                DiscrepancyRefund::Left(format!("the gateway is unreachable ({e}); the next run asks again"))
            }
        })
    })
}
