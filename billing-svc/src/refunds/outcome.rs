//! What the gateway did with a refund (docs/design.md, Invariants 22): one
//! caller at a time asks about one refund, and an outcome billing did not
//! hear is looked up at the gateway before anything is asked again or
//! recorded FAILED.
//!
//! - **Claim.** Under the row lock of step 1 the caller claims the PENDING
//!   row (`asking_until`, `attempts + 1`). Another caller that finds an
//!   unexpired claim is told to retry (ABORTED) and never reaches the
//!   gateway; a claim outlives every gateway call it covers, so an expired
//!   one belongs to a caller that died, and is taken over.
//! - **Consult** (no connection held). A row asked before without a
//!   recorded answer, or pending under a gateway id, is looked up first
//!   (`Gateway::find_refund`, by billing's refund id in the refund's notes).
//!   Only when the gateway has no refund under the key is it asked (again,
//!   with the same key). A refusal counts only when the gateway then still
//!   has no refund under the key; a timeout, a 5xx or a 409 (in progress)
//!   leaves the outcome unknown.
//! - **Record** under the lock again, releasing the claim.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{db::Conn, error::ServiceError};

use super::{Refund, Status};
use crate::{
    App, Result,
    gateway::{GatewayError, GatewayRefund},
    schema::refunds,
};

/// A caller's claim on a PENDING refund: it alone asks the gateway.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    /// The row as claimed.
    pub refund: Refund,
    /// The claim's number (`refunds.attempts` after claiming).
    pub attempt: i32,
    /// Asked before without an answer recorded: the gateway may have it.
    pub unknown: bool,
    /// The refund id had been used before this call.
    pub replayed: bool,
}

/// How long a claim holds: longer than the gateway calls it covers (a
/// look-up with its retry, the refund, a look-up after a refusal).
pub(super) fn lease(app: &App) -> chrono::Duration {
    let calls = app.config.gateway.timeout * 6;
    chrono::Duration::from_std(calls).unwrap_or(chrono::Duration::minutes(5)) + chrono::Duration::seconds(30)
}

/// Claims `refund` (PENDING, its lock held by the caller). ABORTED while
/// another caller's claim runs.
pub(super) async fn claim(
    conn: &mut Conn,
    refund: &Refund,
    replayed: bool,
    now: DateTime<Utc>,
    lease: chrono::Duration,
) -> Result<Claim> {
    let free = refunds::asking_until.is_null().or(refunds::asking_until.le(now));
    let claimed: Option<Refund> =
        diesel::update(refunds::table.find(&refund.id).filter(refunds::status.eq(Status::Pending)).filter(free))
            .set((refunds::asking_until.eq(now + lease), refunds::attempts.eq(refunds::attempts + 1)))
            .returning(Refund::as_returning())
            .get_result(conn)
            .await
            .optional()?;
    let Some(claimed) = claimed else {
        // Another caller is asking the gateway about this refund right now.
        return Err(ServiceError::IdempotencyKeyInFlight.into());
    };
    let unknown = claimed.attempts > 1 && claimed.gateway_refund_id.is_none();
    Ok(Claim { attempt: claimed.attempts, refund: claimed, unknown, replayed })
}

/// The gateway's answer about a claimed refund.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    /// The gateway has the refund: made now, or found.
    Accepted { gateway_id: String, status: Status },
    /// Refused, and the gateway has no refund under the key.
    Refused(String),
    /// Not known: unreachable, timed out, 5xx, 409 (in progress), or the
    /// look-up could not be made.
    Unknown(GatewayError),
    /// Pending under its gateway id, nothing new.
    StillPending,
}

impl From<GatewayRefund> for Answer {
    fn from(r: GatewayRefund) -> Self {
        Answer::Accepted { gateway_id: r.id, status: r.status.into() }
    }
}

/// Step 2, with no connection held.
pub(super) async fn consult(app: &App, claim: &Claim) -> Answer {
    let r = &claim.refund;
    if claim.unknown || r.gateway_refund_id.is_some() {
        match app.gateway.find_refund(&r.payment_id, &r.id).await {
            Ok(Some(found)) => return found.into(),
            // Known to the gateway under its id, and not settled yet.
            Ok(None) if r.gateway_refund_id.is_some() => return Answer::StillPending,
            Ok(None) => {}
            Err(e) => return Answer::Unknown(e),
        }
    }
    match app.gateway.refund(&r.payment_id, r.amount_minor, &r.id).await {
        Ok(made) => made.into(),
        Err(e @ GatewayError::Unavailable { .. }) => Answer::Unknown(e),
        // A refusal of a repeat may be about the refund an earlier call
        // made ("already refunded"): FAILED only if there is none.
        Err(GatewayError::Refused { code, message }) => match app.gateway.find_refund(&r.payment_id, &r.id).await {
            Ok(Some(found)) => found.into(),
            Ok(None) => Answer::Refused(format!("{code}: {message}")),
            Err(e) => Answer::Unknown(e),
        },
    }
}

/// Step 3 (the caller holds step 1's lock): records the answer on the row
/// while it is PENDING and releases this caller's claim. A refusal is
/// recorded only while no later claim was taken (a later caller may know
/// more). Returns the row as it is now, and whether this call moved it out
/// of PENDING: only then do the move's effects follow here (a webhook or a
/// takeover caller that settled it first applied them already).
pub(super) async fn record(conn: &mut Conn, claim: &Claim, answer: &Answer, now: DateTime<Utc>) -> Result<(Refund, bool)> {
    let id = claim.refund.id.as_str();
    let pending = refunds::table.find(id).filter(refunds::status.eq(Status::Pending));
    let moved: Option<Refund> = match answer {
        Answer::Accepted { gateway_id, status } => {
            // The first gateway id learnt stays: it is the refund under the key.
            let gateway_id = claim.refund.gateway_refund_id.clone().unwrap_or_else(|| gateway_id.clone());
            diesel::update(pending)
                .set((
                    refunds::status.eq(*status),
                    refunds::gateway_refund_id.eq(gateway_id),
                    refunds::detail.eq(""),
                    refunds::updated_at.eq(now),
                ))
                .returning(Refund::as_returning())
                .get_result(conn)
                .await
                .optional()?
        }
        Answer::Refused(why) => diesel::update(pending.filter(refunds::attempts.eq(claim.attempt)))
            .set((refunds::status.eq(Status::Failed), refunds::detail.eq(why), refunds::updated_at.eq(now)))
            .returning(Refund::as_returning())
            .get_result(conn)
            .await
            .optional()?,
        Answer::Unknown(e) => {
            diesel::update(pending)
                .set((
                    refunds::detail.eq(format!("outcome unknown: {e}; retry with the same refund_id")),
                    refunds::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            None
        }
        Answer::StillPending => None,
    };
    let settled_here = moved.is_some_and(|r| r.status != Status::Pending);
    diesel::update(refunds::table.find(id).filter(refunds::attempts.eq(claim.attempt)))
        .set(refunds::asking_until.eq(None::<DateTime<Utc>>))
        .execute(conn)
        .await?;
    Ok((refunds::table.find(id).select(Refund::as_select()).first(conn).await?, settled_here))
}
