//! The fixes: a finding's repair under the locks the normal path takes,
//! after a fresh re-check, with its audit row; a payment discrepancy's
//! refund.
use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use super::{
    FindingKind::{self, *},
    audit,
    checks::still_holds,
};
use crate::{
    App, Error, Result, deductions,
    discrepancies::Source,
    orders,
    payments::{self, Capture, Payment},
    refunds::{self, DiscrepancyRefund},
    schema::subscriptions,
    subscriptions::{self as subscriptions_model, Status as SubStatus},
};

pub(super) async fn refund_discrepancy(app: &App, subject: &str) -> Result<DiscrepancyRefund> {
    let id: i64 = subject.parse().map_err(|e| Error::internal(format!("bad discrepancy id {subject}: {e}")))?;
    refunds::refund_discrepancy(app, id).await
}

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::internal(format!("bad id {s}: {e}")))
}

async fn lock_subscription(c: &mut Conn, id: Uuid) -> Result<()> {
    subscriptions::table.find(id).select(subscriptions::id).for_update().first::<Uuid>(c).await.optional()?;
    Ok(())
}

/// Repairs one finding if it still holds once its rows are locked; returns
/// whether a repair (and its audit row) was written.
pub(super) async fn repair(
    c: &mut Conn,
    kind: FindingKind,
    subject: &str,
    now: DateTime<Utc>,
    stuck: chrono::Duration,
) -> Result<bool> {
    // A lost race (a deadlock with a capture locking in the other order) is
    // retried from the top: locks, then the fresh re-check.
    shared::retry_tx!(c, shared::db::Races::Conflicts, |c| {
        // The locks of the normal path first, in its order.
        match kind {
            PaidOrderWithoutSubscription => {
                orders::lock_optional(c, subject).await?;
            }
            SubscriptionWithoutPaidOrder | DuplicateSubscriptionsForOrder | LedgerMismatch => {
                lock_subscription(c, uuid(subject)?).await?
            }
            // The deduction function takes its own locks and is idempotent.
            StuckUsageSession => {}
            // Closed only by a refund or an operator's acknowledgement.
            PaymentDiscrepancy | WebhookRejected | ForeignPayment | PaidOrderUnknownToCheckout => return Ok(false),
        }
        if !still_holds(c, kind, subject, now, stuck).await? {
            return Ok(false);
        }
        let action = match kind {
            // The capture path creates the missing subscription, or records
            // the payment as a discrepancy when a newer order's
            // subscription is live.
            PaidOrderWithoutSubscription => {
                let order = orders::get(c, subject).await?;
                let payment_id = order.payment_id.clone().unwrap_or_default();
                let payment = Payment {
                    order_id: &order.id,
                    payment_id: &payment_id,
                    paid: None,
                    saved_method: None,
                    source: Source::Reconcile,
                };
                match payments::capture_in_tx(c, payment, now).await? {
                    Capture::Captured(cap) => format!("created subscription {}", cap.subscription.id),
                    Capture::Discrepancy(d) => format!("recorded payment discrepancy {}: {}", d.kind.as_str(), d.detail),
                }
            }
            // Ended through the one deduction path, charging its duration.
            StuckUsageSession => {
                let ch = deductions::charge(c, uuid(subject)?, &deductions::Mode::End { manual: 0 }, now).await?;
                if ch.replayed {
                    return Ok(false);
                }
                format!("ended; charged {} unpaid {}", ch.charged, ch.unpaid)
            }
            SubscriptionWithoutPaidOrder | DuplicateSubscriptionsForOrder => {
                let sub = subscriptions_model::get(c, uuid(subject)?).await?;
                if sub.status.is_live() {
                    // As any ending: credits forfeited through the ledger,
                    // the open renewal cancelled, a paid one owed back.
                    subscriptions_model::end_now(c, &sub, now).await?;
                } else {
                    diesel::update(subscriptions::table.find(sub.id))
                        .set((
                            subscriptions::status.eq(SubStatus::Cancelled),
                            subscriptions::ended_at.eq(sub.ended_at.unwrap_or(now)),
                            subscriptions::updated_at.eq(now),
                        ))
                        .execute(c)
                        .await?;
                }
                "cancelled subscription".to_owned()
            }
            _ => {
                // LEDGER_MISMATCH: trust the ledger, it has a row per credit.
                // The row is locked, so no deduction commits in between.
                diesel::sql_query(
                    "UPDATE subscriptions s SET \
                       credits_granted = greatest(s.credits_granted, l.total), \
                       credits_remaining = greatest(s.credits_granted, l.total) - l.total, \
                       updated_at = $2 \
                     FROM (SELECT coalesce(sum(credits), 0) AS total FROM ledger \
                            WHERE subscription_id = $1 \
                              AND period_start = (SELECT period_start FROM subscriptions WHERE id = $1)) l \
                     WHERE s.id = $1",
                )
                .bind::<sql_types::Uuid, _>(uuid(subject)?)
                .bind::<sql_types::Timestamptz, _>(now)
                .execute(c)
                .await?;
                "balance set from the ledger".to_owned()
            }
        };
        audit(c, kind.as_str(), subject, &action, None, now).await?;
        Ok::<_, Error>(true)
    })
}
