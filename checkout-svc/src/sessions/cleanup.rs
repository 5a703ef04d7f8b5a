//! Cleanup: ACTIVE sessions past 24 h become EXPIRED; non-COMPLETED sessions
//! older than 7 days are deleted. Before touching anything it asks billing
//! whether the orders were paid (completion sync): a paid session is
//! completed, never expired or deleted; when billing cannot be asked, the
//! run leaves those sessions alone. Conditional UPDATE/DELETE statements make
//! concurrent runs on several replicas add up to one run.
use chrono::{DateTime, Utc};
use diesel::{dsl::count_star, prelude::*};
use diesel_async::RunQueryDsl;
use proto::billing::v1 as bpb;
use shared::client::Budget;
use uuid::Uuid;

use super::{
    RETENTION, Session, Status,
    complete::{complete_paid, paid_orders},
};
use crate::{App, Error, Result, schema::checkout_sessions as cs};

const PAGE: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupCounts {
    pub expired: i64,
    pub deleted: i64,
    pub completed_by_sync: i64,
    pub skipped_billing_unavailable: i64,
    pub dry_run: bool,
    /// The run's clock: ACTIVE sessions whose `expires_at` is not after it
    /// are due to expire.
    pub expired_before: DateTime<Utc>,
    /// `RETENTION` before the run: non-COMPLETED sessions created before it
    /// are due for deletion.
    pub deleted_before: DateTime<Utc>,
    /// Sessions either rule caught, each counted once, whatever became of
    /// them: with the cutoffs, what tells "nothing was due" from "nothing
    /// ran" when every count is 0.
    pub examined: i64,
}

pub async fn cleanup(app: &App, dry_run: bool) -> Result<CleanupCounts> {
    let now = app.clock.now();
    let cutoff = now - RETENTION;
    let mut counts = CleanupCounts {
        expired: 0,
        deleted: 0,
        completed_by_sync: 0,
        skipped_billing_unavailable: 0,
        dry_run,
        expired_before: now,
        deleted_before: cutoff,
        examined: 0,
    };
    let mut after = Uuid::nil();
    loop {
        let page: Vec<Session> = {
            let mut c = app.conn().await?;
            cs::table
                .filter(cs::id.gt(after))
                .filter(
                    cs::status
                        .eq(Status::Active)
                        .and(cs::expires_at.le(now))
                        .or(cs::status.ne(Status::Completed).and(cs::created_at.lt(cutoff))),
                )
                .order(cs::id)
                .limit(PAGE)
                .select(Session::as_select())
                .load(&mut *c)
                .await?
        };
        let Some(last) = page.last() else { break };
        after = last.id;
        counts.examined += page.len() as i64;
        let paid = match paid_orders(app, Budget::new(app.config.billing_timeout), &page).await {
            Ok(paid) => paid,
            Err(Error::BillingUnavailable(e)) => {
                tracing::warn!(sessions = page.len(), error = %e, "cleanup skipped sessions: billing unavailable");
                counts.skipped_billing_unavailable += page.len() as i64;
                continue;
            }
            Err(e) => return Err(e),
        };
        counts.completed_by_sync += if dry_run { paid.len() } else { complete_paid(app, &paid).await? } as i64;
        let unpaid: Vec<&Session> = page.iter().filter(|s| !paid.iter().any(|(p, _)| *p == s.id)).collect();
        counts.expired += expire(app, &unpaid.iter().map(|s| s.id).collect::<Vec<_>>(), now, dry_run).await?;
        let stale: Vec<&Session> =
            unpaid.into_iter().filter(|s| s.status != Status::Completed && s.created_at < cutoff).collect();
        if dry_run {
            counts.deleted += stale.len() as i64;
        } else {
            match delete_withdrawn(app, &stale, cutoff).await {
                Ok((deleted, completed)) => {
                    counts.deleted += deleted;
                    counts.completed_by_sync += completed;
                }
                Err(Error::BillingUnavailable(e)) => {
                    tracing::warn!(sessions = stale.len(), error = %e, "cleanup kept sessions: billing unavailable");
                    counts.skipped_billing_unavailable += stale.len() as i64;
                }
                Err(e) => return Err(e),
            }
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    tracing::info!(?counts, "cleanup done");
    Ok(counts)
}

/// ACTIVE sessions past their expiry among `ids` → EXPIRED.
async fn expire(app: &App, ids: &[Uuid], now: DateTime<Utc>, dry_run: bool) -> Result<i64> {
    let mut c = app.conn().await?;
    let lapsed = cs::id.eq_any(ids).and(cs::status.eq(Status::Active)).and(cs::expires_at.le(now));
    if dry_run {
        return Ok(cs::table.filter(lapsed).select(count_star()).first(&mut *c).await?);
    }
    let n = diesel::update(cs::table.filter(lapsed))
        .set((cs::status.eq(Status::Expired), cs::updated_at.eq(now)))
        .execute(&mut *c)
        .await?;
    Ok(n as i64)
}

/// Deletes stale unpaid sessions, but only after billing cancelled their
/// orders: a payment that lands afterwards becomes a discrepancy at billing
/// instead of money with no checkout record. Orders that turn out PAID are
/// completed instead. Returns (deleted, completed).
async fn delete_withdrawn(app: &App, stale: &[&Session], cutoff: DateTime<Utc>) -> Result<(i64, i64)> {
    if stale.is_empty() {
        return Ok((0, 0));
    }
    let order_ids: Vec<String> = stale.iter().map(|s| s.order_id.clone()).collect();
    let orders = app.billing.cancel_orders(Budget::new(app.config.billing_timeout), &order_ids).await?;
    let status_of = |s: &Session| orders.iter().find(|o| o.id == s.order_id).map(|o| o.status);
    let paid: Vec<(Uuid, bpb::Order)> = stale
        .iter()
        .filter_map(|s| {
            orders.iter().find(|o| o.id == s.order_id && o.status == bpb::OrderStatus::Paid as i32).map(|o| (s.id, o.clone()))
        })
        .collect();
    let completed = complete_paid(app, &paid).await? as i64;
    // Unknown to billing (never created there) or cancelled: safe to delete.
    let withdrawn: Vec<Uuid> =
        stale.iter().filter(|s| status_of(s).is_none_or(|x| x == bpb::OrderStatus::Cancelled as i32)).map(|s| s.id).collect();
    let mut c = app.conn().await?;
    let deleted = diesel::delete(
        cs::table.filter(cs::id.eq_any(&withdrawn)).filter(cs::status.ne(Status::Completed)).filter(cs::created_at.lt(cutoff)),
    )
    .execute(&mut *c)
    .await?;
    Ok((deleted as i64, completed))
}
