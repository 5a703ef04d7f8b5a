//! An operator's acknowledgement: closes, with a note and an audit row, a
//! finding that `fix` never closes (a payment discrepancy, a foreign
//! payment, a refused webhook event).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::db::Conn;

use super::{
    FindingKind::{self, *},
    audit,
};
use crate::{Error, Result, discrepancies, schema::webhook_events};

/// The finding kinds an operator acknowledges (`billing-svc acknowledge
/// --kind`), spelled as `reconcile` prints them; the rest are repaired by
/// `--fix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcknowledgedKind {
    #[value(name = "PAYMENT_DISCREPANCY")]
    PaymentDiscrepancy,
    #[value(name = "FOREIGN_PAYMENT")]
    ForeignPayment,
    #[value(name = "WEBHOOK_REJECTED")]
    WebhookRejected,
}

impl AcknowledgedKind {
    pub fn finding_kind(self) -> FindingKind {
        match self {
            AcknowledgedKind::PaymentDiscrepancy => PaymentDiscrepancy,
            AcknowledgedKind::ForeignPayment => ForeignPayment,
            AcknowledgedKind::WebhookRejected => WebhookRejected,
        }
    }
}

/// An operator closes a finding that `fix` never closes: a payment
/// discrepancy (refunded at the gateway by hand, or judged not owed) or a
/// refused webhook event, with a note, audited. Returns false when it was
/// already closed.
pub async fn acknowledge(conn: &mut Conn, kind: &str, subject: &str, note: &str, now: DateTime<Utc>) -> Result<bool> {
    let note = note.trim();
    if note.is_empty() {
        return Err(Error::invalid("note", "is required: say why this is closed"));
    }
    let refusal = || {
        Error::invalid(
            "kind",
            format!(
                "only {PaymentDiscrepancy}, {ForeignPayment} and {WebhookRejected} are acknowledged; the rest are repaired by --fix"
            ),
        )
    };
    let kind: FindingKind = kind.parse().map_err(|_| refusal())?;
    conn.transaction(async |c| {
        let closed = match kind {
            PaymentDiscrepancy | ForeignPayment => {
                let id: i64 = subject.parse().map_err(|_| Error::invalid("subject", "must be a payment discrepancy id"))?;
                discrepancies::acknowledge(c, id, note, now).await?
            }
            WebhookRejected => {
                let n = diesel::update(
                    webhook_events::table
                        .find(subject)
                        .filter(webhook_events::outcome.eq(crate::webhooks::EventOutcome::Rejected))
                        .filter(webhook_events::reviewed_note.is_null()),
                )
                .set(webhook_events::reviewed_note.eq(note))
                .execute(c)
                .await?;
                n == 1
            }
            _ => return Err(refusal()),
        };
        if closed {
            audit(c, kind.as_str(), subject, "acknowledged by an operator", Some(note), now).await?;
        }
        Ok(closed)
    })
    .await
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::AcknowledgedKind;

    #[test]
    fn acknowledged_kinds_are_spelled_as_reconcile_prints_them() {
        for k in AcknowledgedKind::value_variants() {
            let name = k.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(name.as_deref(), Some(k.finding_kind().as_str()));
        }
    }
}
