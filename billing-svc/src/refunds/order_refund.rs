//! RefundPayment's order path: step 1 under the order's row lock (`begin`:
//! a replay, or the PENDING row this caller claimed), then the gateway, then
//! the answer recorded under the lock again (`refund_order`).

use chrono::{DateTime, Utc};
use shared::db::{Conn, Races};
use shared::status::ErrorReason;

use super::outcome::{self, Answer, Claim};
use super::{Refund, Refunded, Request, Status, discrepancy, find, insert_pending, refunded_of, settled};
use crate::{App, Error, Result, orders};

/// Step 1 of an order refund, under the order's row lock: a replay of a
/// settled refund, or the PENDING row this caller claimed (new, or one
/// still pending or of unknown outcome).
enum Begun {
    Replay(Refund),
    Ask(Claim),
}

async fn begin(conn: &mut Conn, r: &Request, now: DateTime<Utc>, lease: chrono::Duration) -> Result<Begun> {
    let order = orders::lock_optional(conn, r.order_id.as_str()).await?.ok_or_else(|| Error::not_found("order", &r.order_id))?;
    let subject = format!("order:{}", order.id);
    if let Some(prior) = find(conn, &r.refund_id).await? {
        let same = prior.order_id.as_deref() == Some(order.id.as_str())
            && prior.discrepancy_id.is_none()
            && (r.amount_minor == 0 || r.amount_minor == prior.amount_minor);
        if !same {
            return Err(Error::precondition(
                ErrorReason::RefundIdReused,
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
        return Err(Error::precondition(
            ErrorReason::OrderNotPaid,
            subject,
            format!("order {} has no captured payment", order.id),
        ));
    };
    let left = order.amount_minor - refunded_of(conn, &payment_id).await?;
    let amount = if r.amount_minor == 0 { left } else { r.amount_minor };
    if left <= 0 || amount > left {
        return Err(Error::precondition_with(
            ErrorReason::RefundExceedsCaptured,
            subject,
            format!(
                "order {} captured {} {} and {left} is left to refund; {amount} asked",
                order.id, order.amount_minor, order.currency
            ),
            vec![
                ("refundable_minor", left.max(0).to_string()),
                ("captured_minor", order.amount_minor.to_string()),
                ("requested_minor", amount.to_string()),
                ("currency", order.currency.clone()),
            ],
        ));
    }
    let pending =
        insert_pending(conn, &r.refund_id, &payment_id, Some(&order.id), None, amount, &order.currency, &r.reason, now).await?;
    Ok(Begun::Ask(outcome::claim(conn, &pending, false, now, lease).await?))
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
        Begun::Replay(refund) => return Ok(Refunded { refund, replayed: true }),
        Begun::Ask(claim) => claim,
    };
    let answer = outcome::consult(app, &claim).await;
    let mut conn = app.conn().await?;
    let recorded = shared::retry_tx!(&mut conn, Races::Conflicts, |c| {
        let order = orders::lock_optional(c, r.order_id.as_str()).await?.ok_or_else(|| Error::not_found("order", &r.order_id))?;
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
                ErrorReason::GatewayRefused,
                format!("refund:{}", recorded.id),
                format!("the gateway refused the refund ({why}); it is recorded FAILED and the order is unchanged"),
            ))
        }
        // Refused, but another caller has claimed the refund since: its
        // answer decides; this caller retries.
        Answer::Refused(_) => Err(shared::error::ServiceError::IdempotencyKeyInFlight.into()),
        Answer::Accepted { .. } | Answer::StillPending => {
            tracing::info!(refund_id = %recorded.id, order_id = %r.order_id, amount = recorded.amount_minor, status = %recorded.status, "refund recorded");
            Ok(Refunded { refund: recorded, replayed: claim.replayed })
        }
    }
}
