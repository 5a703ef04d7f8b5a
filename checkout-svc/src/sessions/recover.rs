//! RecoverSession: an EXPIRED or INVALIDATED session comes back as a new
//! ACTIVE one. Shares the order/transaction shape of [`super::start`].
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};
use shared::status::ErrorReason;
use shared::{
    client::Budget,
    db::Conn,
    idempotency::{Encode, Key, Outcome},
    keyed_transaction,
};
use uuid::Uuid;

use super::{RETENTION, Session, Status, expire_if_lapsed, find, lock, lock_user, peek};
use crate::{App, Error, Result, schema::checkout_sessions as cs};

use super::start::{Started, quote_or_withdraw, replace_active};

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
            // A repeat, answered without asking billing (see
            // `Billing::last_account`).
            return Ok(Outcome::Fresh(Started::new(done, Some(source), app.billing.last_account(), now)));
        }
        source
    };
    if source.is(Status::Completed) {
        return Err(Error::precondition(ErrorReason::SessionCompleted, id, "the session is paid; nothing to recover"));
    }
    if source.is(Status::Active) && !source.lapsed(now) {
        return Err(Error::precondition(ErrorReason::SessionActive, id, "the session is still active; nothing to recover"));
    }
    if now - source.created_at > RETENTION {
        return Err(Error::precondition(
            ErrorReason::SessionTooOld,
            id,
            "sessions older than 7 days cannot be recovered; create a new one",
        ));
    }
    // Paid at the gateway but never completed here: complete it instead of
    // selling the same purchase twice.
    if super::complete::sync_one(app, budget, &source).await? {
        return Err(Error::precondition(ErrorReason::SessionCompleted, id, "the session is paid; nothing to recover"));
    }
    let new_id = recovery_id(id);
    // Every recovery of `id` asks billing for this one session id, keyed or
    // not: only a failure that may pass leaves its order to the next
    // attempt (cancelling it would make the session unrecoverable); a
    // refusal (the source was paid meanwhile) withdraws it.
    let retry_reuses = super::withdraw::may_pass;
    let q = quote_or_withdraw(app, budget, new_id, &source.user_id, &source.plan_id, retry_reuses).await?;
    let out: Result<Outcome<_>> = async {
        let mut conn = app.conn().await?;
        keyed_transaction!(conn, key, now, encode, |c| {
            lock_user(c, &source.user_id).await?;
            match recovered_from(c, id).await? {
                Some(done) => Started::new(done, Some(source.clone()), q.account.clone(), now),
                None => {
                    let current = lock(c, id).await?;
                    if current.is(Status::Completed) {
                        return Err(Error::precondition(
                            ErrorReason::SessionCompleted,
                            id,
                            "the session is paid; nothing to recover",
                        ));
                    }
                    let current = expire_if_lapsed(c, current, now).await?;
                    let (_, session) = replace_active(c, new_id, &source.user_id, &q, Some(id), now).await?;
                    // Re-read: marking the retired sessions' orders touched it.
                    let current = super::find(c, current.id).await?;
                    Started::new(session, Some(current), q.account.clone(), now)
                }
            }
        })
    }
    .await;
    super::withdraw::settle_unstored(app, &q.order_id, &out, |s: &Started| &s.session.order_id, retry_reuses).await;
    let out = out?;
    super::withdraw::settle_user(app, budget, &source.user_id).await;
    Ok(out)
}
