//! Plan limits, counted only inside the subscription's current billing period
//! (docs/design.md, Invariants 13): counting all history would lock users
//! out after a period reset.
use shared::status::ErrorReason;
use std::fmt::Display;

use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::{db::Conn, ids::UserId};

use crate::{App, Error, Result, plans::Plan, subscriptions::Subscription};

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

fn exceeded(reason: ErrorReason, plan: &Plan, current: i64, limit: i64, what: impl Display) -> Error {
    Error::QuotaExceeded {
        reason,
        plan: plan.id.clone(),
        current_usage: current,
        limit,
        description: format!("{what}: {current} of {limit} used in the current billing period of plan {}", plan.id),
    }
}

/// Whether one more session may start. A limit of 0 means unlimited.
pub fn check_start(plan: &Plan, sub: &Subscription, used: &PeriodUsage) -> Result<()> {
    let max_sessions = i64::from(plan.max_sessions_per_period);
    if max_sessions > 0 && used.sessions >= max_sessions {
        return Err(exceeded(ErrorReason::SessionLimitExceeded, plan, used.sessions, max_sessions, "session limit reached"));
    }
    let max_minutes = i64::from(plan.max_minutes_per_period);
    if max_minutes > 0 && used.minutes >= max_minutes {
        return Err(exceeded(ErrorReason::MinutesLimitExceeded, plan, used.minutes, max_minutes, "minutes limit reached"));
    }
    if sub.credits_remaining <= 0 {
        return Err(Error::QuotaExceeded {
            reason: ErrorReason::NoCredits,
            plan: plan.id.clone(),
            current_usage: sub.credits_granted - sub.credits_remaining,
            limit: sub.credits_granted,
            description: format!("no credits left in the current billing period of plan {}", plan.id),
        });
    }
    Ok(())
}

/// The current period's usage with its subscription and plan.
#[derive(Debug, Clone)]
pub struct UsageReport {
    pub subscription: Subscription,
    pub plan: Plan,
    pub used: PeriodUsage,
}

/// A read: it neither writes (no free subscription is created for an
/// unknown user) nor locks.
pub async fn report(app: &App, user_id: &UserId) -> Result<UsageReport> {
    let user_id = user_id.as_str();
    let now = app.clock.now();
    let mut c = app.conn().await?;
    let subscription = crate::subscriptions::current(&mut c, user_id, now).await?;
    let plan = crate::plans::get(&mut c, &subscription.plan_id).await?;
    let used = period_usage(&mut c, user_id, &subscription, now).await?;
    Ok(UsageReport { subscription, plan, used })
}

/// AuthorizeUpload: the plan's max upload size, read from its typed
/// `max_upload_bytes` column.
pub async fn authorize_upload(app: &App, user_id: &UserId, size_bytes: i64) -> Result<i64> {
    let report = report(app, user_id).await?;
    let max = report.plan.max_upload_bytes;
    if size_bytes > max {
        return Err(Error::QuotaExceeded {
            reason: ErrorReason::UploadTooLarge,
            plan: report.plan.id.clone(),
            current_usage: size_bytes,
            limit: max,
            description: format!("an upload of {size_bytes} bytes exceeds the {max} bytes plan {} allows", report.plan.id),
        });
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(max_sessions: i32, max_minutes: i32) -> Plan {
        Plan {
            id: "p".into(),
            name: "P".into(),
            price_minor: 0,
            currency: "INR".into(),
            period: crate::plans::Period::Monthly,
            credits_per_period: 10,
            deduction_interval_seconds: 600,
            max_sessions_per_period: max_sessions,
            max_minutes_per_period: max_minutes,
            max_upload_bytes: 1,
            active: true,
        }
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
        let p = plan(5, 0);
        assert_eq!(reason(check_start(&p, &sub(1), &PeriodUsage { sessions: 4, minutes: 0 })), None);
        assert_eq!(reason(check_start(&p, &sub(1), &PeriodUsage { sessions: 5, minutes: 0 })), Some("SESSION_LIMIT_EXCEEDED"));
        assert_eq!(reason(check_start(&p, &sub(1), &PeriodUsage { sessions: 6, minutes: 0 })), Some("SESSION_LIMIT_EXCEEDED"));
        assert_eq!(reason(check_start(&plan(0, 0), &sub(1), &PeriodUsage { sessions: 1000, minutes: 0 })), None);
    }

    #[test]
    fn minutes_and_credits() {
        assert_eq!(
            reason(check_start(&plan(0, 60), &sub(1), &PeriodUsage { sessions: 0, minutes: 60 })),
            Some("MINUTES_LIMIT_EXCEEDED")
        );
        assert_eq!(reason(check_start(&plan(0, 60), &sub(0), &PeriodUsage { sessions: 0, minutes: 59 })), Some("NO_CREDITS"));
    }
}
