//! The checks: one read-only query per finding kind, run in a fixed order,
//! and the fresh re-check a repair makes under its locks.
use chrono::{DateTime, Utc};
use diesel::{QueryableByName, sql_types};
use diesel_async::RunQueryDsl;
use shared::db::Conn;

use super::FindingKind::{self, *};
use crate::{App, Result};

#[derive(QueryableByName)]
pub(super) struct Subject {
    #[diesel(sql_type = sql_types::Text)]
    pub(super) subject: String,
    #[diesel(sql_type = sql_types::Text)]
    pub(super) detail: String,
}

/// (kind, query returning subject + detail). $1 = now, $2 = stuck cutoff.
pub(super) const CHECKS: &[(FindingKind, &str)] = &[
    (
        PaidOrderWithoutSubscription,
        "SELECT o.id AS subject, 'order paid at ' || o.paid_at || ' has no subscription' AS detail \
           FROM orders o LEFT JOIN subscriptions s ON s.order_id = o.id \
          WHERE o.status = 'PAID' AND s.id IS NULL AND o.renews_subscription_id IS NULL AND o.plan_change_id IS NULL \
            AND NOT EXISTS (SELECT 1 FROM payment_discrepancies d WHERE d.payment_id = o.payment_id)",
    ),
    (
        SubscriptionWithoutPaidOrder,
        "SELECT s.id::text AS subject, 'plan ' || s.plan_id || ' without a paid order' AS detail \
           FROM subscriptions s JOIN plans p ON p.id = s.plan_id LEFT JOIN orders o ON o.id = s.order_id \
          WHERE s.status <> 'CANCELLED' AND p.price_minor > 0 AND (o.id IS NULL OR o.status <> 'PAID') \
            AND s.trial_end IS NULL",
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

/// One check's rows, by subject id: with the checks' order, the stable
/// order of a run's findings and of [`page`](super::page).
pub(super) async fn check(app: &App, sql: &str, now: DateTime<Utc>, stuck_after: chrono::Duration) -> Result<Vec<Subject>> {
    let mut rows: Vec<Subject> = diesel::sql_query(sql)
        .bind::<sql_types::Timestamptz, _>(now)
        .bind::<sql_types::Timestamptz, _>(now - stuck_after)
        .load(&mut *app.conn().await?)
        .await?;
    rows.sort_by(|a, b| a.subject.cmp(&b.subject));
    Ok(rows)
}

/// Whether reconciliation has a check of this kind (a page token names one).
pub fn is_checked(kind: FindingKind) -> bool {
    CHECKS.iter().any(|(k, _)| *k == kind)
}

/// The kinds every run checks, in check order: what an answer with no
/// findings vouches for.
pub fn checked_kinds() -> impl Iterator<Item = FindingKind> {
    CHECKS.iter().map(|(k, _)| *k)
}

/// Whether finding (`kind`, `subject`) still holds, from a fresh snapshot.
pub(super) async fn still_holds(
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
