//! Subscriptions and their billing periods. Paid plans use anniversary
//! periods anchored at the payment, each one prepaid (a renewal order per
//! period); the free plan (given to every user on first use) uses calendar
//! months. At most one live (ACTIVE or PAST_DUE) subscription per user, so
//! every balance lives in one row with one lock (docs/design.md,
//! Invariants 6, and "Subscription lifecycle").
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{db::Conn, etag::Etag, ids::UserId};
use uuid::Uuid;

use crate::{
    Error, Result, orders,
    plans::{Plan, Version},
    schema::{ledger, subscriptions},
};

shared::text_enum! {
    /// Where a subscription is in its life (docs/design.md, "Subscription
    /// lifecycle"). ACTIVE and PAST_DUE are live: at most one per user.
    pub enum Status {
        Active = "ACTIVE",
        /// The period ended without a paid renewal: no credits until paid.
        PastDue = "PAST_DUE",
        Cancelled = "CANCELLED",
        /// Unpaid after the grace period.
        Expired = "EXPIRED",
        /// Superseded by a newer purchase (credits carried over).
        Replaced = "REPLACED",
    }
}

impl Status {
    pub fn is_live(self) -> bool {
        matches!(self, Status::Active | Status::PastDue)
    }
}

const LIVE: [Status; 2] = [Status::Active, Status::PastDue];

shared::text_enum! {
    /// Why credits left a balance (a ledger row's kind). USAGE rows are
    /// written by `billing_charge`, EXPIRED ones by `billing_roll_period`.
    pub enum LedgerKind {
        Usage = "USAGE",
        /// Moved into the subscription that replaced this one.
        CarryOver = "CARRY_OVER",
        /// Left over when a period ended.
        Expired = "EXPIRED",
        /// Taken back: cancelled now, or carried from a refunded purchase.
        Forfeited = "FORFEITED",
    }
}

#[derive(serde::Deserialize)] // an event's payload (crate::events)
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = subscriptions, check_for_backend(diesel::pg::Pg))]
pub struct Subscription {
    pub id: Uuid,
    pub user_id: String,
    pub plan_id: String,
    pub order_id: Option<String>,
    pub status: Status,
    /// First instant of the first paid period (anniversaries count from it).
    pub anchor_at: DateTime<Utc>,
    pub calendar_periods: bool,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub credits_granted: i64,
    pub credits_remaining: i64,
    pub created_at: DateTime<Utc>,
    pub cancel_at_period_end: bool,
    pub ended_at: Option<DateTime<Utc>>,
    pub gateway_customer_id: Option<String>,
    pub gateway_token_id: Option<String>,
    pub gateway_email: Option<String>,
    pub gateway_contact: Option<String>,
    /// The saved method's mandate: the most one charge may take, and when
    /// it ends (None: no limits known, as for the sandbox).
    pub mandate_max_amount_minor: Option<i64>,
    pub mandate_expires_at: Option<DateTime<Utc>>,
    /// The price version of the plan this subscription bought (its renewals
    /// charge it, its periods grant its credits within its limits).
    #[serde(default = "crate::plans::version_before_the_catalogue")]
    pub plan_version: i32,
    /// Set on a trial (StartTrial): when the free trial ends and the first
    /// paid period begins (docs/design.md, "Catalogue"). Kept after the
    /// conversion.
    #[serde(default)]
    pub trial_end: Option<DateTime<Utc>>,
    /// The version a migration of the plan's subscribers scheduled
    /// (docs/design.md, "Catalogue"): the next renewal order opened charges
    /// it, and the period that order pays pins it. None: `plan_version`.
    #[serde(default)]
    pub next_plan_version: Option<i32>,
}

impl Subscription {
    /// The subscription's etag: a digest of every stored field, so any
    /// change to the row changes it (docs/design.md, "API contract: lists, views, etags").
    /// Destructured so a new column cannot be left out by accident.
    pub fn etag(&self) -> Etag {
        shared::etag_of!(
            "subscription",
            self,
            Subscription {
                id,
                user_id,
                plan_id,
                order_id,
                status,
                anchor_at,
                calendar_periods,
                period_start,
                period_end,
                credits_granted,
                credits_remaining,
                created_at,
                cancel_at_period_end,
                ended_at,
                gateway_customer_id,
                gateway_token_id,
                gateway_email,
                gateway_contact,
                mandate_max_amount_minor,
                mandate_expires_at
            },
            // It moves only with a new period (period_start moves with it),
            // and leaving it out keeps every etag as it read before the
            // column existed (a rolling deploy's old and new replicas agree).
            // next_plan_version likewise: an operator's migration schedules
            // it, not a change the subscriber makes or conditions on.
            // trial_end is set at insert and never changes (and leaving it
            // out keeps the etags of every purchase as they read before it).
            skip { plan_version, trial_end, next_plan_version }
        )
    }

    /// The free plan's row (calendar months, no order; a trial has no
    /// order either, but anniversary periods and a trial_end).
    pub fn is_free(&self) -> bool {
        self.calendar_periods || (self.order_id.is_none() && self.trial_end.is_none())
    }

    /// The free plan's first month (`month`, from [`periods::calendar_month`])
    /// for a user who has no row yet (nil id), on the free plan's current
    /// version.
    fn free_preview(user_id: &str, free: &Plan, month: (DateTime<Utc>, DateTime<Utc>), now: DateTime<Utc>) -> Self {
        let (start, end) = month;
        Subscription {
            id: Uuid::nil(),
            user_id: user_id.to_owned(),
            plan_id: free.id.clone(),
            order_id: None,
            status: Status::Active,
            anchor_at: start,
            calendar_periods: true,
            period_start: start,
            period_end: end,
            credits_granted: free.credits_per_period,
            credits_remaining: free.credits_per_period,
            created_at: now,
            cancel_at_period_end: false,
            ended_at: None,
            gateway_customer_id: None,
            gateway_token_id: None,
            gateway_email: None,
            gateway_contact: None,
            mandate_max_amount_minor: None,
            mandate_expires_at: None,
            plan_version: free.current_version,
            trial_end: None,
            next_plan_version: None,
        }
    }
}

pub use crate::gateway::SavedMethod;

mod ending;
mod periods;
mod saved_method;
mod trials;
pub use crate::orders::MandateLimits;
pub use ending::{
    Cancelled, cancel, end_now, forfeit_carried, refund_unused_renewal, refund_unused_renewals, set_cancel_at_period_end,
};
pub use periods::{as_of, calendar_month, current, current_locked, live_locked, roll, roll_due, roll_if_due};
pub use saved_method::{complete_contact, forget_method, mandate_limits, save_method, saved_method};
pub use trials::{Trial, had_plan, start_trial};

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
    user_id: &UserId,
    page_size: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<(Vec<Subscription>, Option<(DateTime<Utc>, Uuid)>)> {
    let mut q =
        subscriptions::table.filter(subscriptions::user_id.eq(user_id.as_str())).select(Subscription::as_select()).into_boxed();
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

/// The user's live (ACTIVE or PAST_DUE) subscription, locked.
pub async fn lock_live(conn: &mut Conn, user_id: &str) -> Result<Option<Subscription>> {
    Ok(subscriptions::table
        .filter(subscriptions::user_id.eq(user_id))
        .filter(subscriptions::status.eq_any(LIVE))
        .select(Subscription::as_select())
        .for_update() // every balance and limit of the user serializes on this lock
        .first(conn)
        .await
        .optional()?)
}

/// Locks one subscription row.
pub async fn lock(conn: &mut Conn, id: Uuid) -> Result<Subscription> {
    subscriptions::table
        .find(id)
        .select(Subscription::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("subscription", id))
}

/// Moves a subscription's remaining credits out (to its replacement) with a
/// CARRY_OVER ledger row and a zero balance, in the caller's transaction, so
/// the ledger still explains the balance (docs/design.md, Invariants 10).
async fn carry_over(conn: &mut Conn, from: &Subscription, now: DateTime<Utc>) -> Result<()> {
    take_credits(conn, from, LedgerKind::CarryOver, now).await
}

/// Moves all remaining credits of `from` out with a ledger row of `kind`
/// (CARRY_OVER, FORFEITED) and a zero balance, in the caller's transaction.
async fn take_credits(conn: &mut Conn, from: &Subscription, kind: LedgerKind, now: DateTime<Utc>) -> Result<()> {
    if from.credits_remaining <= 0 {
        return Ok(());
    }
    diesel::insert_into(ledger::table)
        .values((
            ledger::subscription_id.eq(from.id),
            ledger::period_start.eq(from.period_start),
            ledger::kind.eq(kind),
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

/// Creates the subscription a paid order buys, pinned to the price
/// `version` the order was priced at. `old`, the user's live
/// subscription as the caller locked it (and judged it replaceable), becomes
/// REPLACED and its remaining credits carry over through a ledger entry (so
/// the ledger still explains both balances). It is not read again here: a
/// live row that appeared since makes the insert hit the one-ACTIVE-per-user
/// index, and the caller's retry judges it afresh. Call inside the capture
/// transaction, with the order row locked.
/// The first half of replacing `old` (the user's live subscription, locked)
/// by a purchase or a trial: its credits carried over through the ledger
/// (returned, to add to the new grant), REPLACED, its open renewal
/// cancelled (a later payment of it is a refundable discrepancy, and no job
/// charges it) and one paid already owed back. The old row must leave
/// ACTIVE before the new one enters it, and the new one must exist before
/// the old one's `replaced_by` can point at it ([`replace_with`]).
async fn retire(conn: &mut Conn, old: &Subscription, now: DateTime<Utc>) -> Result<i64> {
    let mut carried = 0;
    if old.credits_remaining > 0 && now < old.period_end {
        carried = old.credits_remaining;
        carry_over(conn, old, now).await?;
    }
    diesel::update(subscriptions::table.find(old.id))
        .set((subscriptions::status.eq(Status::Replaced), subscriptions::updated_at.eq(now)))
        .execute(conn)
        .await?;
    orders::cancel_renewals_of(conn, old.id, now).await?;
    refund_unused_renewals(conn, old, now).await?;
    Ok(carried)
}

/// What a new live paid row (a purchase or a trial) is.
struct NewLive<'a> {
    version: &'a Version,
    /// The order that bought it; None for a trial.
    order_id: Option<&'a str>,
    /// Anniversaries count from it.
    anchor_at: DateTime<Utc>,
    period_end: DateTime<Utc>,
    trial_end: Option<DateTime<Utc>>,
}

/// Inserts `new` for `user_id` from `now`, with the version's credits plus
/// those carried over from `old` (the user's live subscription, locked, if
/// any), which it replaces: [`retire`] first, then the retired row points
/// at the new one.
async fn replace_with(
    conn: &mut Conn,
    user_id: &str,
    old: Option<&Subscription>,
    new: NewLive<'_>,
    now: DateTime<Utc>,
) -> Result<Subscription> {
    let carried = match old {
        Some(old) => retire(conn, old, now).await?,
        None => 0,
    };
    let id = Uuid::new_v4();
    let credits = new.version.credits_per_period + carried;
    let sub = diesel::insert_into(subscriptions::table)
        .values((
            subscriptions::id.eq(id),
            subscriptions::user_id.eq(user_id),
            subscriptions::plan_id.eq(&new.version.plan_id),
            subscriptions::plan_version.eq(new.version.version),
            subscriptions::order_id.eq(new.order_id),
            subscriptions::status.eq(Status::Active),
            subscriptions::anchor_at.eq(new.anchor_at),
            subscriptions::calendar_periods.eq(false),
            subscriptions::period_start.eq(now),
            subscriptions::period_end.eq(new.period_end),
            subscriptions::trial_end.eq(new.trial_end),
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

pub async fn create_paid(
    conn: &mut Conn,
    user_id: &str,
    version: &Version,
    order_id: &str,
    old: Option<Subscription>,
    saved: Option<(&SavedMethod, Option<MandateLimits>)>,
    now: DateTime<Utc>,
) -> Result<Subscription> {
    // The first anniversary period, [now, now + 1 month or year), as SQL
    // computes it from the version's period.
    let (_, end) = periods::period_at(conn, now, false, now, version.period.months()).await?;
    let new = NewLive { version, order_id: Some(order_id), anchor_at: now, period_end: end, trial_end: None };
    let sub = replace_with(conn, user_id, old.as_ref(), new, now).await?;
    if let Some((m, limits)) = saved {
        save_method(conn, sub.id, m, limits, now).await?;
        return get(conn, sub.id).await;
    }
    Ok(sub)
}
