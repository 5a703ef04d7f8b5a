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
//!
//! Layout: the checks and the re-check under locks in `checks`, the repairs
//! in `fixes`, ListFindings paging in `paging`, operator acknowledgements in
//! `acknowledgements`.
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::db::Conn;

use crate::{App, Result, refunds::DiscrepancyRefund};

mod acknowledgements;
mod checks;
mod fixes;
mod paging;

pub use acknowledgements::{AcknowledgedKind, acknowledge};
pub use checks::{checked_kinds, is_checked};
pub use paging::page;

use checks::{CHECKS, check};
use fixes::{refund_discrepancy, repair};

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

use FindingKind::*;

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

async fn audit(conn: &mut Conn, kind: &str, subject: &str, action: &str, note: Option<&str>, now: DateTime<Utc>) -> Result<()> {
    tracing::info!(kind, subject, action, "reconcile repair");
    crate::audit::record(conn, kind, subject, action, note, now).await
}
