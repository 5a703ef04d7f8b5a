//! Usage sessions (TEXT and CALL): started under the plan's limits, charged
//! through `deductions`, ended with a final deduction.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{
    db::{Conn, Races},
    idempotency::{Encode, Key, Outcome},
};
use uuid::Uuid;

use crate::{
    App, Error, Result, limits, plans,
    schema::usage_sessions,
    subscriptions::{self, Subscription},
};

shared::text_enum! {
    /// What a usage session is; both are charged per started interval.
    pub enum Kind {
        Text = "TEXT",
        Call = "CALL",
    }
}

shared::text_enum! {
    /// ACTIVE until EndUsageSession (or reconcile's repair) ends it.
    pub enum Status {
        Active = "ACTIVE",
        Ended = "ENDED",
    }
}

/// A usage session row.
#[derive(serde::Deserialize)] // an event's payload (crate::events)
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = usage_sessions, check_for_backend(diesel::pg::Pg))]
pub struct UsageSession {
    pub id: Uuid,
    pub user_id: String,
    pub subscription_id: Uuid,
    pub kind: Kind,
    pub status: Status,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub deduction_interval_seconds: i32,
    pub auto_deductions_processed: i64,
    pub units_charged: i64,
    pub units_unpaid: i64,
    pub final_units_charged: Option<i64>,
}

pub async fn get(conn: &mut Conn, id: Uuid) -> Result<UsageSession> {
    usage_sessions::table
        .find(id)
        .select(UsageSession::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("usage_session", id))
}

/// A session with the balance of its subscription.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub session: UsageSession,
    pub credits_remaining: i64,
}

/// The session with the balance its next charge draws on: after the user
/// paid, that is the user's live subscription, not the replaced one the
/// session started on. A read: no writes, no locks.
pub async fn view(conn: &mut Conn, id: Uuid, now: DateTime<Utc>) -> Result<SessionView> {
    let session = get(conn, id).await?;
    let started_on = subscriptions::get(conn, session.subscription_id).await?;
    let credits_remaining = if started_on.status.is_live() {
        subscriptions::as_of(conn, started_on, now).await?.credits_remaining
    } else {
        let live = subscriptions::current(conn, &session.user_id, now).await?;
        // No live row at all: the next charge records its units unpaid.
        if live.id.is_nil() { 0 } else { live.credits_remaining }
    };
    Ok(SessionView { session, credits_remaining })
}

/// Starts a session if the plan's limits, counted inside the current billing
/// period only (docs/design.md, Invariants 13), allow it. The subscription row stays locked while
/// counting, so concurrent starts cannot overshoot a limit. With a key, the
/// key and the new session commit together (docs/design.md, Idempotency).
pub async fn start(
    app: &App,
    user_id: &str,
    kind: Kind,
    key: Option<&Key>,
    encode: Encode<'_, SessionView>,
) -> Result<Outcome<SessionView>> {
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| {
        shared::keyed!(c, key, now, encode, start_in_tx(c, user_id, kind, now).await?)
    })
}

/// [`start`] inside the caller's transaction.
async fn start_in_tx(c: &mut Conn, user_id: &str, kind: Kind, now: DateTime<Utc>) -> Result<SessionView> {
    let sub = subscriptions::current_locked(c, user_id, now).await?;
    let plan = plans::get(c, &sub.plan_id).await?;
    let terms = plans::version(c, &sub.plan_id, sub.plan_version).await?;
    let used = limits::period_usage(c, user_id, &sub, now).await?;
    limits::check_start(&terms.limits(), &sub, &used)?;
    let session = insert(c, user_id, &sub, plan.deduction_interval_seconds, kind, now).await?;
    Ok(SessionView { session, credits_remaining: sub.credits_remaining })
}

async fn insert(
    conn: &mut Conn,
    user_id: &str,
    sub: &Subscription,
    interval: i32,
    kind: Kind,
    now: DateTime<Utc>,
) -> Result<UsageSession> {
    Ok(diesel::insert_into(usage_sessions::table)
        .values((
            usage_sessions::id.eq(Uuid::new_v4()),
            usage_sessions::user_id.eq(user_id),
            usage_sessions::subscription_id.eq(sub.id),
            usage_sessions::kind.eq(kind),
            usage_sessions::status.eq(Status::Active),
            usage_sessions::started_at.eq(now),
            usage_sessions::deduction_interval_seconds.eq(interval),
            usage_sessions::created_at.eq(now),
            usage_sessions::updated_at.eq(now),
        ))
        .returning(UsageSession::as_returning())
        .get_result(conn)
        .await?)
}
