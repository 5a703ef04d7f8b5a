//! Reconciliation (DESIGN §6): finds inconsistencies and, with `fix`,
//! repairs each one in its own transaction with an audit row. Every repair
//! removes the condition that found it, so a second run finds nothing.
use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;
use shared::db::Conn;
use uuid::Uuid;

use crate::{
    Error, Result, deductions, payments,
    schema::{reconcile_audit, subscriptions, webhook_events},
};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
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

/// (kind, query returning subject + detail). $1 = now, $2 = stuck cutoff.
const CHECKS: &[(&str, &str)] = &[
    (
        "PAID_ORDER_WITHOUT_SUBSCRIPTION",
        "SELECT o.id AS subject, 'order paid at ' || o.paid_at || ' has no subscription' AS detail \
           FROM orders o LEFT JOIN subscriptions s ON s.order_id = o.id \
          WHERE o.status = 'PAID' AND s.id IS NULL",
    ),
    (
        "SUBSCRIPTION_WITHOUT_PAID_ORDER",
        "SELECT s.id::text AS subject, 'plan ' || s.plan_id || ' without a paid order' AS detail \
           FROM subscriptions s JOIN plans p ON p.id = s.plan_id LEFT JOIN orders o ON o.id = s.order_id \
          WHERE s.status <> 'CANCELLED' AND p.price_minor > 0 AND (o.id IS NULL OR o.status <> 'PAID')",
    ),
    (
        "DUPLICATE_SUBSCRIPTIONS_FOR_ORDER",
        "SELECT s.id::text AS subject, 'second subscription for order ' || s.order_id AS detail \
           FROM subscriptions s \
          WHERE s.order_id IS NOT NULL AND s.status <> 'CANCELLED' AND EXISTS ( \
                SELECT 1 FROM subscriptions f WHERE f.order_id = s.order_id AND f.status <> 'CANCELLED' \
                   AND (f.created_at, f.id) < (s.created_at, s.id))",
    ),
    ("WEBHOOK_DISCREPANCY", "SELECT event_id AS subject, detail FROM webhook_events WHERE outcome = 'DISCREPANCY'"),
    (
        "LEDGER_MISMATCH",
        "SELECT s.id::text AS subject, \
                'ledger ' || coalesce(l.total, 0) || ' vs granted-remaining ' || (s.credits_granted - s.credits_remaining) AS detail \
           FROM subscriptions s LEFT JOIN ( \
                SELECT subscription_id, period_start, sum(credits) AS total FROM ledger GROUP BY 1, 2) l \
             ON l.subscription_id = s.id AND l.period_start = s.period_start \
          WHERE coalesce(l.total, 0) <> s.credits_granted - s.credits_remaining",
    ),
    (
        "STUCK_USAGE_SESSION",
        "SELECT id::text AS subject, 'ACTIVE since ' || started_at AS detail FROM usage_sessions \
          WHERE status = 'ACTIVE' AND started_at < $2",
    ),
];

pub async fn run(conn: &mut Conn, now: DateTime<Utc>, stuck_after: chrono::Duration, fix: bool) -> Result<Report> {
    let mut report = Report::default();
    for (kind, sql) in CHECKS {
        let rows: Vec<Subject> = diesel::sql_query(*sql)
            .bind::<sql_types::Timestamptz, _>(now)
            .bind::<sql_types::Timestamptz, _>(now - stuck_after)
            .load(conn)
            .await?;
        for row in rows {
            let fixed = if fix { repair(conn, kind, &row.subject, now).await? } else { false };
            if fixed {
                report.fixed += 1;
            }
            report.findings.push(Finding { kind, subject_id: row.subject, detail: row.detail, fixed });
        }
    }
    if !report.findings.is_empty() {
        tracing::warn!(findings = report.findings.len(), fixed = report.fixed, "reconciliation found inconsistencies");
    }
    Ok(report)
}

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::Internal(format!("bad id {s}: {e}")))
}

async fn repair(conn: &mut Conn, kind: &'static str, subject: &str, now: DateTime<Utc>) -> Result<bool> {
    if !CHECKS.iter().any(|(k, _)| *k == kind) {
        return Ok(false);
    }
    conn.transaction(async |c| {
        let action = match kind {
            // The capture path creates the missing subscription.
            "PAID_ORDER_WITHOUT_SUBSCRIPTION" => {
                let order = crate::orders::get(c, subject).await?;
                let payment_id = order.payment_id.clone().unwrap_or_default();
                let captured = payments::capture_in_tx(c, &order.id, &payment_id, now).await?;
                format!("created subscription {}", captured.subscription.id)
            }
            // Ended through the one deduction path, charging its duration.
            "STUCK_USAGE_SESSION" => {
                let ch = deductions::charge(c, uuid(subject)?, &deductions::Mode::End { manual: 0 }, now).await?;
                format!("ended; charged {} unpaid {}", ch.charged, ch.unpaid)
            }
            "SUBSCRIPTION_WITHOUT_PAID_ORDER" | "DUPLICATE_SUBSCRIPTIONS_FOR_ORDER" => {
                diesel::update(subscriptions::table.find(uuid(subject)?))
                    .set((subscriptions::status.eq("CANCELLED"), subscriptions::updated_at.eq(now)))
                    .execute(c)
                    .await?;
                "cancelled subscription".to_owned()
            }
            "WEBHOOK_DISCREPANCY" => {
                diesel::update(webhook_events::table.find(subject))
                    .set(webhook_events::outcome.eq("DISCREPANCY_REVIEWED"))
                    .execute(c)
                    .await?;
                "marked reviewed; refund or re-capture at the gateway by hand".to_owned()
            }
            _ => {
                // LEDGER_MISMATCH: trust the ledger, it has a row per credit.
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
        audit(c, kind, subject, &action, now).await
    })
    .await?;
    Ok(true)
}

async fn audit(conn: &mut Conn, kind: &str, subject: &str, action: &str, now: DateTime<Utc>) -> Result<()> {
    tracing::info!(kind, subject, action, "reconcile repair");
    diesel::insert_into(reconcile_audit::table)
        .values((
            reconcile_audit::kind.eq(kind),
            reconcile_audit::subject_id.eq(subject),
            reconcile_audit::action.eq(action),
            reconcile_audit::created_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
