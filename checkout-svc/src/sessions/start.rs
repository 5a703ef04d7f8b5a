//! Starting a new ACTIVE session. CreateSession (here), RenewSession
//! (`renew`) and RecoverSession (`recover`) share one shape: ask billing for the order
//! (no connection held meanwhile), then in one transaction, serialized per
//! user, retire the user's ACTIVE session and insert the new one.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use proto::billing::v1 as bpb;
use shared::status::ErrorReason;
use shared::{
    client::Budget,
    db::Conn,
    idempotency::{Encode, Key, Outcome},
    ids::{PlanId, UserId},
    keyed_transaction,
};
use tonic_types::StatusExt;
use uuid::Uuid;

use super::{Session, Status, TTL, lock_user, peek};
use crate::{App, Error, Result, billing::GatewayAccount, schema::checkout_sessions as cs};

/// The new session and the one it replaced or recovered, if any.
#[derive(Debug, Clone)]
pub struct Started {
    pub session: Session,
    pub previous: Option<Session>,
    /// The gateway account the frontend opens the payment widget with;
    /// only while `session` can take a payment (see `Started::new`).
    pub account: Option<GatewayAccount>,
}

impl Started {
    /// Keeps `account` only for a session open for payment (ACTIVE, not
    /// lapsed): a widget for any other would take money that buys nothing.
    pub(super) fn new(session: Session, previous: Option<Session>, account: Option<GatewayAccount>, now: DateTime<Utc>) -> Self {
        let open = session.is(Status::Active) && !session.lapsed(now);
        Self { account: account.filter(|_| open), session, previous }
    }
}

/// Price snapshot and gateway order from billing.
pub(super) struct Quote {
    plan_id: String,
    amount_minor: i64,
    currency: String,
    pub(super) order_id: String,
    /// The gateway account billing named with the order.
    pub(super) account: Option<GatewayAccount>,
}

/// CreateOrder validates the plan (unknown → NOT_FOUND, not purchasable →
/// FAILED_PRECONDITION) and is idempotent per session id, so a retried
/// create reuses the same order.
pub(super) async fn quote(app: &App, budget: Budget, id: Uuid, user_id: &str, plan_id: &str) -> Result<Quote> {
    let answer = app.billing.create_order(budget, id, user_id, plan_id).await.map_err(|e| settled_order(e, id))?;
    let order = answer.order;
    // A new ACTIVE session must never carry an order that can no longer take
    // a payment (or already took one), whatever billing answered.
    match bpb::OrderStatus::try_from(order.status) {
        Ok(bpb::OrderStatus::Created) => {}
        Ok(bpb::OrderStatus::Cancelled) => return Err(order_cancelled(id)),
        Ok(bpb::OrderStatus::Paid) => return Err(order_paid(id)),
        _ => return Err(Error::internal(format!("billing returned order {} with status {}", order.id, order.status))),
    }
    Ok(Quote {
        plan_id: order.plan_id,
        amount_minor: order.amount_minor,
        currency: order.currency,
        order_id: order.id,
        account: answer.account,
    })
}

/// [`quote`], and when it failed with an outcome checkout does not know and
/// no retry will ask for `id` again, the order billing may have made
/// withdrawn (docs/design.md, Invariants 7).
pub(super) async fn quote_or_withdraw(
    app: &App,
    budget: Budget,
    id: Uuid,
    user_id: &str,
    plan_id: &str,
    retry_reuses: impl Fn(&Error) -> bool,
) -> Result<Quote> {
    let q = quote(app, budget, id, user_id, plan_id).await;
    if let Err(e) = &q
        && !retry_reuses(e)
    {
        super::withdraw::withdraw_unanswered(app, id, e).await;
    }
    q
}

fn order_cancelled(id: Uuid) -> Error {
    Error::precondition(
        ErrorReason::OrderCancelled,
        format!("checkout_session:{id}"),
        "the checkout session of this request was cleaned up and its order cancelled; \
         start again with a new idempotency key (request_id)",
    )
}

fn order_paid(id: Uuid) -> Error {
    Error::precondition(
        ErrorReason::OrderPaid,
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

/// Retires the user's ACTIVE session, if any: EXPIRED when it lapsed,
/// otherwise INVALIDATED and pointing at its replacement.
async fn retire_active(c: &mut Conn, user_id: &str, replacement: Uuid, now: DateTime<Utc>) -> Result<Option<Session>> {
    diesel::update(
        cs::table.filter(cs::user_id.eq(user_id)).filter(cs::status.eq(Status::Active)).filter(cs::expires_at.le(now)),
    )
    .set((cs::status.eq(Status::Expired), cs::updated_at.eq(now)))
    .execute(c)
    .await?;
    Ok(diesel::update(cs::table.filter(cs::user_id.eq(user_id)).filter(cs::status.eq(Status::Active)))
        .set((cs::status.eq(Status::Invalidated), cs::replaced_by.eq(replacement), cs::updated_at.eq(now)))
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
            cs::status.eq(Status::Active),
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

/// The step every start shares inside its transaction (user lock held):
/// retires the user's ACTIVE session, inserts the new one and marks the
/// orders of the retired sessions for cancellation at billing
/// (docs/design.md, Invariants 27). Returns (retired ACTIVE session, new one).
pub(super) async fn replace_active(
    c: &mut Conn,
    id: Uuid,
    user_id: &str,
    q: &Quote,
    recovered_from: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<(Option<Session>, Session)> {
    let previous = retire_active(c, user_id, id, now).await?;
    let session = insert(c, id, user_id, q, recovered_from, now).await?;
    super::withdraw::mark_retired(c, user_id, &session, now).await?;
    Ok((previous, session))
}

/// The id of the session a keyed create makes: the same for a retry of the
/// same request, so a retry after the key's record was purged finds the
/// same session and billing's order. The request hash is part of it so a
/// different request under the same key never shares that order (the key's
/// transaction then answers IDEMPOTENCY_KEY_REUSED or ABORTED).
pub(super) fn keyed_id(k: &Key, salt: &str) -> Uuid {
    k.derived_uuid(&format!("{salt}|{}", hex::encode(&k.request_hash)))
}

/// A keyed start whose order billing reports cancelled: the answer of the
/// key, when it committed meanwhile, is this request's. A concurrent request
/// with the same key and body (so the same session id and order) passed the
/// key lookup with it, was then refused IDEMPOTENCY_KEY_REUSED by the
/// key's winner and withdrew that order (`withdraw::settle_unstored`). This
/// request lost the same key: IDEMPOTENCY_KEY_REUSED (or the replay of an
/// identical winner), never a cancelled order it was never shown
/// (docs/design.md, Idempotency).
pub(super) async fn key_answer_or(app: &App, key: Option<&Key>, e: Error) -> Result<Outcome<Started>> {
    let cancelled =
        matches!(&e, Error::Service(shared::error::ServiceError::FailedPrecondition { reason: ErrorReason::OrderCancelled, .. }));
    if cancelled && let Some(bytes) = peek(app, key).await? {
        return Ok(Outcome::Replay(bytes));
    }
    Err(e)
}

/// CreateSession: at most one ACTIVE session per user; the previous one is
/// invalidated in the same transaction, unless billing reports it paid: then
/// it is completed instead and the new session starts beside it.
pub async fn create(
    app: &App,
    user_id: &UserId,
    plan_id: &PlanId,
    budget: Budget,
    key: Option<&Key>,
    encode: Encode<'_, Started>,
) -> Result<Outcome<Started>> {
    let (user_id, plan_id) = (user_id.as_str(), plan_id.as_str());
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
            return Ok(Outcome::Fresh(Started::new(session, None, app.billing.last_account(), app.clock.now())));
        }
        active_of(&mut c, user_id).await?
    };
    // Paid at the gateway but not completed here: complete it rather than
    // invalidate a purchase the customer paid for.
    if let Some(active) = &active {
        super::complete::sync_one(app, budget, active).await?;
    }
    // The id of a keyed create depends on the key and request only: a retry
    // that may come asks billing for this very order again.
    let retry_reuses = |e: &Error| key.is_some() && super::withdraw::may_pass(e);
    let q = match quote_or_withdraw(app, budget, id, user_id, plan_id, retry_reuses).await {
        Ok(q) => q,
        Err(e) => return key_answer_or(app, key, e).await,
    };
    let now = app.clock.now();
    let out: Result<Outcome<_>> = async {
        let mut conn = app.conn().await?;
        keyed_transaction!(conn, key, now, encode, |c| {
            lock_user(c, user_id).await?;
            match existing(c, id).await? {
                // A concurrent identical create committed first.
                Some(session) => Started::new(session, None, q.account.clone(), now),
                None => {
                    let (previous, session) = replace_active(c, id, user_id, &q, None, now).await?;
                    Started::new(session, previous, q.account.clone(), now)
                }
            }
        })
    }
    .await;
    super::withdraw::settle_unstored(app, &q.order_id, &out, |s: &Started| &s.session.order_id, retry_reuses).await;
    let out = out?;
    super::withdraw::settle_user(app, budget, user_id).await;
    Ok(out)
}

async fn active_of(c: &mut Conn, user_id: &str) -> Result<Option<Session>> {
    Ok(cs::table
        .filter(cs::user_id.eq(user_id))
        .filter(cs::status.eq(Status::Active))
        .select(Session::as_select())
        .first(c)
        .await
        .optional()?)
}

pub(super) async fn existing(c: &mut Conn, id: Uuid) -> Result<Option<Session>> {
    Ok(cs::table.find(id).select(Session::as_select()).first(c).await.optional()?)
}
