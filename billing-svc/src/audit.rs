//! The audit trail (`reconcile_audit`) and the kinds of finding it names:
//! what reconciliation repaired, what an operator acknowledged, what a
//! refund did to a payment discrepancy. Below `refunds` and `reconcile`,
//! which both write it (docs/design.md, Components).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;

use crate::{Result, schema::reconcile_audit};

shared::text_enum! {
    /// What reconciliation finds (docs/design.md, "Payment discrepancies and
    /// reconciliation").
    pub enum FindingKind {
        PaidOrderWithoutSubscription = "PAID_ORDER_WITHOUT_SUBSCRIPTION",
        SubscriptionWithoutPaidOrder = "SUBSCRIPTION_WITHOUT_PAID_ORDER",
        DuplicateSubscriptionsForOrder = "DUPLICATE_SUBSCRIPTIONS_FOR_ORDER",
        /// Closed by a refund (`--fix`) or an operator's acknowledgement.
        PaymentDiscrepancy = "PAYMENT_DISCREPANCY",
        /// Closed only by an operator's acknowledgement.
        WebhookRejected = "WEBHOOK_REJECTED",
        /// A payment of an order this system never created (another
        /// integration on the same gateway account): not ours to refund.
        /// Closed only by an operator's acknowledgement.
        ForeignPayment = "FOREIGN_PAYMENT",
        LedgerMismatch = "LEDGER_MISMATCH",
        StuckUsageSession = "STUCK_USAGE_SESSION",
        /// Information only (`reconcile` with CHECKOUT_ENDPOINT): a paid
        /// order whose checkout session checkout does not know.
        PaidOrderUnknownToCheckout = "PAID_ORDER_UNKNOWN_TO_CHECKOUT",
    }
}

/// Writes one audit row, in the caller's transaction.
pub async fn record(
    conn: &mut Conn,
    kind: &str,
    subject: &str,
    action: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    diesel::insert_into(reconcile_audit::table)
        .values((
            reconcile_audit::kind.eq(kind),
            reconcile_audit::subject_id.eq(subject),
            reconcile_audit::action.eq(action),
            reconcile_audit::note.eq(note),
            reconcile_audit::created_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
