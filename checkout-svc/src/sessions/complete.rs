//! Completing sessions: CompleteSession (the customer came back with the
//! gateway's signature) and the completion sync (the customer paid, the
//! webhook reached billing, and nobody came back). Both end in
//! [`mark_completed`]. A verified payment completes even an expired or
//! invalidated session: money was taken, so the record must say so.
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use proto::billing::v1 as bpb;
use shared::status::ErrorReason;
use shared::{
    client::Budget,
    db::Conn,
    idempotency::{Encode, Key, Outcome},
    keyed_transaction,
};
use uuid::Uuid;

use super::{RETENTION, Session, Status, find, lock, lock_user, peek};
use crate::{App, Error, Result, schema::checkout_sessions as cs};

#[derive(Debug, Clone)]
pub struct Completed {
    pub session: Session,
    /// The session had been completed before (retry or sync).
    pub replayed: bool,
}

/// Marks a session COMPLETED with billing's subscription (idempotent).
pub(super) async fn mark_completed(
    c: &mut Conn,
    id: Uuid,
    payment_id: &str,
    subscription_id: &str,
    now: DateTime<Utc>,
) -> Result<Completed> {
    // Serialized per user like every start (user lock first, then rows):
    // the sessions of one user that share a renewal order complete once.
    let user_id = find(c, id).await?.user_id;
    lock_user(c, &user_id).await?;
    let s = lock(c, id).await?;
    if s.is(Status::Completed) {
        return Ok(Completed { session: s, replayed: true });
    }
    // One payment completes one session: another checkout that offered the
    // same renewal order already took it (docs/design.md, Invariants 26).
    if let Some(done) = cs::table
        .filter(cs::order_id.eq(&s.order_id))
        .filter(cs::status.eq(Status::Completed))
        .select(Session::as_select())
        .first(c)
        .await
        .optional()?
    {
        return Ok(Completed { session: done, replayed: true });
    }
    // Paid: the user's other ACTIVE session (a replacement or a newer
    // checkout) must not take a second payment, and neither may the orders
    // of the user's other retired sessions (Invariants 27).
    diesel::update(cs::table.filter(cs::user_id.eq(&s.user_id)).filter(cs::status.eq(Status::Active)).filter(cs::id.ne(id)))
        .set((cs::status.eq(Status::Invalidated), cs::replaced_by.eq(id), cs::updated_at.eq(now)))
        .execute(c)
        .await?;
    super::withdraw::mark_retired(c, &s.user_id, &s, now).await?;
    let session = diesel::update(cs::table.find(id))
        .set((
            cs::status.eq(Status::Completed),
            cs::completed_at.eq(now),
            cs::payment_id.eq(payment_id),
            cs::subscription_id.eq(subscription_id),
            cs::updated_at.eq(now),
        ))
        .returning(Session::as_returning())
        .get_result(c)
        .await?;
    tracing::info!(session_id = %id, subscription_id, "checkout session completed");
    Ok(Completed { session, replayed: false })
}

/// CompleteSession: billing verifies the signature against the order and
/// captures the payment; a bad signature leaves the session as it was.
pub async fn complete(
    app: &App,
    id: Uuid,
    payment_id: &str,
    signature: &str,
    budget: Budget,
    key: Option<&Key>,
    encode: Encode<'_, Completed>,
) -> Result<Outcome<Completed>> {
    // A reused key is refused before billing captures anything: the
    // transaction below would refuse it only after the money moved.
    if let Some(bytes) = peek(app, key).await? {
        return Ok(Outcome::Replay(bytes));
    }
    let session = find(&mut *app.conn().await?, id).await?;
    if session.is(Status::Completed) && session.payment_id.as_deref() != Some(payment_id) {
        return Err(Error::precondition(ErrorReason::SessionCompleted, id, "the session was completed with another payment"));
    }
    // Always through billing, even for a repeat: the signature is checked on
    // every call, and billing answers a repeat with the same subscription.
    let verified = app.billing.verify_payment(budget, &session.order_id, payment_id, signature).await?;
    let subscription_id = verified
        .subscription
        .map(|s| s.id)
        .ok_or_else(|| Error::internal("billing verified the payment but returned no subscription"))?;
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    let out: Result<Outcome<_>> =
        keyed_transaction!(conn, key, now, encode, |c| mark_completed(c, id, payment_id, &subscription_id, now).await?);
    let out = out?;
    drop(conn);
    super::withdraw::settle_user(app, budget, &session.user_id).await;
    Ok(out)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncCounts {
    /// Orders asked about.
    pub checked: usize,
    /// Sessions found paid and completed.
    pub completed: usize,
    /// Retired sessions whose order billing confirmed withdrawn.
    pub orders_cancelled: usize,
}

/// How far back the sync looks: everything cleanup has not deleted yet.
fn sync_horizon(now: DateTime<Utc>) -> DateTime<Utc> {
    now - RETENTION - Duration::days(1)
}

/// The sessions among `sessions` whose order billing reports PAID (one
/// batched call). A paid order is never expired or deleted, even in the odd
/// case that billing has no subscription for it yet.
pub(super) async fn paid_orders(app: &App, budget: Budget, sessions: &[Session]) -> Result<Vec<(Uuid, bpb::Order)>> {
    if sessions.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = sessions.iter().map(|s| s.order_id.clone()).collect();
    let orders = app.billing.batch_get_orders(budget, &ids).await?;
    // Of the sessions sharing a renewal order, the one a payment completes
    // is the ACTIVE one, else the newest.
    let mut sessions: Vec<&Session> = sessions.iter().collect();
    sessions.sort_by_key(|s| (!s.is(Status::Active), std::cmp::Reverse(s.created_at)));
    Ok(sessions
        .into_iter()
        .filter_map(|s| {
            orders.iter().find(|o| o.id == s.order_id && o.status == bpb::OrderStatus::Paid as i32).map(|o| (s.id, o.clone()))
        })
        .collect())
}

/// Billing's view of one session's order: completes the session when the
/// order is paid (the customer paid and never came back). Renew and recover
/// ask this first, so a paid session is never sold a second time.
pub(super) async fn sync_one(app: &App, budget: Budget, session: &Session) -> Result<bool> {
    let paid = paid_orders(app, budget, std::slice::from_ref(session)).await?;
    Ok(complete_paid(app, &paid).await? > 0 || !paid.is_empty())
}

/// Completes the sessions among `paid` (from [`paid_orders`]) that billing
/// has a subscription for (reconcile repairs a paid order without one).
pub(super) async fn complete_paid(app: &App, paid: &[(Uuid, bpb::Order)]) -> Result<usize> {
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    let mut n = 0;
    for (id, order) in paid.iter().filter(|(_, o)| !o.subscription_id.is_empty()) {
        let done = {
            use diesel_async::AsyncConnection;
            conn.transaction(async |c| mark_completed(c, *id, &order.payment_id, &order.subscription_id, now).await).await?
        };
        if !done.replayed {
            n += 1;
            tracing::info!(session_id = %id, order_id = %order.id, "completed by sync: paid at billing, never completed here");
        }
    }
    Ok(n)
}

/// Completion sync: pages through non-COMPLETED sessions, asks billing about
/// their orders `batch` at a time, and completes the paid ones.
pub async fn completion_sync(app: &App, batch: i64) -> Result<SyncCounts> {
    let now = app.clock.now();
    let mut counts = SyncCounts::default();
    // First the cancellations checkout stored but billing has not confirmed
    // (docs/design.md, Invariants 27).
    // A page billing could not take (a held row, billing down) must not stop
    // the scan below that completes paid sessions: the next run retries it.
    match super::withdraw::settle_all(app).await {
        Ok(withdrawn) => {
            counts.orders_cancelled += withdrawn.confirmed;
            counts.completed += withdrawn.completed;
        }
        Err(e) => tracing::warn!(error = %e, "order cancellations of retired sessions left to the next run"),
    }
    let mut after = Uuid::nil();
    loop {
        let page: Vec<Session> = {
            let mut c = app.conn().await?;
            cs::table
                .filter(cs::status.ne(Status::Completed))
                .filter(cs::created_at.gt(sync_horizon(now)))
                .filter(cs::id.gt(after))
                .order(cs::id)
                .limit(batch)
                .select(Session::as_select())
                .load(&mut *c)
                .await?
        };
        let Some(last) = page.last() else { break };
        after = last.id;
        counts.checked += page.len();
        let paid = paid_orders(app, Budget::new(app.config.billing_timeout), &page).await?;
        counts.completed += complete_paid(app, &paid).await?;
        if (page.len() as i64) < batch {
            break;
        }
    }
    // Sessions completed above retired their users' other sessions.
    if counts.completed > 0 {
        match super::withdraw::settle_all(app).await {
            Ok(withdrawn) => counts.orders_cancelled += withdrawn.confirmed,
            Err(e) => tracing::warn!(error = %e, "order cancellations of retired sessions left to the next run"),
        }
    }
    Ok(counts)
}
