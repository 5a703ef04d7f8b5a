//! Cleanup: ACTIVE sessions past 24 h become EXPIRED; non-COMPLETED sessions
//! older than 7 days are deleted. Before touching anything it asks billing
//! whether the orders were paid (completion sync): a paid session is
//! completed, never expired or deleted; when billing cannot be asked, the
//! run leaves those sessions alone. Conditional UPDATE/DELETE statements make
//! concurrent runs on several replicas add up to one run.
use chrono::{DateTime, Utc};
use diesel::{dsl::count_star, prelude::*};
use diesel_async::RunQueryDsl;
use shared::client::Budget;
use uuid::Uuid;

use super::{
    RETENTION, Session,
    complete::{complete_paid, paid_orders},
};
use crate::{App, Error, Result, schema::checkout_sessions as cs};

const PAGE: i64 = 500;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupCounts {
    pub expired: i64,
    pub deleted: i64,
    pub completed_by_sync: i64,
    pub skipped_billing_unavailable: i64,
    pub dry_run: bool,
}

pub async fn cleanup(app: &App, dry_run: bool) -> Result<CleanupCounts> {
    let now = app.clock.now();
    let cutoff = now - RETENTION;
    let mut counts = CleanupCounts { dry_run, ..Default::default() };
    let mut after = Uuid::nil();
    loop {
        let page: Vec<Session> = {
            let mut c = app.conn().await?;
            cs::table
                .filter(cs::id.gt(after))
                .filter(
                    cs::status
                        .eq("ACTIVE")
                        .and(cs::expires_at.le(now))
                        .or(cs::status.ne("COMPLETED").and(cs::created_at.lt(cutoff))),
                )
                .order(cs::id)
                .limit(PAGE)
                .select(Session::as_select())
                .load(&mut *c)
                .await?
        };
        let Some(last) = page.last() else { break };
        after = last.id;
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
        let unpaid: Vec<Uuid> = page.iter().map(|s| s.id).filter(|id| !paid.iter().any(|(p, _)| p == id)).collect();
        let (expired, deleted) = apply(app, &unpaid, now, cutoff, dry_run).await?;
        counts.expired += expired;
        counts.deleted += deleted;
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    tracing::info!(?counts, "cleanup done");
    Ok(counts)
}

async fn apply(app: &App, ids: &[Uuid], now: DateTime<Utc>, cutoff: DateTime<Utc>, dry_run: bool) -> Result<(i64, i64)> {
    let mut c = app.conn().await?;
    let lapsed = cs::id.eq_any(ids).and(cs::status.eq("ACTIVE")).and(cs::expires_at.le(now));
    let stale = cs::id.eq_any(ids).and(cs::status.ne("COMPLETED")).and(cs::created_at.lt(cutoff));
    if dry_run {
        let expired: i64 = cs::table.filter(lapsed).select(count_star()).first(&mut *c).await?;
        let deleted: i64 = cs::table.filter(stale).select(count_star()).first(&mut *c).await?;
        return Ok((expired, deleted));
    }
    let expired =
        diesel::update(cs::table.filter(lapsed)).set((cs::status.eq("EXPIRED"), cs::updated_at.eq(now))).execute(&mut *c).await?;
    let deleted = diesel::delete(cs::table.filter(stale)).execute(&mut *c).await?;
    Ok((expired as i64, deleted as i64))
}
