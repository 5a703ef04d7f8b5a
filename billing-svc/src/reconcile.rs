//! Reconciliation: finds inconsistencies and, with `fix`, repairs each one in
//! its own transaction with an audit row. A repair first takes the locks the
//! normal path takes, then checks again that the finding still holds, so a
//! finding is repaired at most once however many runs race, and never from
//! a stale snapshot. Every repair removes the condition that found it, so a
//! second run finds nothing new.
//!
//! Payment discrepancies (money taken that bought nothing) are closed by
//! `fix` only through a refund ([`crate::refunds::refund_discrepancy`]: the
//! RefundPayment path, audited); one that cannot be refunded (amount
//! unknown, gateway refusal) stays a finding. A payment of an order billing
//! never created (`FOREIGN_PAYMENT`: another integration on the same gateway
//! account) and refused webhook events are never closed by `fix`. Both keep the exit code non-zero until refunded
//! or acknowledged by an operator with a note ([`acknowledge`], audited).
use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;
use shared::db::Conn;
use uuid::Uuid;

use crate::{
    App, Error, Result, deductions, discrepancies,
    discrepancies::Source,
    orders,
    payments::{self, Capture, Payment},
    refunds::{self, DiscrepancyRefund},
    schema::{subscriptions, webhook_events},
    subscriptions::{self as subscriptions_model, Status as SubStatus},
};

pub use crate::audit::FindingKind;

fn as_text<S: serde::Serializer>(k: &FindingKind, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    #[serde(serialize_with = "as_text")]
    pub kind: FindingKind,
    pub subject_id: String,
    pub detail: String,
    pub fixed: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub fixed: usize,
}

#[derive(QueryableByName)]
struct Subject {
    #[diesel(sql_type = sql_types::Text)]
    subject: String,
    #[diesel(sql_type = sql_types::Text)]
    detail: String,
}

use FindingKind::*;

/// (kind, query returning subject + detail). $1 = now, $2 = stuck cutoff.
const CHECKS: &[(FindingKind, &str)] = &[
    (
        PaidOrderWithoutSubscription,
        "SELECT o.id AS subject, 'order paid at ' || o.paid_at || ' has no subscription' AS detail \
           FROM orders o LEFT JOIN subscriptions s ON s.order_id = o.id \
          WHERE o.status = 'PAID' AND s.id IS NULL AND o.renews_subscription_id IS NULL \
            AND NOT EXISTS (SELECT 1 FROM payment_discrepancies d WHERE d.payment_id = o.payment_id)",
    ),
    (
        SubscriptionWithoutPaidOrder,
        "SELECT s.id::text AS subject, 'plan ' || s.plan_id || ' without a paid order' AS detail \
           FROM subscriptions s JOIN plans p ON p.id = s.plan_id LEFT JOIN orders o ON o.id = s.order_id \
          WHERE s.status <> 'CANCELLED' AND p.price_minor > 0 AND (o.id IS NULL OR o.status <> 'PAID')",
    ),
    (
        DuplicateSubscriptionsForOrder,
        "SELECT s.id::text AS subject, 'second subscription for order ' || s.order_id AS detail \
           FROM subscriptions s \
          WHERE s.order_id IS NOT NULL AND s.status <> 'CANCELLED' AND EXISTS ( \
                SELECT 1 FROM subscriptions f WHERE f.order_id = s.order_id AND f.status <> 'CANCELLED' \
                   AND (f.created_at, f.id) < (s.created_at, s.id))",
    ),
    (
        PaymentDiscrepancy,
        "SELECT id::text AS subject, \
                kind || ': ' || detail || ' (payment ' || payment_id || \
                coalesce(', ' || amount_minor || ' ' || currency, '') || '); refund it or acknowledge it' AS detail \
           FROM payment_discrepancies WHERE status = 'OPEN' AND kind <> 'UNKNOWN_ORDER'",
    ),
    // An order billing never created is another integration's (the same
    // gateway account serves several): refunding its payment would take
    // money back from a sale that is not ours.
    (
        ForeignPayment,
        "SELECT id::text AS subject, \
                detail || ' (payment ' || payment_id || coalesce(', ' || amount_minor || ' ' || currency, '') || \
                '): an order this system did not create; never refunded here: check it at the gateway, then acknowledge' AS detail \
           FROM payment_discrepancies WHERE status = 'OPEN' AND kind = 'UNKNOWN_ORDER'",
    ),
    (
        WebhookRejected,
        "SELECT event_id AS subject, 'stored but refused: ' || detail AS detail FROM webhook_events \
          WHERE outcome = 'REJECTED' AND reviewed_note IS NULL",
    ),
    (
        LedgerMismatch,
        "SELECT s.id::text AS subject, \
                'ledger ' || coalesce(l.total, 0) || ' vs granted-remaining ' || (s.credits_granted - s.credits_remaining) AS detail \
           FROM subscriptions s LEFT JOIN ( \
                SELECT subscription_id, period_start, sum(credits) AS total FROM ledger GROUP BY 1, 2) l \
             ON l.subscription_id = s.id AND l.period_start = s.period_start \
          WHERE coalesce(l.total, 0) <> s.credits_granted - s.credits_remaining",
    ),
    (
        StuckUsageSession,
        "SELECT id::text AS subject, 'ACTIVE since ' || started_at AS detail FROM usage_sessions \
          WHERE status = 'ACTIVE' AND started_at < $2",
    ),
];

/// One run. A pooled connection is taken per check and per repair and
/// never held across a gateway call (a discrepancy's refund asks the
/// gateway and takes connections of its own): with `DB_POOL_SIZE=1` a run
/// must not wait on itself, and a slow gateway must not pin a connection.
pub async fn run(app: &App, now: DateTime<Utc>, stuck_after: chrono::Duration, fix: bool) -> Result<Report> {
    let mut report = Report::default();
    for (kind, sql) in CHECKS {
        let rows = check(app, sql, now, stuck_after).await?;
        for mut row in rows {
            let fixed = if !fix {
                false
            } else if *kind == PaymentDiscrepancy {
                match refund_discrepancy(app, &row.subject).await? {
                    DiscrepancyRefund::Refunded(refund_id) => {
                        row.detail = format!("{}; refunded (refund {refund_id})", row.detail);
                        true
                    }
                    DiscrepancyRefund::Left(why) => {
                        row.detail = format!("{}; not refunded: {why}", row.detail);
                        false
                    }
                }
            } else {
                repair(&mut *app.conn().await?, *kind, &row.subject, now, stuck_after).await?
            };
            if fixed {
                report.fixed += 1;
            }
            report.findings.push(Finding { kind: *kind, subject_id: row.subject, detail: row.detail, fixed });
        }
    }
    if !report.findings.is_empty() {
        tracing::warn!(findings = report.findings.len(), fixed = report.fixed, "reconciliation found inconsistencies");
    }
    Ok(report)
}

/// One check's rows, by subject id: with the checks' order, the stable
/// order of a run's findings and of [`page`].
async fn check(app: &App, sql: &str, now: DateTime<Utc>, stuck_after: chrono::Duration) -> Result<Vec<Subject>> {
    let mut rows: Vec<Subject> = diesel::sql_query(sql)
        .bind::<sql_types::Timestamptz, _>(now)
        .bind::<sql_types::Timestamptz, _>(now - stuck_after)
        .load(&mut *app.conn().await?)
        .await?;
    rows.sort_by(|a, b| a.subject.cmp(&b.subject));
    Ok(rows)
}

/// A page of what a run without `fix` would report now, after `after`
/// (kind, subject), and the position to continue after when more follow.
/// Findings are not stored, so each page runs the checks again (they only
/// read); checks before the token's kind are skipped.
pub async fn page(
    app: &App,
    now: DateTime<Utc>,
    stuck_after: chrono::Duration,
    page_size: usize,
    after: Option<(FindingKind, String)>,
) -> Result<(Vec<Finding>, Option<(FindingKind, String)>)> {
    let start = match &after {
        Some((k, _)) => CHECKS.iter().position(|(c, _)| c == k).unwrap_or(CHECKS.len()),
        None => 0,
    };
    let mut out = Vec::new();
    for (kind, sql) in &CHECKS[start..] {
        for row in check(app, sql, now, stuck_after).await? {
            if let Some((k, subject)) = &after
                && k == kind
                && row.subject.as_str() <= subject.as_str()
            {
                continue;
            }
            if out.len() == page_size {
                let next = out.last().map(|f: &Finding| (f.kind, f.subject_id.clone()));
                return Ok((out, next));
            }
            out.push(Finding { kind: *kind, subject_id: row.subject, detail: row.detail, fixed: false });
        }
    }
    Ok((out, None))
}

/// Whether reconciliation has a check of this kind (a page token names one).
pub fn is_checked(kind: FindingKind) -> bool {
    CHECKS.iter().any(|(k, _)| *k == kind)
}

async fn refund_discrepancy(app: &App, subject: &str) -> Result<DiscrepancyRefund> {
    let id: i64 = subject.parse().map_err(|e| Error::internal(format!("bad discrepancy id {subject}: {e}")))?;
    refunds::refund_discrepancy(app, id).await
}

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::internal(format!("bad id {s}: {e}")))
}

/// Whether finding (`kind`, `subject`) still holds, from a fresh snapshot.
async fn still_holds(
    c: &mut Conn,
    kind: FindingKind,
    subject: &str,
    now: DateTime<Utc>,
    stuck_after: chrono::Duration,
) -> Result<bool> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = sql_types::BigInt)]
        n: i64,
    }
    let Some((_, sql)) = CHECKS.iter().find(|(k, _)| *k == kind) else { return Ok(false) };
    let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM ({sql}) q WHERE q.subject = $3"))
        .bind::<sql_types::Timestamptz, _>(now)
        .bind::<sql_types::Timestamptz, _>(now - stuck_after)
        .bind::<sql_types::Text, _>(subject)
        .get_result(c)
        .await?;
    Ok(n.n > 0)
}

async fn lock_subscription(c: &mut Conn, id: Uuid) -> Result<()> {
    subscriptions::table.find(id).select(subscriptions::id).for_update().first::<Uuid>(c).await.optional()?;
    Ok(())
}

/// Repairs one finding if it still holds once its rows are locked; returns
/// whether a repair (and its audit row) was written.
async fn repair(c: &mut Conn, kind: FindingKind, subject: &str, now: DateTime<Utc>, stuck: chrono::Duration) -> Result<bool> {
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

async fn audit(conn: &mut Conn, kind: &str, subject: &str, action: &str, note: Option<&str>, now: DateTime<Utc>) -> Result<()> {
    tracing::info!(kind, subject, action, "reconcile repair");
    crate::audit::record(conn, kind, subject, action, note, now).await
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
