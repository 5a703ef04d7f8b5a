//! Billing periods: what happens at a period end (`billing_roll_period`),
//! how a subscription reads at any instant without writing, and the user's
//! live subscription under its lock (created free on first use).
use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use super::{LIVE, Status, Subscription, get, lock_live};
use crate::{
    Error, Result, orders,
    plans::{self, FREE_PLAN_ID},
    schema::subscriptions,
};

/// Applies what is due once the period ended (caller holds the row lock):
/// the free plan opens the month containing `now`; a paid subscription opens
/// the next period if its renewal is paid, ends if cancelled at period end,
/// else goes PAST_DUE. Leftover credits expire through a ledger row. Returns
/// whether anything changed. (SQL: `billing_roll_period`.)
pub async fn roll(conn: &mut Conn, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
    #[derive(QueryableByName)]
    struct Rolled {
        #[diesel(sql_type = sql_types::Bool)]
        rolled: bool,
    }
    let r: Rolled = diesel::sql_query("SELECT billing_roll_period($1, $2) AS rolled")
        .bind::<sql_types::Uuid, _>(id)
        .bind::<sql_types::Timestamptz, _>(now)
        .get_result(conn)
        .await?;
    Ok(r.rolled)
}

/// Whether `sub` has a period end to apply ([`roll`]): ACTIVE with its period
/// over, or PAST_DUE whose renewal counts as paid again (a refund of it
/// failed, a capture came late or was replayed). Every path that reads or
/// locks a subscription asks this one question, so a renewal that becomes
/// paid again reopens its period wherever it is next seen, anchored at the
/// old period end, and only once: the roll moves `period_end` on.
pub async fn is_due(conn: &mut Conn, sub: &Subscription, now: DateTime<Utc>) -> Result<bool> {
    if now < sub.period_end {
        return Ok(false);
    }
    match sub.status {
        Status::Active => Ok(true),
        Status::PastDue => orders::renewal_paid(conn, sub.id, sub.period_end).await,
        _ => Ok(false),
    }
}

/// Rolls `sub` if `is_due` (caller holds its row lock); whether it changed.
pub async fn roll_if_due(conn: &mut Conn, sub: &Subscription, now: DateTime<Utc>) -> Result<bool> {
    if !is_due(conn, sub, now).await? {
        return Ok(false);
    }
    roll(conn, sub.id, now).await
}

/// `sub` as it reads at `now`, without writing or locking: what the next
/// locked use will do ([`roll`]), asked of the same SQL that does it
/// (`billing_roll_steps`, the one statement of what a period end does:
/// docs/design.md, SQL functions): the free plan's current month, the next
/// paid period if its renewal is paid, CANCELLED if cancelled at period
/// end, else PAST_DUE with no credits.
pub async fn as_of(conn: &mut Conn, sub: Subscription, now: DateTime<Utc>) -> Result<Subscription> {
    if !is_due(conn, &sub, now).await? {
        return Ok(sub);
    }
    let last: Option<Subscription> = diesel::sql_query(
        "SELECT st.* FROM subscriptions s CROSS JOIN LATERAL billing_roll_steps(s, $2) WITH ORDINALITY AS st \
          WHERE s.id = $1 ORDER BY st.ordinality DESC LIMIT 1",
    )
    .bind::<sql_types::Uuid, _>(sub.id)
    .bind::<sql_types::Timestamptz, _>(now)
    .get_result(conn)
    .await
    .optional()?;
    Ok(last.unwrap_or(sub))
}

/// The calendar month containing `now` (the free plan's periods), as the
/// SQL that opens them computes it (`billing_period_at`).
pub async fn calendar_month(conn: &mut Conn, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    period_at(conn, now, true, now, 1).await
}

/// The billing period containing `at` of a subscription anchored at
/// `anchor` (calendar months, or anniversary periods of `months` months from
/// the anchor: 1 monthly, 12 yearly, [`Period::months`](crate::plans::Period::months)),
/// as `billing_period_at` computes it: periods are SQL's arithmetic only.
pub async fn period_at(
    conn: &mut Conn,
    anchor: DateTime<Utc>,
    calendar: bool,
    at: DateTime<Utc>,
    months: i32,
) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    #[derive(QueryableByName)]
    struct Period {
        #[diesel(sql_type = sql_types::Timestamptz)]
        period_start: DateTime<Utc>,
        #[diesel(sql_type = sql_types::Timestamptz)]
        period_end: DateTime<Utc>,
    }
    let p: Period = diesel::sql_query("SELECT period_start, period_end FROM billing_period_at($1, $2, $3, $4)")
        .bind::<sql_types::Timestamptz, _>(anchor)
        .bind::<sql_types::Bool, _>(calendar)
        .bind::<sql_types::Timestamptz, _>(at)
        .bind::<sql_types::Integer, _>(months)
        .get_result(conn)
        .await?;
    Ok((p.period_start, p.period_end))
}

/// The user's live subscription as it reads at `now`, without writing or
/// locking: for a user who never used the service, the free plan's first
/// calendar month as it would be created (with a nil id: no row exists yet).
pub async fn current(conn: &mut Conn, user_id: &str, now: DateTime<Utc>) -> Result<Subscription> {
    let live = subscriptions::table
        .filter(subscriptions::user_id.eq(user_id))
        .filter(subscriptions::status.eq_any(LIVE))
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()?;
    let live = match live {
        Some(sub) => Some(as_of(conn, sub, now).await?),
        None => None,
    };
    match live {
        Some(sub) if sub.status.is_live() => Ok(sub),
        // No live row, or one that ends at its period end: the free plan.
        _ => {
            let free = plans::get(conn, FREE_PLAN_ID).await?;
            Ok(Subscription::free_preview(user_id, &free, calendar_month(conn, now).await?, now))
        }
    }
}

/// The user's live subscription, locked and rolled to `now`, if it is
/// still live then; None for a user who has none (nothing is created: a
/// purchase or a trial replaces no free month).
pub async fn live_locked(conn: &mut Conn, user_id: &str, now: DateTime<Utc>) -> Result<Option<Subscription>> {
    let Some(sub) = lock_live(conn, user_id).await? else { return Ok(None) };
    if !roll_if_due(conn, &sub, now).await? {
        return Ok(Some(sub));
    }
    let rolled = get(conn, sub.id).await?;
    Ok(rolled.status.is_live().then_some(rolled))
}

/// The user's live subscription, locked, in its current period (rolled if
/// it ended); a free subscription is created on first use and after a paid
/// one ended. Call inside a transaction.
pub async fn current_locked(conn: &mut Conn, user_id: &str, now: DateTime<Utc>) -> Result<Subscription> {
    if let Some(sub) = live_locked(conn, user_id, now).await? {
        return Ok(sub);
    }
    // None yet, or it ended at its period end (cancelled then): the free
    // plan now.
    let free = plans::get(conn, FREE_PLAN_ID).await?;
    // Two first uses at once: the partial unique index lets one insert win.
    // The month is the one `billing_period_at` computes (calendar months),
    // on the free plan's current version (its credits are the plan row's).
    diesel::sql_query(
        "INSERT INTO subscriptions (id, user_id, plan_id, plan_version, status, anchor_at, calendar_periods, \
             period_start, period_end, credits_granted, credits_remaining, created_at, updated_at) \
         SELECT $1, $2, $3, $6, 'ACTIVE', m.period_start, true, m.period_start, m.period_end, $4, $4, $5, $5 \
           FROM billing_period_at($5, true, $5) m \
             ON CONFLICT (user_id) WHERE status IN ('ACTIVE', 'PAST_DUE') DO NOTHING",
    )
    .bind::<sql_types::Uuid, _>(Uuid::new_v4())
    .bind::<sql_types::Text, _>(user_id)
    .bind::<sql_types::Text, _>(&free.id)
    .bind::<sql_types::BigInt, _>(free.credits_per_period)
    .bind::<sql_types::Timestamptz, _>(now)
    .bind::<sql_types::Integer, _>(free.current_version)
    .execute(conn)
    .await?;
    let sub = lock_live(conn, user_id)
        .await?
        // Replaced or cancelled between the insert and this read: retryable.
        .ok_or_else(|| Error::from(shared::db::DbError::Conflict(format!("active subscription of {user_id} changed"))))?;
    if roll_if_due(conn, &sub, now).await? {
        return get(conn, sub.id).await;
    }
    Ok(sub)
}

/// Rollover job: applies what is due (`is_due`) to every ACTIVE
/// subscription whose period ended and every PAST_DUE one whose renewal is
/// paid again, in batches, skipping rows another replica holds.
pub async fn roll_due(conn: &mut Conn, now: DateTime<Utc>, batch: i64) -> Result<usize> {
    use diesel_async::AsyncConnection;
    conn.transaction(async |conn| {
        let due: Vec<Uuid> = subscriptions::table
            .filter(
                subscriptions::status.eq(Status::Active).or(subscriptions::status
                    .eq(Status::PastDue)
                    .and(orders::billing_renewal_paid(subscriptions::id, subscriptions::period_end))),
            )
            .filter(subscriptions::period_end.le(now))
            .select(subscriptions::id)
            .limit(batch)
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        let mut rolled = 0;
        for id in due {
            if roll(conn, id, now).await? {
                rolled += 1;
            }
        }
        Ok(rolled)
    })
    .await
}
