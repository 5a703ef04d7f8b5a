//! Starting a new ACTIVE session: CreateSession, RenewSession (package
//! change) and RecoverSession share one shape: ask billing for the order
//! (no connection held meanwhile), then in one transaction, serialized per
//! user, retire the user's ACTIVE session and insert the new one.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use proto::billing::v1 as bpb;
use sha2::{Digest, Sha256};
use shared::{
    client::Budget,
    db::Conn,
    idempotency::{self, Key, Outcome},
    keyed_transaction,
};
use tonic_types::StatusExt;
use uuid::Uuid;

use super::{RETENTION, Session, Status, TTL, expire_if_lapsed, find, lock, lock_user};
use crate::{App, Error, Result, schema::checkout_sessions as cs};

/// The new session and the one it replaced or recovered, if any.
#[derive(Debug, Clone)]
pub struct Started {
    pub session: Session,
    pub previous: Option<Session>,
}

pub type Encode<'a, T> = &'a (dyn Fn(&T) -> Vec<u8> + Send + Sync);

/// Price snapshot and gateway order from billing.
struct Quote {
    plan_id: String,
    amount_minor: i64,
    currency: String,
    order_id: String,
}

/// CreateOrder validates the plan (unknown → NOT_FOUND, not purchasable →
/// FAILED_PRECONDITION) and is idempotent per session id, so a retried
/// create reuses the same order.
async fn quote(app: &App, budget: Budget, id: Uuid, user_id: &str, plan_id: &str) -> Result<Quote> {
    let order = app.billing.create_order(budget, id, user_id, plan_id).await.map_err(|e| settled_order(e, id))?;
    // A new ACTIVE session must never carry an order that can no longer take
    // a payment (or already took one), whatever billing answered.
    match bpb::OrderStatus::try_from(order.status) {
        Ok(bpb::OrderStatus::Created) => {}
        Ok(bpb::OrderStatus::Cancelled) => return Err(order_cancelled(id)),
        Ok(bpb::OrderStatus::Paid) => return Err(order_paid(id)),
        _ => return Err(Error::Internal(format!("billing returned order {} with status {}", order.id, order.status))),
    }
    Ok(Quote { plan_id: order.plan_id, amount_minor: order.amount_minor, currency: order.currency, order_id: order.id })
}

fn order_cancelled(id: Uuid) -> Error {
    Error::precondition(
        "ORDER_CANCELLED",
        format!("checkout_session:{id}"),
        "the checkout session of this request was cleaned up and its order cancelled; \
         start again with a new idempotency key",
    )
}

fn order_paid(id: Uuid) -> Error {
    Error::precondition(
        "ORDER_PAID",
        format!("checkout_session:{id}"),
        "the order of this checkout session is already paid; read the user's sessions instead of starting again",
    )
}

/// Billing refuses CreateOrder for a session whose order is settled
/// (FAILED_PRECONDITION ORDER_CANCELLED / ORDER_PAID): answered with
/// checkout's own wording, the code unchanged.
fn settled_order(e: Error, id: Uuid) -> Error {
    if let Error::Billing(s) = &e
        && s.code() == tonic::Code::FailedPrecondition
    {
        let kinds: Vec<String> = s
            .get_error_details()
            .precondition_failure()
            .map(|p| p.violations.iter().map(|v| v.r#type.clone()).collect())
            .unwrap_or_default();
        if kinds.iter().any(|k| k == "ORDER_CANCELLED") {
            return order_cancelled(id);
        }
        if kinds.iter().any(|k| k == "ORDER_PAID") {
            return order_paid(id);
        }
    }
    e
}

pub(super) async fn peek(app: &App, key: Option<&Key>) -> Result<Option<Vec<u8>>> {
    match key {
        Some(k) => Ok(idempotency::peek(&mut *app.conn().await?, k).await?),
        None => Ok(None),
    }
}

/// Retires the user's ACTIVE session, if any: EXPIRED when it lapsed,
/// otherwise INVALIDATED and pointing at its replacement.
async fn retire_active(c: &mut Conn, user_id: &str, replacement: Uuid, now: DateTime<Utc>) -> Result<Option<Session>> {
    diesel::update(cs::table.filter(cs::user_id.eq(user_id)).filter(cs::status.eq("ACTIVE")).filter(cs::expires_at.le(now)))
        .set((cs::status.eq("EXPIRED"), cs::updated_at.eq(now)))
        .execute(c)
        .await?;
    Ok(diesel::update(cs::table.filter(cs::user_id.eq(user_id)).filter(cs::status.eq("ACTIVE")))
        .set((cs::status.eq("INVALIDATED"), cs::replaced_by.eq(replacement), cs::updated_at.eq(now)))
        .returning(Session::as_returning())
        .get_result(c)
        .await
        .optional()?)
}

async fn insert(
    c: &mut Conn,
    id: Uuid,
    user_id: &str,
    q: &Quote,
    recovered_from: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Session> {
    Ok(diesel::insert_into(cs::table)
        .values((
            cs::id.eq(id),
            cs::user_id.eq(user_id),
            cs::plan_id.eq(&q.plan_id),
            cs::status.eq("ACTIVE"),
            cs::amount_minor.eq(q.amount_minor),
            cs::currency.eq(&q.currency),
            cs::order_id.eq(&q.order_id),
            cs::expires_at.eq(now + TTL),
            cs::recovered_from.eq(recovered_from),
            cs::created_at.eq(now),
            cs::updated_at.eq(now),
        ))
        .returning(Session::as_returning())
        .get_result(c)
        .await?)
}

/// The id of the session a keyed create makes: the same for a retry of the
/// same request, so a retry after the key's record was purged finds the
/// same session and billing's order. The request hash is part of it so a
/// different request under the same key never shares that order (the key's
/// transaction then answers IDEMPOTENCY_KEY_REUSED or ABORTED).
fn keyed_id(k: &Key, salt: &str) -> Uuid {
    k.derived_uuid(&format!("{salt}|{}", hex::encode(&k.request_hash)))
}

/// CreateSession: at most one ACTIVE session per user; the previous one is
/// invalidated in the same transaction, unless billing reports it paid: then
/// it is completed instead and the new session starts beside it.
pub async fn create(
    app: &App,
    user_id: &str,
    plan_id: &str,
    budget: Budget,
    key: Option<&Key>,
    encode: Encode<'_, Started>,
) -> Result<Outcome<Started>> {
    if let Some(bytes) = peek(app, key).await? {
        return Ok(Outcome::Replay(bytes));
    }
    let id = key.map(|k| keyed_id(k, user_id)).unwrap_or_else(Uuid::new_v4);
    let active = {
        let mut c = app.conn().await?;
        // Same key and request after the key's record was purged: the same
        // session, without asking billing for an order again (its order may
        // have been cancelled by cleanup meanwhile).
        if key.is_some()
            && let Some(session) = existing(&mut c, id).await?
        {
            return Ok(Outcome::Fresh(Started { session, previous: None }));
        }
        active_of(&mut c, user_id).await?
    };
    // Paid at the gateway but not completed here: complete it rather than
    // invalidate a purchase the customer paid for.
    if let Some(active) = &active {
        super::complete::sync_one(app, budget, active).await?;
    }
    let q = quote(app, budget, id, user_id, plan_id).await?;
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    keyed_transaction!(conn, key, now, encode, |c| {
        lock_user(c, user_id).await?;
        match existing(c, id).await? {
            // A concurrent identical create committed first.
            Some(session) => Started { session, previous: None },
            None => {
                let previous = retire_active(c, user_id, id, now).await?;
                let session = insert(c, id, user_id, &q, None, now).await?;
                Started { session, previous }
            }
        }
    })
}

async fn active_of(c: &mut Conn, user_id: &str) -> Result<Option<Session>> {
    Ok(cs::table
        .filter(cs::user_id.eq(user_id))
        .filter(cs::status.eq("ACTIVE"))
        .select(Session::as_select())
        .first(c)
        .await
        .optional()?)
}

async fn existing(c: &mut Conn, id: Uuid) -> Result<Option<Session>> {
    Ok(cs::table.find(id).select(Session::as_select()).first(c).await.optional()?)
}

/// Hops [`head_of`] follows before giving up: far beyond any real chain of
/// plan changes, small enough to bound one query.
const MAX_CHAIN: i32 = 10_000;

#[derive(QueryableByName)]
struct Link {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    more: bool,
}

/// The newest session in a chain of replacements, found with one recursive
/// query however long the chain is.
async fn head_of(c: &mut Conn, s: Session) -> Result<Session> {
    if !(s.is(Status::Invalidated) && s.replaced_by.is_some()) {
        return Ok(s);
    }
    let last: Link = diesel::sql_query(
        "WITH RECURSIVE chain AS ( \
           SELECT id, status, replaced_by, 0 AS depth FROM checkout_sessions WHERE id = $1 \
           UNION ALL \
           SELECT n.id, n.status, n.replaced_by, chain.depth + 1 \
           FROM chain JOIN checkout_sessions n ON n.id = chain.replaced_by \
           WHERE chain.status = 'INVALIDATED' AND chain.depth < $2) \
         SELECT id, (status = 'INVALIDATED' AND replaced_by IS NOT NULL) AS more \
         FROM chain ORDER BY depth DESC LIMIT 1",
    )
    .bind::<diesel::sql_types::Uuid, _>(s.id)
    .bind::<diesel::sql_types::Integer, _>(MAX_CHAIN)
    .get_result(c)
    .await
    .optional()?
    .ok_or_else(|| Error::not_found("checkout_session", s.id))?;
    if last.more {
        return Err(Error::precondition(
            "REPLACEMENT_CHAIN_TOO_LONG",
            s.id,
            format!("the session was replaced more than {MAX_CHAIN} times; start a new session (CreateSession)"),
        ));
    }
    find(c, last.id).await
}

fn not_renewable(s: &Session, now: DateTime<Utc>) -> Option<Error> {
    if s.is(Status::Completed) {
        return Some(Error::precondition("SESSION_COMPLETED", s.id, "the session is already paid"));
    }
    if !s.is(Status::Active) || s.lapsed(now) {
        return Some(Error::precondition(
            "SESSION_NOT_ACTIVE",
            s.id,
            "the session expired or was invalidated; recover it first (RecoverSession)",
        ));
    }
    None
}

/// RenewSession (package change): the session becomes INVALIDATED
/// with `replaced_by`, a new ACTIVE one starts for `plan_id` with a fresh
/// 24 h. Renewing an already replaced session with the plan of its
/// replacement returns the replacement.
pub async fn renew(
    app: &App,
    id: Uuid,
    plan_id: &str,
    budget: Budget,
    key: Option<&Key>,
    encode: Encode<'_, Started>,
) -> Result<Outcome<Started>> {
    if let Some(bytes) = peek(app, key).await? {
        return Ok(Outcome::Replay(bytes));
    }
    let now = app.clock.now();
    let (original, head) = {
        let mut c = app.conn().await?;
        let original = find(&mut c, id).await?;
        let head = head_of(&mut c, original.clone()).await?;
        (original, head)
    };
    if let Some(e) = not_renewable(&head, now) {
        return Err(e);
    }
    if super::complete::sync_one(app, budget, &head).await? {
        return Err(Error::precondition("SESSION_COMPLETED", head.id, "the session is already paid"));
    }
    if head.plan_id == plan_id {
        let previous = (head.id != original.id).then_some(original);
        return Ok(Outcome::Fresh(Started { session: head, previous }));
    }
    let new_id = key.map(|k| keyed_id(k, &head.id.to_string())).unwrap_or_else(Uuid::new_v4);
    let q = quote(app, budget, new_id, &head.user_id, plan_id).await?;
    let mut conn = app.conn().await?;
    keyed_transaction!(conn, key, now, encode, |c| {
        lock_user(c, &head.user_id).await?;
        let current = lock(c, head.id).await?;
        if !current.is(Status::Active) || current.lapsed(now) {
            // Lost a race with another renew, a completion or expiry.
            let newest = head_of(c, current).await?;
            if newest.is(Status::Active) && !newest.lapsed(now) && newest.plan_id == plan_id {
                Started { session: newest, previous: Some(head.clone()) }
            } else {
                return Err(not_renewable(&newest, now).unwrap_or_else(|| {
                    Error::precondition("SESSION_CHANGED", head.id, "the session changed meanwhile; read it and retry")
                }));
            }
        } else if let Some(session) = existing(c, new_id).await? {
            Started { session, previous: Some(head.clone()) }
        } else {
            let previous = retire_active(c, &head.user_id, new_id, now).await?;
            let session = insert(c, new_id, &head.user_id, &q, None, now).await?;
            Started { session, previous }
        }
    })
}

async fn recovered_from(c: &mut Conn, source: Uuid) -> Result<Option<Session>> {
    Ok(cs::table.filter(cs::recovered_from.eq(source)).select(Session::as_select()).first(c).await.optional()?)
}

/// The session id a recovery of `source` gets: the same for every attempt,
/// so concurrent recoveries share one billing order and one row.
fn recovery_id(source: Uuid) -> Uuid {
    let digest = Sha256::digest(format!("recover|{source}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// RecoverSession: an EXPIRED or INVALIDATED session younger than 7 days
/// comes back as a new ACTIVE session; recovering twice returns the same one.
pub async fn recover(
    app: &App,
    id: Uuid,
    budget: Budget,
    key: Option<&Key>,
    encode: Encode<'_, Started>,
) -> Result<Outcome<Started>> {
    if let Some(bytes) = peek(app, key).await? {
        return Ok(Outcome::Replay(bytes));
    }
    let now = app.clock.now();
    let source = {
        let mut c = app.conn().await?;
        let source = find(&mut c, id).await?;
        if let Some(done) = recovered_from(&mut c, id).await? {
            return Ok(Outcome::Fresh(Started { session: done, previous: Some(source) }));
        }
        source
    };
    if source.is(Status::Completed) {
        return Err(Error::precondition("SESSION_COMPLETED", id, "the session is paid; nothing to recover"));
    }
    if source.is(Status::Active) && !source.lapsed(now) {
        return Err(Error::precondition("SESSION_ACTIVE", id, "the session is still active; nothing to recover"));
    }
    if now - source.created_at > RETENTION {
        return Err(Error::precondition(
            "SESSION_TOO_OLD",
            id,
            "sessions older than 7 days cannot be recovered; create a new one",
        ));
    }
    // Paid at the gateway but never completed here: complete it instead of
    // selling the same purchase twice.
    if super::complete::sync_one(app, budget, &source).await? {
        return Err(Error::precondition("SESSION_COMPLETED", id, "the session is paid; nothing to recover"));
    }
    let new_id = recovery_id(id);
    let q = quote(app, budget, new_id, &source.user_id, &source.plan_id).await?;
    let mut conn = app.conn().await?;
    keyed_transaction!(conn, key, now, encode, |c| {
        lock_user(c, &source.user_id).await?;
        match recovered_from(c, id).await? {
            Some(done) => Started { session: done, previous: Some(source.clone()) },
            None => {
                let current = lock(c, id).await?;
                if current.is(Status::Completed) {
                    return Err(Error::precondition("SESSION_COMPLETED", id, "the session is paid; nothing to recover"));
                }
                let current = expire_if_lapsed(c, current, now).await?;
                retire_active(c, &source.user_id, new_id, now).await?;
                let session = insert(c, new_id, &source.user_id, &q, Some(id), now).await?;
                Started { session, previous: Some(current) }
            }
        }
    })
}
