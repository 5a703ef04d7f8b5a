//! Plan limits, counted only inside the subscription's current billing period
//! (docs/design.md, Invariants 13): counting all history would lock users
//! out after a period reset. The limits are those of the price version the
//! subscription is pinned to (docs/design.md, "Catalogue").
use shared::status::ErrorReason;
use std::fmt::Display;

use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::{db::Conn, ids::UserId};

use crate::{
    App, Error, Result,
    plans::{self, Limits, Version},
    subscriptions::Subscription,
};

/// Usage inside one billing period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodUsage {
    /// Sessions started in the period.
    pub sessions: i64,
    /// Minutes of ended sessions plus the elapsed time of active ones,
    /// clipped to the period, rounded up.
    pub minutes: i64,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = sql_types::BigInt)]
    sessions: i64,
    #[diesel(sql_type = sql_types::BigInt)]
    minutes: i64,
}

pub async fn period_usage(conn: &mut Conn, user_id: &str, sub: &Subscription, now: DateTime<Utc>) -> Result<PeriodUsage> {
    let row: Row = diesel::sql_query(
        "SELECT count(*) FILTER (WHERE started_at >= $2) AS sessions, \
                coalesce(ceil(sum(extract(epoch FROM \
                    least(coalesce(ended_at, $4), $3, $4) - greatest(started_at, $2))) / 60), 0)::bigint AS minutes \
           FROM usage_sessions \
          WHERE user_id = $1 AND started_at < $3 AND coalesce(ended_at, $4) > $2",
    )
    .bind::<sql_types::Text, _>(user_id)
    .bind::<sql_types::Timestamptz, _>(sub.period_start)
    .bind::<sql_types::Timestamptz, _>(sub.period_end)
    .bind::<sql_types::Timestamptz, _>(now)
    .get_result(conn)
    .await?;
    Ok(PeriodUsage { sessions: row.sessions, minutes: row.minutes.max(0) })
}

fn exceeded(reason: ErrorReason, plan_id: &str, current: i64, limit: i64, what: impl Display) -> Error {
    Error::QuotaExceeded {
        reason,
        plan: plan_id.to_owned(),
        current_usage: current,
        limit,
        description: format!("{what}: {current} of {limit} used in the current billing period of plan {plan_id}"),
    }
}

/// Whether one more session may start under `sub`'s limits (those of the
/// version it is pinned to; `None` is unlimited).
pub fn check_start(limits: &Limits, sub: &Subscription, used: &PeriodUsage) -> Result<()> {
    let plan_id = sub.plan_id.as_str();
    if let Some(max) = limits.sessions_per_period.map(i64::from)
        && used.sessions >= max
    {
        return Err(exceeded(ErrorReason::SessionLimitExceeded, plan_id, used.sessions, max, "session limit reached"));
    }
    if let Some(max) = limits.minutes_per_period.map(i64::from)
        && used.minutes >= max
    {
        return Err(exceeded(ErrorReason::MinutesLimitExceeded, plan_id, used.minutes, max, "minutes limit reached"));
    }
    if sub.credits_remaining <= 0 {
        return Err(Error::QuotaExceeded {
            reason: ErrorReason::NoCredits,
            plan: plan_id.to_owned(),
            current_usage: sub.credits_granted - sub.credits_remaining,
            limit: sub.credits_granted,
            description: format!("no credits left in the current billing period of plan {plan_id}"),
        });
    }
    Ok(())
}

/// The current period's usage with its subscription and the terms it runs
/// on (the version it is pinned to).
#[derive(Debug, Clone)]
pub struct UsageReport {
    pub subscription: Subscription,
    pub terms: Version,
    pub used: PeriodUsage,
}

/// A read: it neither writes (no free subscription is created for an
/// unknown user) nor locks.
pub async fn report(app: &App, user_id: &UserId) -> Result<UsageReport> {
    let user_id = user_id.as_str();
    let now = app.clock.now();
    let mut c = app.conn().await?;
    let subscription = crate::subscriptions::current(&mut c, user_id, now).await?;
    let terms = plans::version(&mut c, &subscription.plan_id, subscription.plan_version).await?;
    let used = period_usage(&mut c, user_id, &subscription, now).await?;
    Ok(UsageReport { subscription, terms, used })
}

/// AuthorizeUpload: the largest upload the user's version allows
/// (`None`: unlimited), or RESOURCE_EXHAUSTED `UPLOAD_TOO_LARGE`.
pub async fn authorize_upload(app: &App, user_id: &UserId, size_bytes: i64) -> Result<Option<i64>> {
    let report = report(app, user_id).await?;
    let max = report.terms.max_upload_bytes;
    if let Some(max) = max
        && size_bytes > max
    {
        let plan_id = &report.subscription.plan_id;
        return Err(Error::QuotaExceeded {
            reason: ErrorReason::UploadTooLarge,
            plan: plan_id.clone(),
            current_usage: size_bytes,
            limit: max,
            description: format!("an upload of {size_bytes} bytes exceeds the {max} bytes plan {plan_id} allows"),
        });
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_sessions: Option<i32>, max_minutes: Option<i32>) -> Limits {
        Limits { sessions_per_period: max_sessions, minutes_per_period: max_minutes, upload_bytes: Some(1) }
    }

    fn sub(remaining: i64) -> Subscription {
        Subscription {
            id: uuid::Uuid::nil(),
            user_id: "u".into(),
            plan_id: "p".into(),
            order_id: None,
            status: crate::subscriptions::Status::Active,
            anchor_at: Utc::now(),
            calendar_periods: true,
            period_start: Utc::now(),
            period_end: Utc::now(),
            credits_granted: 10,
            credits_remaining: remaining,
            created_at: Utc::now(),
            cancel_at_period_end: false,
            ended_at: None,
            gateway_customer_id: None,
            gateway_token_id: None,
            gateway_email: None,
            gateway_contact: None,
            mandate_max_amount_minor: None,
            mandate_expires_at: None,
            trial_end: None,
            plan_version: 1,
            next_plan_version: None,
        }
    }

    fn reason(r: Result<()>) -> Option<&'static str> {
        match r {
            Err(Error::QuotaExceeded { reason, .. }) => Some(reason.as_str_name()),
            _ => None,
        }
    }

    #[test]
    fn session_limit_boundaries() {
        let l = limits(Some(5), None);
        assert_eq!(reason(check_start(&l, &sub(1), &PeriodUsage { sessions: 4, minutes: 0 })), None);
        assert_eq!(reason(check_start(&l, &sub(1), &PeriodUsage { sessions: 5, minutes: 0 })), Some("SESSION_LIMIT_EXCEEDED"));
        assert_eq!(reason(check_start(&l, &sub(1), &PeriodUsage { sessions: 6, minutes: 0 })), Some("SESSION_LIMIT_EXCEEDED"));
        assert_eq!(reason(check_start(&limits(None, None), &sub(1), &PeriodUsage { sessions: 1000, minutes: 0 })), None);
    }

    #[test]
    fn minutes_and_credits() {
        assert_eq!(
            reason(check_start(&limits(None, Some(60)), &sub(1), &PeriodUsage { sessions: 0, minutes: 60 })),
            Some("MINUTES_LIMIT_EXCEEDED")
        );
        assert_eq!(
            reason(check_start(&limits(None, Some(60)), &sub(0), &PeriodUsage { sessions: 0, minutes: 59 })),
            Some("NO_CREDITS")
        );
    }

    #[test]
    fn the_old_columns_round_trip_every_limit_a_version_can_hold() {
        for l in [
            Limits { sessions_per_period: None, minutes_per_period: None, upload_bytes: None },
            Limits { sessions_per_period: Some(5), minutes_per_period: Some(60), upload_bytes: Some(0) },
            Limits { sessions_per_period: Some(i32::MAX), minutes_per_period: None, upload_bytes: Some(1 << 30) },
        ] {
            let (s, m, u) = l.to_columns();
            assert_eq!(Limits::from_columns(s, m, u), l, "{l:?}");
        }
        assert_eq!(Limits::from_columns(0, 0, 0).upload_bytes, Some(0), "upload 0 stays: none allowed");
    }
}
