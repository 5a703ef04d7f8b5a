//! The renewal job (docs/design.md, "Subscription lifecycle"): every paid
//! period is paid for. One iteration, safe on every replica and to run
//! twice, holding at most one pooled connection at a time and none while the
//! gateway is called:
//!
//! 1. **expire**: PAST_DUE subscriptions whose grace period is over become
//!    EXPIRED and their renewal order CANCELLED (a later payment of it is a
//!    refundable discrepancy); the user falls back to the free plan.
//! 2. **open**: from `RENEWAL_LEAD_HOURS` before `period_end`, one renewal
//!    order per (subscription, next period), at the price of the version
//!    the subscription is pinned to (never the plan's current one).
//!    The unique key (renews_subscription_id, renews_period_start) makes a
//!    second replica's insert a no-op.
//! 3. **collect**: renewal orders of subscriptions with a saved payment
//!    method are charged when due, claimed first (the claim moves the next
//!    attempt `RENEWAL_RETRY_HOURS` ahead, so no two replicas charge one
//!    order at once); a captured charge goes through the capture path like
//!    any payment. A declined charge is retried on that schedule until the
//!    subscription expires.
use chrono::{DateTime, Duration, Utc};

use crate::{App, Result};

mod collection;
mod expiry;
mod opening;

use collection::collect_due;
use expiry::expire_due;
use opening::open_due;

/// What one iteration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub expired: usize,
    pub orders_created: usize,
    pub charged: usize,
    pub declined: usize,
}

/// The lifecycle settings, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub lead: Duration,
    pub grace: Duration,
    pub retry: Duration,
}

impl Settings {
    pub fn of(app: &App) -> Self {
        let l = &app.config.lifecycle;
        Settings { lead: l.renewal_lead, grace: l.grace_period, retry: l.renewal_retry }
    }
}

pub async fn run_once(app: &App, now: DateTime<Utc>, batch: i64) -> Result<Summary> {
    let settings = Settings::of(app);
    let mut summary = Summary::default();
    loop {
        let n = expire_due(app, now, settings, batch).await?;
        summary.expired += n;
        if (n as i64) < batch {
            break;
        }
    }
    summary.orders_created = open_due(app, now, settings, batch).await?;
    let (charged, declined) = collect_due(app, now, settings, batch).await?;
    summary.charged = charged;
    summary.declined = declined;
    Ok(summary)
}
