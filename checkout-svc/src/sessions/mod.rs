//! Checkout sessions, stored in PostgreSQL only: sessions kept in process
//! memory were lost on restart and broke package changes. A session is
//! visible to every replica the moment the RPC that created it returns,
//! because the RPC returns only after its transaction committed.
mod cleanup;
mod complete;
mod recover;
mod renew;
mod start;
mod withdraw;

use chrono::{DateTime, Duration, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::{
    db::Conn,
    etag::Etag,
    idempotency::{self, Key},
    ids::UserId,
};
use uuid::Uuid;

pub use cleanup::{CleanupCounts, cleanup};
pub use complete::{Completed, complete, completion_sync};
pub use recover::recover;
pub use renew::renew;
pub use start::{Started, create};
pub use withdraw::{OrderCancellation, WithdrawCounts, settle_all};

use crate::{App, Error, Result, schema::checkout_sessions as cs};

/// An ACTIVE session expires this long after it was created.
pub const TTL: Duration = Duration::hours(24);
/// EXPIRED/INVALIDATED sessions can be recovered, and non-COMPLETED ones are
/// kept, for this long.
pub const RETENTION: Duration = Duration::days(7);

shared::text_enum! {
    /// Where a checkout session is (docs/design.md, "Checkout sessions").
    pub enum Status {
        Active = "ACTIVE",
        Completed = "COMPLETED",
        Expired = "EXPIRED",
        Invalidated = "INVALIDATED",
    }
}

#[derive(serde::Deserialize)] // an event's payload (crate::grpc::events)
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = cs, check_for_backend(diesel::pg::Pg))]
pub struct Session {
    pub id: Uuid,
    pub user_id: String,
    pub plan_id: String,
    pub status: Status,
    pub amount_minor: i64,
    pub currency: String,
    pub order_id: String,
    pub expires_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<Uuid>,
    pub recovered_from: Option<Uuid>,
    pub subscription_id: Option<String>,
    pub payment_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Session {
    pub fn is(&self, s: Status) -> bool {
        self.status == s
    }

    /// The session's etag: a digest of every field but `updated_at`, so
    /// every change a caller can see changes it, while bookkeeping that only
    /// touches `updated_at` (the withdrawal of a retired session's order)
    /// does not (docs/design.md, "API contract: lists, views, etags").
    /// Destructured, so a new field of the struct cannot be left out.
    pub fn etag(&self) -> Etag {
        shared::etag_of!(
            "checkout_session",
            self,
            Session {
                id,
                user_id,
                plan_id,
                status,
                amount_minor,
                currency,
                order_id,
                expires_at,
                completed_at,
                replaced_by,
                recovered_from,
                subscription_id,
                payment_id,
                created_at
            },
            skip { updated_at }
        )
    }

    /// ACTIVE but past its expiry: reads as EXPIRED.
    pub fn lapsed(&self, now: DateTime<Utc>) -> bool {
        self.is(Status::Active) && now >= self.expires_at
    }
}

async fn find(conn: &mut Conn, id: Uuid) -> Result<Session> {
    cs::table
        .find(id)
        .select(Session::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("checkout_session", id))
}

async fn lock(conn: &mut Conn, id: Uuid) -> Result<Session> {
    cs::table
        .find(id)
        .select(Session::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("checkout_session", id))
}

/// The seed of the per-user advisory lock's key,
/// `hashtextextended(user_id, USER_LOCK_SEED)`. Every replica must use the
/// same one: a change splits the lock between old and new replicas during
/// a rollout.
const USER_LOCK_SEED: i64 = 7;

/// Serializes the session changes of one user inside a transaction, so the
/// "at most one ACTIVE" rule never turns into a race of unique violations.
async fn lock_user(conn: &mut Conn, user_id: &str) -> Result<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
        .bind::<sql_types::Text, _>(user_id)
        .bind::<sql_types::BigInt, _>(USER_LOCK_SEED)
        .execute(conn)
        .await?;
    Ok(())
}

/// The stored response of a keyed request, looked up before any slow work
/// (asking billing): every keyed RPC here starts with it, and its
/// transaction checks the key again.
async fn peek(app: &App, key: Option<&Key>) -> Result<Option<Vec<u8>>> {
    match key {
        Some(k) => Ok(idempotency::peek(&mut *app.conn().await?, k).await?),
        None => Ok(None),
    }
}

/// Marks a lapsed ACTIVE session EXPIRED (idempotent).
async fn expire_if_lapsed(conn: &mut Conn, s: Session, now: DateTime<Utc>) -> Result<Session> {
    if !s.lapsed(now) {
        return Ok(s);
    }
    let updated = diesel::update(cs::table.find(s.id).filter(cs::status.eq(Status::Active)).filter(cs::expires_at.le(now)))
        .set((cs::status.eq(Status::Expired), cs::updated_at.eq(now)))
        .returning(Session::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    match updated {
        Some(s) => Ok(s),
        None => find(conn, s.id).await,
    }
}

/// GetSession: an ACTIVE session past `expires_at` reads as EXPIRED (and is
/// marked so).
pub async fn get(conn: &mut Conn, id: Uuid, now: DateTime<Utc>) -> Result<Session> {
    let s = find(conn, id).await?;
    expire_if_lapsed(conn, s, now).await
}

/// A page of a user's sessions, newest first (keyset on created_at, id).
pub async fn list(
    conn: &mut Conn,
    user_id: &UserId,
    status: Option<Status>,
    page_size: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
    now: DateTime<Utc>,
) -> Result<(Vec<Session>, Option<(DateTime<Utc>, Uuid)>)> {
    let mut q = cs::table.filter(cs::user_id.eq(user_id.as_str())).select(Session::as_select()).into_boxed();
    if let Some(st) = status {
        q = match st {
            // Lapsed ACTIVE sessions read as EXPIRED in lists too.
            Status::Active => q.filter(cs::status.eq(Status::Active)).filter(cs::expires_at.gt(now)),
            Status::Expired => {
                q.filter(cs::status.eq(Status::Expired).or(cs::status.eq(Status::Active).and(cs::expires_at.le(now))))
            }
            other => q.filter(cs::status.eq(other)),
        };
    }
    if let Some((t, id)) = after {
        q = q.filter(cs::created_at.lt(t).or(cs::created_at.eq(t).and(cs::id.lt(id))));
    }
    let mut rows: Vec<Session> = q.order((cs::created_at.desc(), cs::id.desc())).limit(page_size + 1).load(conn).await?;
    let next = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last().map(|s| (s.created_at, s.id))
    } else {
        None
    };
    for s in &mut rows {
        if s.lapsed(now) {
            s.status = Status::Expired;
        }
    }
    Ok((rows, next))
}
