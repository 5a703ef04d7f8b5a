//! Subscriptions and their billing periods. Paid plans use anniversary
//! periods anchored at the payment; the free plan (given to every user on
//! first use) uses calendar months. At most one ACTIVE subscription per user,
//! so every balance lives in one row with one lock (docs/design.md,
//! Invariants 6).
use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use crate::{
    Error, Result,
    plans::{self, FREE_PLAN_ID, Plan},
    schema::{ledger, subscriptions},
};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = subscriptions, check_for_backend(diesel::pg::Pg))]
pub struct Subscription {
    pub id: Uuid,
    pub user_id: String,
    pub plan_id: String,
    pub order_id: Option<String>,
    pub status: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub credits_granted: i64,
    pub credits_remaining: i64,
    pub created_at: DateTime<Utc>,
}

/// The calendar month containing `now` (free plan periods).
pub fn calendar_month(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now);
    (start, start.checked_add_months(Months::new(1)).unwrap_or(start))
}

pub async fn get(conn: &mut Conn, id: Uuid) -> Result<Subscription> {
    subscriptions::table
        .find(id)
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("subscription", id))
}

/// A page of a user's subscriptions, newest first (keyset on created_at, id):
/// at most `page_size` rows after the position `after`, and the position of
/// the last row when more follow.
pub async fn list_for_user(
    conn: &mut Conn,
    user_id: &str,
    page_size: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<(Vec<Subscription>, Option<(DateTime<Utc>, Uuid)>)> {
    let mut q = subscriptions::table.filter(subscriptions::user_id.eq(user_id)).select(Subscription::as_select()).into_boxed();
    if let Some((t, id)) = after {
        q = q.filter(subscriptions::created_at.lt(t).or(subscriptions::created_at.eq(t).and(subscriptions::id.lt(id))));
    }
    let mut rows: Vec<Subscription> =
        q.order((subscriptions::created_at.desc(), subscriptions::id.desc())).limit(page_size + 1).load(conn).await?;
    let next = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last().map(|s| (s.created_at, s.id))
    } else {
        None
    };
    Ok((rows, next))
}

pub async fn by_order(conn: &mut Conn, order_id: &str) -> Result<Option<Subscription>> {
    Ok(subscriptions::table
        .filter(subscriptions::order_id.eq(order_id))
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn lock_active(conn: &mut Conn, user_id: &str) -> Result<Option<Subscription>> {
    Ok(subscriptions::table
        .filter(subscriptions::user_id.eq(user_id))
        .filter(subscriptions::status.eq("ACTIVE"))
        .select(Subscription::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Opens the period containing `now` if the current one has ended (caller
/// holds the row lock). Returns whether a new period was opened.
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

/// `sub` as it reads at `now`, without writing: an ACTIVE subscription
/// whose period ended shows the period containing `now` with that period's
/// grant, exactly what the next locked use will open.
pub async fn as_of(conn: &mut Conn, sub: Subscription, now: DateTime<Utc>) -> Result<Subscription> {
    if sub.status != "ACTIVE" || now < sub.period_end {
        return Ok(sub);
    }
    #[derive(QueryableByName)]
    struct Period {
        #[diesel(sql_type = sql_types::Timestamptz)]
        period_start: DateTime<Utc>,
        #[diesel(sql_type = sql_types::Timestamptz)]
        period_end: DateTime<Utc>,
        #[diesel(sql_type = sql_types::BigInt)]
        credits: i64,
    }
    let p: Period = diesel::sql_query(
        "SELECT b.period_start, b.period_end, p.credits_per_period AS credits \
           FROM subscriptions s JOIN plans p ON p.id = s.plan_id, \
                billing_period_at(s.anchor_at, s.calendar_periods, $2) b \
          WHERE s.id = $1",
    )
    .bind::<sql_types::Uuid, _>(sub.id)
    .bind::<sql_types::Timestamptz, _>(now)
    .get_result(conn)
    .await?;
    Ok(Subscription {
        period_start: p.period_start,
        period_end: p.period_end,
        credits_granted: p.credits,
        credits_remaining: p.credits,
        ..sub
    })
}

/// The user's live subscription as it reads at `now`, without writing or
/// locking: for a user who never used the service, the free plan's first
/// calendar month as it would be created (with a nil id: no row exists yet).
pub async fn current(conn: &mut Conn, user_id: &str, now: DateTime<Utc>) -> Result<Subscription> {
    let live = subscriptions::table
        .filter(subscriptions::user_id.eq(user_id))
        .filter(subscriptions::status.eq("ACTIVE"))
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()?;
    match live {
        Some(sub) => as_of(conn, sub, now).await,
        None => {
            let free = plans::get(conn, FREE_PLAN_ID).await?;
            let (start, end) = calendar_month(now);
            Ok(Subscription {
                id: Uuid::nil(),
                user_id: user_id.to_owned(),
                plan_id: free.id,
                order_id: None,
                status: "ACTIVE".into(),
                period_start: start,
                period_end: end,
                credits_granted: free.credits_per_period,
                credits_remaining: free.credits_per_period,
                created_at: now,
            })
        }
    }
}

/// The user's ACTIVE subscription, locked, in its current period; a free
/// subscription is created on first use. Call inside a transaction.
pub async fn current_locked(conn: &mut Conn, user_id: &str, now: DateTime<Utc>) -> Result<Subscription> {
    if lock_active(conn, user_id).await?.is_none() {
        let free = plans::get(conn, FREE_PLAN_ID).await?;
        let (start, end) = calendar_month(now);
        // Two first uses at once: the partial unique index lets one insert win.
        diesel::sql_query(
            "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, calendar_periods, period_start, period_end, \
             credits_granted, credits_remaining, created_at, updated_at) \
             VALUES ($1, $2, $3, 'ACTIVE', $4, true, $4, $5, $6, $6, $7, $7) \
             ON CONFLICT (user_id) WHERE status = 'ACTIVE' DO NOTHING",
        )
        .bind::<sql_types::Uuid, _>(Uuid::new_v4())
        .bind::<sql_types::Text, _>(user_id)
        .bind::<sql_types::Text, _>(&free.id)
        .bind::<sql_types::Timestamptz, _>(start)
        .bind::<sql_types::Timestamptz, _>(end)
        .bind::<sql_types::BigInt, _>(free.credits_per_period)
        .bind::<sql_types::Timestamptz, _>(now)
        .execute(conn)
        .await?;
    }
    let sub = lock_active(conn, user_id)
        .await?
        // Replaced or cancelled between the insert and this read: retryable.
        .ok_or_else(|| Error::from(shared::db::DbError::Conflict(format!("active subscription of {user_id} changed"))))?;
    if now >= sub.period_end && roll(conn, sub.id, now).await? {
        return get(conn, sub.id).await;
    }
    Ok(sub)
}

/// Moves a subscription's remaining credits out (to its replacement) with a
/// CARRY_OVER ledger row and a zero balance, in the caller's transaction, so
/// the ledger still explains the balance (docs/design.md, Invariants 10).
async fn carry_over(conn: &mut Conn, from: &Subscription, now: DateTime<Utc>) -> Result<()> {
    diesel::insert_into(ledger::table)
        .values((
            ledger::subscription_id.eq(from.id),
            ledger::period_start.eq(from.period_start),
            ledger::kind.eq("CARRY_OVER"),
            ledger::credits.eq(from.credits_remaining),
            ledger::created_at.eq(now),
        ))
        .execute(conn)
        .await?;
    diesel::update(subscriptions::table.find(from.id))
        .set((subscriptions::credits_remaining.eq(0), subscriptions::updated_at.eq(now)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Creates the subscription a paid order buys. `old`, the user's live
/// subscription as the caller locked it (and judged it replaceable), becomes
/// REPLACED and its remaining credits carry over through a ledger entry (so
/// the ledger still explains both balances). It is not read again here: a
/// live row that appeared since makes the insert hit the one-ACTIVE-per-user
/// index, and the caller's retry judges it afresh. Call inside the capture
/// transaction, with the order row locked.
pub async fn create_paid(
    conn: &mut Conn,
    user_id: &str,
    plan: &Plan,
    order_id: &str,
    old: Option<Subscription>,
    now: DateTime<Utc>,
) -> Result<Subscription> {
    let id = Uuid::new_v4();
    let mut carried = 0;
    if let Some(old) = &old {
        if old.credits_remaining > 0 && now < old.period_end {
            carried = old.credits_remaining;
            carry_over(conn, old, now).await?;
        }
        // The new row must exist before replaced_by can point at it, and the
        // old one must leave ACTIVE before the new one enters it.
        diesel::update(subscriptions::table.find(old.id))
            .set((subscriptions::status.eq("REPLACED"), subscriptions::updated_at.eq(now)))
            .execute(conn)
            .await?;
    }
    let end = now.checked_add_months(Months::new(1)).unwrap_or(now);
    let credits = plan.credits_per_period + carried;
    let sub = diesel::insert_into(subscriptions::table)
        .values((
            subscriptions::id.eq(id),
            subscriptions::user_id.eq(user_id),
            subscriptions::plan_id.eq(&plan.id),
            subscriptions::order_id.eq(order_id),
            subscriptions::status.eq("ACTIVE"),
            subscriptions::anchor_at.eq(now),
            subscriptions::calendar_periods.eq(false),
            subscriptions::period_start.eq(now),
            subscriptions::period_end.eq(end),
            subscriptions::credits_granted.eq(credits),
            subscriptions::credits_remaining.eq(credits),
            subscriptions::created_at.eq(now),
            subscriptions::updated_at.eq(now),
        ))
        .returning(Subscription::as_returning())
        .get_result(conn)
        .await?;
    if let Some(old) = old {
        diesel::update(subscriptions::table.find(old.id)).set(subscriptions::replaced_by.eq(id)).execute(conn).await?;
    }
    Ok(sub)
}

/// Rollover job: opens the next period of every ACTIVE subscription whose
/// period ended, in batches, skipping rows another replica holds.
pub async fn roll_due(conn: &mut Conn, now: DateTime<Utc>, batch: i64) -> Result<usize> {
    use diesel_async::AsyncConnection;
    conn.transaction(async |conn| {
        let due: Vec<Uuid> = subscriptions::table
            .filter(subscriptions::status.eq("ACTIVE"))
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
