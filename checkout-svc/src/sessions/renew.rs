//! RenewSession (package change): the session becomes INVALIDATED with
//! `replaced_by`, and a new ACTIVE one starts for the new plan. Shares the
//! order/transaction shape of [`super::start`].
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::status::ErrorReason;
use shared::{
    client::Budget,
    db::Conn,
    etag::Etag,
    idempotency::{Encode, Key, Outcome},
    ids::PlanId,
    keyed_transaction,
};
use uuid::Uuid;

use super::{Session, Status, find, lock, lock_user, peek};
use crate::{App, Error, Result};

use super::start::{Started, existing, keyed_id, quote_or_withdraw, replace_active};

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
            ErrorReason::ReplacementChainTooLong,
            s.id,
            format!("the session was replaced more than {MAX_CHAIN} times; start a new session (CreateSession)"),
        ));
    }
    find(c, last.id).await
}

fn not_renewable(s: &Session, now: DateTime<Utc>) -> Option<Error> {
    if s.is(Status::Completed) {
        return Some(Error::precondition(ErrorReason::SessionCompleted, s.id, "the session is already paid"));
    }
    if !s.is(Status::Active) || s.lapsed(now) {
        return Some(Error::precondition(
            ErrorReason::SessionNotActive,
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
///
/// With an `etag`, the plan changes only if the session named by `id` is
/// the one the change retires (the head of its chain) and is still as the
/// caller read it: checked under the row lock, in the transaction that
/// replaces it, so of concurrent requests naming one version only one
/// changes it; a refused request's order is withdrawn like any refused
/// start's. A session the chain has moved past cannot be as read: the
/// caller reads the head and names it. State errors (completed, expired)
/// come first; answers that change nothing (a replay, a plan the session
/// already has) are given whatever the etag.
#[allow(clippy::too_many_arguments)] // the request's parts, parsed
pub async fn renew(
    app: &App,
    id: Uuid,
    plan_id: &PlanId,
    etag: Option<&Etag>,
    budget: Budget,
    key: Option<&Key>,
    encode: Encode<'_, Started>,
) -> Result<Outcome<Started>> {
    let plan_id = plan_id.as_str();
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
        return Err(Error::precondition(ErrorReason::SessionCompleted, head.id, "the session is already paid"));
    }
    if head.plan_id == plan_id {
        let previous = (head.id != original.id).then_some(original);
        // Answered without asking billing for an order: the account of
        // billing's latest answer stands in (see `Billing::last_account`).
        return Ok(Outcome::Fresh(Started::new(head, previous, app.billing.last_account(), now)));
    }
    let new_id = key.map(|k| keyed_id(k, &head.id.to_string())).unwrap_or_else(Uuid::new_v4);
    // A retry with the same key asks for this order again only while the
    // head is the same; a refusal (lost race, the session changed) means it
    // never will.
    let retry_reuses = |e: &Error| key.is_some() && super::withdraw::may_pass(e);
    let q = match quote_or_withdraw(app, budget, new_id, &head.user_id, plan_id, retry_reuses).await {
        Ok(q) => q,
        Err(e) => return super::start::key_answer_or(app, key, e).await,
    };
    let out: Result<Outcome<_>> = async {
        let mut conn = app.conn().await?;
        keyed_transaction!(conn, key, now, encode, |c| {
            lock_user(c, &head.user_id).await?;
            let current = lock(c, head.id).await?;
            if !current.is(Status::Active) || current.lapsed(now) {
                // Lost a race with another renew, a completion or expiry.
                let newest = head_of(c, current.clone()).await?;
                if newest.is(Status::Active) && !newest.lapsed(now) && newest.plan_id == plan_id {
                    Started::new(newest, Some(current), q.account.clone(), now)
                } else if let Some(e) = not_renewable(&newest, now) {
                    return Err(e);
                } else {
                    // A caller that named the session as it read it learns
                    // that it changed, in the words of its condition.
                    Etag::check(etag, &[&lock(c, id).await?.etag()], "checkout_session", id)?;
                    return Err(Error::precondition(
                        ErrorReason::SessionChanged,
                        head.id,
                        "the session changed meanwhile; read it and retry",
                    ));
                }
            } else if let Some(session) = existing(c, new_id).await? {
                Started::new(session, Some(current), q.account.clone(), now)
            } else {
                let head_etag = current.etag();
                let as_read: &[&Etag] = if id == current.id { &[&head_etag] } else { &[] };
                Etag::check(etag, as_read, "checkout_session", id)?;
                let (previous, session) = replace_active(c, new_id, &head.user_id, &q, None, now).await?;
                Started::new(session, previous, q.account.clone(), now)
            }
        })
    }
    .await;
    super::withdraw::settle_unstored(app, &q.order_id, &out, |s: &Started| &s.session.order_id, retry_reuses).await;
    let out = out?;
    super::withdraw::settle_user(app, budget, &head.user_id).await;
    Ok(out)
}
