//! Payment discrepancies: money the gateway took that buys nothing (a late
//! payment of a superseded or cancelled order, a second payment of a paid
//! order, an amount or order that does not match). Each gateway payment is
//! at most one row; it stays OPEN, reported by reconciliation with a
//! non-zero exit, until it is refunded or an operator acknowledges it with a
//! note. Nothing closes one silently.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;

use crate::{Error, Result, schema::payment_discrepancies as pd};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The user's subscription was bought by a newer order.
    OrderSuperseded,
    /// The order was withdrawn (its checkout session was cleaned up).
    OrderCancelled,
    /// The order was already paid with another payment.
    SecondPayment,
    /// The payment's amount or currency is not the order's.
    AmountMismatch,
    /// The payment names an order billing never created.
    UnknownOrder,
    /// Recorded before kinds were told apart (read the detail).
    RecordedBeforeClassification,
    /// A renewal paid for a period its subscription will not have (it was
    /// cancelled now, fully refunded or replaced first).
    SubscriptionEnded,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrderSuperseded => "ORDER_SUPERSEDED",
            Kind::OrderCancelled => "ORDER_CANCELLED",
            Kind::SecondPayment => "SECOND_PAYMENT",
            Kind::AmountMismatch => "AMOUNT_MISMATCH",
            Kind::UnknownOrder => "UNKNOWN_ORDER",
            Kind::RecordedBeforeClassification => "RECORDED_BEFORE_CLASSIFICATION",
            Kind::SubscriptionEnded => "SUBSCRIPTION_ENDED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Kind::OrderSuperseded,
            Kind::OrderCancelled,
            Kind::SecondPayment,
            Kind::AmountMismatch,
            Kind::UnknownOrder,
            Kind::RecordedBeforeClassification,
            Kind::SubscriptionEnded,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The capture path that met the payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    VerifyPayment,
    Webhook,
    Reconcile,
    /// The renewal job's charge of a saved payment method.
    RenewalCharge,
    /// A subscription ended with a renewal already paid.
    SubscriptionEnded,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::VerifyPayment => "VERIFY_PAYMENT",
            Source::Webhook => "WEBHOOK",
            Source::Reconcile => "RECONCILE",
            Source::RenewalCharge => "RENEWAL_CHARGE",
            Source::SubscriptionEnded => "SUBSCRIPTION_ENDED",
        }
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
            self.kind.as_str(),
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
    let row: Option<(String, Option<String>, String)> = pd::table
        .filter(pd::payment_id.eq(payment_id))
        .select((pd::kind, pd::order_id, pd::detail))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|(kind, order_id, detail)| Discrepancy {
        kind: Kind::parse(&kind).unwrap_or(Kind::RecordedBeforeClassification),
        order_id,
        payment_id: payment_id.to_owned(),
        detail,
    }))
}

/// Records `d` in the caller's transaction (once per payment id).
pub async fn record(
    conn: &mut Conn,
    d: &Discrepancy,
    paid: Option<(i64, &str)>,
    source: Source,
    now: DateTime<Utc>,
) -> Result<()> {
    tracing::warn!(kind = d.kind.as_str(), order_id = ?d.order_id, payment_id = %d.payment_id, detail = %d.detail,
        "payment discrepancy: money taken without a subscription, refund due");
    diesel::insert_into(pd::table)
        .values((
            pd::payment_id.eq(&d.payment_id),
            pd::order_id.eq(&d.order_id),
            pd::kind.eq(d.kind.as_str()),
            pd::amount_minor.eq(paid.map(|p| p.0)),
            pd::currency.eq(paid.map(|p| p.1)),
            pd::source.eq(source.as_str()),
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
    let n = diesel::update(pd::table.find(id).filter(pd::status.eq("OPEN")))
        .set((pd::status.eq("ACKNOWLEDGED"), pd::note.eq(note), pd::resolved_at.eq(now)))
        .execute(conn)
        .await?;
    if n == 0 && pd::table.find(id).select(pd::id).first::<i64>(conn).await.optional()?.is_none() {
        return Err(Error::not_found("payment_discrepancy", id));
    }
    Ok(n == 1)
}
