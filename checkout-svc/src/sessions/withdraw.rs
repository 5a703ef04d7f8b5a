//! Withdrawing the orders of retired sessions (docs/design.md, Invariants
//! 23). A session retired by a newer one (CreateSession, RenewSession,
//! RecoverSession) or by the completion of another session of its user must
//! not take a payment: its order is cancelled at billing, so a payment that
//! lands anyway is an ORDER_CANCELLED discrepancy that reconcile refunds,
//! not a second purchase. The intent is an outbox column written in the
//! transaction that retires the session (`order_cancellation = PENDING`);
//! billing is asked after commit, with no connection held, and the
//! completion-sync job finishes whatever that call did not (billing down,
//! a crash in between). CancelOrders is idempotent, so replicas and retries
//! may ask twice.
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use proto::billing::v1 as bpb;
use shared::{client::Budget, db::Conn, error::ServiceError};
use uuid::Uuid;

use super::{Session, Status, complete::complete_paid};
use crate::{App, Error, Result, schema::checkout_sessions as cs};

/// At most this many sessions per CancelOrders call (billing's batch limit).
const PAGE: i64 = 500;

shared::text_enum! {
    /// The cancellation at billing of a retired session's order.
    pub enum OrderCancellation {
        /// Retired; billing not yet known to have withdrawn the order.
        Pending = "PENDING",
        /// Billing answered: cancelled, paid (the session is completed
        /// instead), or not this session's to cancel (a renewal order, which
        /// is still owed; an order billing never created).
        Confirmed = "CONFIRMED",
    }
}

/// In the transaction that retires sessions of `user_id`: marks the order of
/// every retired (neither ACTIVE nor COMPLETED) session of the user for
/// cancellation, except `keep` and the sessions that carry `keep`'s order
/// (a renewal order offered by several checkouts stays payable).
pub(super) async fn mark_retired(c: &mut Conn, user_id: &str, keep: &Session, now: DateTime<Utc>) -> Result<usize> {
    Ok(diesel::update(
        cs::table
            .filter(cs::user_id.eq(user_id))
            .filter(cs::id.ne(keep.id))
            .filter(cs::order_id.ne(&keep.order_id))
            .filter(cs::status.ne_all([Status::Active, Status::Completed]))
            .filter(cs::order_cancellation.is_null()),
    )
    .set((cs::order_cancellation.eq(OrderCancellation::Pending), cs::updated_at.eq(now)))
    .execute(c)
    .await?)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WithdrawCounts {
    /// Sessions whose order billing confirmed withdrawn (or never its to cancel).
    pub confirmed: usize,
    /// Of those, sessions found paid and completed instead.
    pub completed: usize,
}

/// After a transaction that retired sessions of `user_id` committed: asks
/// billing now. The caller's RPC has succeeded either way; what fails here
/// stays PENDING for the completion-sync job.
pub(super) async fn settle_user(app: &App, budget: Budget, user_id: &str) {
    // A retired session found paid is completed, which retires the user's
    // other sessions in turn: a second pass withdraws their orders.
    for _ in 0..2 {
        match page(app, budget, Some(user_id), Uuid::nil()).await {
            Ok((counts, _)) if counts.completed == 0 => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(user_id, error = %e, "order cancellation left to the completion-sync job");
                return;
            }
        }
    }
}

/// Whether a retry of a start that failed with `e` may ask billing for the
/// same session id again, so its order must stay open: only a failure that
/// may pass (billing or the database out of reach or out of time, a
/// concurrent request with the same key in flight). A refusal (lost race,
/// precondition, unknown resource, a key reused for another request) ends
/// the attempt for good, whatever the key.
pub(super) fn may_pass(e: &Error) -> bool {
    matches!(e, Error::BillingUnavailable(_) | Error::Service(ServiceError::Db(_) | ServiceError::IdempotencyKeyInFlight))
}

/// After a start's transaction (or its failure to get a connection): the
/// order billing gave it, when no stored session carries it (the start lost
/// a race, or failed in a way its retry will not ask for this order again:
/// `retry_reuses` says which failures leave it to the retry). Withdrawn, so
/// that an order nobody was shown never counts as the user's newer purchase
/// and makes the payable one superseded (docs/design.md, Invariants 7). With
/// a budget of its own: the request's is often what ran out.
pub(super) async fn settle_unstored<T>(
    app: &App,
    order_id: &str,
    out: &Result<shared::idempotency::Outcome<T>>,
    stored_order: impl Fn(&T) -> &str,
    retry_reuses: impl Fn(&Error) -> bool,
) {
    use shared::idempotency::Outcome;
    let unstored = match out {
        Ok(Outcome::Fresh(v)) => stored_order(v) != order_id,
        Ok(Outcome::Replay(_)) => false,
        Err(e) => !retry_reuses(e),
    };
    if !unstored {
        return;
    }
    if let Err(e) = app.billing.cancel_orders(Budget::new(app.config.billing_timeout), &[order_id.to_owned()]).await {
        tracing::warn!(order_id, error = %e, "order of a start that stored no session left open");
    }
}

/// CreateOrder for `session_id` failed with an outcome checkout does not
/// know (billing out of reach or out of time: it may have committed the
/// order and not been heard), and no retry will ask for that session id
/// again. Billing keys the order by session id, so it is looked up and
/// withdrawn if billing made it, with a budget of its own. A renewal order
/// is never cancelled for a checkout (it is still owed, Invariants 26). What
/// this misses stays open until a newer start supersedes it.
pub(super) async fn withdraw_unanswered(app: &App, session_id: Uuid, e: &Error) {
    if !matches!(e, Error::BillingUnavailable(_)) {
        return;
    }
    let budget = Budget::new(app.config.billing_timeout);
    let found = match app.billing.orders_of_sessions(budget, &[session_id]).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(%session_id, error = %e, "order of a failed start not looked up; left open");
            return;
        }
    };
    let open: Vec<String> = found
        .into_iter()
        .filter(|o| o.status == bpb::OrderStatus::Created as i32 && o.renews_subscription_id.is_empty())
        .map(|o| o.id)
        .collect();
    if open.is_empty() {
        return;
    }
    match app.billing.cancel_orders(budget, &open).await {
        Ok(_) => tracing::info!(%session_id, orders = ?open, "order billing made for a failed start withdrawn"),
        Err(e) => tracing::warn!(%session_id, error = %e, "order of a failed start left open"),
    }
}

/// Every PENDING cancellation, `PAGE` sessions per billing call (the
/// completion-sync job).
pub async fn settle_all(app: &App) -> Result<WithdrawCounts> {
    let mut total = WithdrawCounts::default();
    let mut after = Uuid::nil();
    loop {
        let (counts, last) = page(app, Budget::new(app.config.billing_timeout), None, after).await?;
        total.confirmed += counts.confirmed;
        total.completed += counts.completed;
        match last {
            Some(id) => after = id,
            None => break,
        }
    }
    Ok(total)
}

/// One page of PENDING sessions after `after` (of one user, or all): one
/// CancelOrders call, then the answers recorded. Returns the last session id
/// when the page was full.
async fn page(app: &App, budget: Budget, user_id: Option<&str>, after: Uuid) -> Result<(WithdrawCounts, Option<Uuid>)> {
    let pending: Vec<Session> = {
        let mut c = app.conn().await?;
        let mut q = cs::table
            .filter(cs::order_cancellation.eq(OrderCancellation::Pending))
            .filter(cs::id.gt(after))
            .select(Session::as_select())
            .order(cs::id)
            .limit(PAGE)
            .into_boxed();
        if let Some(u) = user_id {
            q = q.filter(cs::user_id.eq(u));
        }
        q.load(&mut *c).await?
    };
    let Some(last) = pending.last().map(|s| s.id) else { return Ok((WithdrawCounts::default(), None)) };
    let mut order_ids: Vec<String> = pending.iter().map(|s| s.order_id.clone()).collect();
    order_ids.sort();
    order_ids.dedup();
    // No connection is held across this call.
    let answered: HashMap<String, bpb::Order> =
        app.billing.cancel_orders(budget, &order_ids).await?.into_iter().map(|o| (o.id.clone(), o)).collect();
    let status_of = |s: &Session| answered.get(&s.order_id).and_then(|o| bpb::OrderStatus::try_from(o.status).ok());
    // Paid before the cancellation reached billing: money was taken, so
    // the session is completed, never left retired.
    let paid: Vec<(Uuid, bpb::Order)> = pending
        .iter()
        .filter(|s| status_of(s) == Some(bpb::OrderStatus::Paid))
        .filter_map(|s| answered.get(&s.order_id).map(|o| (s.id, o.clone())))
        .collect();
    let completed = complete_paid(app, &paid).await?;
    // Left out of the answer: a renewal order (billing never cancels it
    // for a checkout; it is still owed) or an order billing does not know.
    let settled: Vec<Uuid> = pending
        .iter()
        .filter(|s| matches!(status_of(s), None | Some(bpb::OrderStatus::Cancelled | bpb::OrderStatus::Paid)))
        .map(|s| s.id)
        .collect();
    let confirmed = {
        let mut c = app.conn().await?;
        diesel::update(cs::table.filter(cs::id.eq_any(&settled)).filter(cs::order_cancellation.eq(OrderCancellation::Pending)))
            .set((cs::order_cancellation.eq(OrderCancellation::Confirmed), cs::updated_at.eq(app.clock.now())))
            .execute(&mut *c)
            .await?
    };
    if confirmed > 0 {
        tracing::info!(confirmed, completed, "orders of retired checkout sessions withdrawn at billing");
    }
    let more = (pending.len() as i64 >= PAGE).then_some(last);
    Ok((WithdrawCounts { confirmed, completed }, more))
}
