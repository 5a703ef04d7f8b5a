//! Payment discrepancies: money the gateway took that buys nothing (a late
//! payment of a superseded or cancelled order, a second payment of a paid
//! order, an amount or order that does not match). Each gateway payment is
//! at most one row; it stays OPEN, reported by reconciliation with a
//! non-zero exit, until it is refunded or an operator acknowledges it with a
//! note. Nothing closes one silently.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{db::Conn, status::ErrorReason};

use crate::{Error, Result, money::Money, schema::payment_discrepancies as pd};

shared::text_enum! {
    /// Why a payment bought nothing.
    pub enum Kind {
        /// The user's subscription was bought by a newer order.
        OrderSuperseded = "ORDER_SUPERSEDED",
        /// The order was withdrawn (its checkout session was cleaned up, or
        /// the subscription it renews ended).
        OrderCancelled = "ORDER_CANCELLED",
        /// The order was already paid with another payment.
        SecondPayment = "SECOND_PAYMENT",
        /// The payment's amount or currency is not the order's.
        AmountMismatch = "AMOUNT_MISMATCH",
        /// The payment names an order billing never created.
        UnknownOrder = "UNKNOWN_ORDER",
        /// Recorded before kinds were told apart (read the detail).
        RecordedBeforeClassification = "RECORDED_BEFORE_CLASSIFICATION",
        /// A renewal paid for a period its subscription will not have (it
        /// was cancelled, fully refunded or replaced first).
        SubscriptionEnded = "SUBSCRIPTION_ENDED",
    }
}

impl Kind {
    /// The error reason VerifyPayment answers a payment of this kind with:
    /// the same name, so PreconditionFailure.type and ErrorInfo.reason agree.
    pub fn reason(self) -> ErrorReason {
        match self {
            Kind::OrderSuperseded => ErrorReason::OrderSuperseded,
            Kind::OrderCancelled => ErrorReason::OrderCancelled,
            Kind::SecondPayment => ErrorReason::SecondPayment,
            Kind::AmountMismatch => ErrorReason::AmountMismatch,
            Kind::UnknownOrder => ErrorReason::UnknownOrder,
            Kind::RecordedBeforeClassification => ErrorReason::RecordedBeforeClassification,
            Kind::SubscriptionEnded => ErrorReason::SubscriptionEnded,
        }
    }
}

shared::text_enum! {
    /// The capture path that met the payment.
    pub enum Source {
        VerifyPayment = "VERIFY_PAYMENT",
        Webhook = "WEBHOOK",
        Reconcile = "RECONCILE",
        /// The renewal job's charge of a saved payment method.
        RenewalCharge = "RENEWAL_CHARGE",
        /// A subscription ended with a renewal already paid.
        SubscriptionEnded = "SUBSCRIPTION_ENDED",
    }
}

shared::text_enum! {
    /// OPEN until refunded (reconcile --fix) or acknowledged by an operator.
    pub enum Status {
        Open = "OPEN",
        Acknowledged = "ACKNOWLEDGED",
        Refunded = "REFUNDED",
    }
}

/// A payment that bought nothing, as the capture path found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub kind: Kind,
    pub order_id: Option<String>,
    pub payment_id: String,
    pub detail: String,
}

impl Discrepancy {
    /// What the caller of VerifyPayment (and so CompleteSession) hears: the
    /// money is recorded for a refund, no subscription was created.
    pub fn to_error(&self) -> Error {
        Error::precondition(
            self.kind.reason(),
            format!("payment:{}", self.payment_id),
            format!("{}; the payment is recorded for a refund and bought no subscription", self.detail),
        )
    }
}

/// The discrepancy already recorded for `payment_id`, if any: such a payment
/// never buys anything later (a retried VerifyPayment without an amount, a
/// redelivered event after the newer plan ended), or it would be both a
/// subscription and an open refund.
pub async fn of_payment(conn: &mut Conn, payment_id: &str) -> Result<Option<Discrepancy>> {
    let row: Option<(Kind, Option<String>, String)> = pd::table
        .filter(pd::payment_id.eq(payment_id))
        .select((pd::kind, pd::order_id, pd::detail))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|(kind, order_id, detail)| Discrepancy { kind, order_id, payment_id: payment_id.to_owned(), detail }))
}

/// Records `d` in the caller's transaction (once per payment id).
pub async fn record(conn: &mut Conn, d: &Discrepancy, paid: Option<Money<'_>>, source: Source, now: DateTime<Utc>) -> Result<()> {
    tracing::warn!(kind = d.kind.as_str(), order_id = ?d.order_id, payment_id = %d.payment_id, detail = %d.detail,
        "payment discrepancy: money taken without a subscription, refund due");
    diesel::insert_into(pd::table)
        .values((
            pd::payment_id.eq(&d.payment_id),
            pd::order_id.eq(&d.order_id),
            pd::kind.eq(d.kind),
            pd::amount_minor.eq(paid.map(|p| p.minor)),
            pd::currency.eq(paid.map(|p| p.currency)),
            pd::source.eq(source),
            pd::detail.eq(&d.detail),
            pd::created_at.eq(now),
        ))
        .on_conflict(pd::payment_id)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// An operator's explicit acknowledgement (refunded at the gateway by hand,
/// or judged not owed), with a note; audited by the caller. Returns false
/// when the discrepancy was not OPEN.
pub async fn acknowledge(conn: &mut Conn, id: i64, note: &str, now: DateTime<Utc>) -> Result<bool> {
    let n = diesel::update(pd::table.find(id).filter(pd::status.eq(Status::Open)))
        .set((pd::status.eq(Status::Acknowledged), pd::note.eq(note), pd::resolved_at.eq(now)))
        .execute(conn)
        .await?;
    if n == 0 && pd::table.find(id).select(pd::id).first::<i64>(conn).await.optional()?.is_none() {
        return Err(Error::not_found("payment_discrepancy", id));
    }
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    /// VerifyPayment answers a recorded payment with its kind as both the
    /// PreconditionFailure type and the ErrorInfo reason: the names agree.
    #[test]
    fn every_kind_has_the_reason_of_its_name() {
        for name in [
            "ORDER_SUPERSEDED",
            "ORDER_CANCELLED",
            "SECOND_PAYMENT",
            "AMOUNT_MISMATCH",
            "UNKNOWN_ORDER",
            "RECORDED_BEFORE_CLASSIFICATION",
            "SUBSCRIPTION_ENDED",
        ] {
            let kind = Kind::from_str(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(kind.reason().as_str_name(), kind.as_str());
            assert_eq!(kind.reason().code(), tonic::Code::FailedPrecondition, "{name}");
        }
    }
}
