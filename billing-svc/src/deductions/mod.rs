//! Credit deductions. Every path that changes a balance (the Deduct RPC, the
//! auto-deduction job, EndUsageSession, reconcile's repair of stuck sessions)
//! runs the SQL function `billing_charge_many`: one statement that locks the
//! usage sessions and then their subscriptions, reads the fresh rows, and
//! writes ledger rows and the balance together. Nothing is marked before it
//! is charged, so a tick and a hang-up can never both charge one unit
//! (docs/design.md, Deductions). [`charge`] runs one item; concurrent Deduct
//! calls are coalesced by [`Coalescer`] into one statement and one commit
//! (docs/design.md, Performance).
use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::status::ErrorReason;
use shared::{
    Clock,
    db::{self, Conn, Races},
    error::ServiceError,
    gate::Gate,
};
use uuid::Uuid;

mod coalescer;
pub use coalescer::Coalescer;

use crate::{
    Error, Result,
    schema::usage_sessions,
    usage::{SessionView, UsageSession},
};

pub const MAX_UNITS: i64 = 1000;

shared::text_enum! {
    /// How `billing_charge_many` works out an item's units (its `p_modes`).
    pub enum ChargeMode {
        Auto = "AUTO",
        Explicit = "EXPLICIT",
        End = "END",
    }
}

shared::text_enum! {
    /// Why `billing_charge_many` did not charge an item (its `r_error`
    /// column; docs/design.md, Deductions). A code this enum does not know
    /// fails the read (INTERNAL), never a panic nor a silent success.
    pub enum ChargeError {
        /// Someone else holds the session, or (a coalesced item) its
        /// subscription or the user's live one: AUTO skips it, a batch item
        /// is charged on its own.
        Busy = "BUSY",
        NotFound = "NOT_FOUND",
        SessionEnded = "SESSION_ENDED",
        /// The `deduction_id` was charged before with other units.
        DeductionIdReused = "DEDUCTION_ID_REUSED",
        /// A mode the function does not know: a bug of the caller.
        BadMode = "BAD_MODE",
    }
}

#[derive(Debug, Clone)]
pub enum Mode {
    /// Complete intervals elapsed since the last auto charge.
    Auto,
    /// The Deduct RPC: `units`, idempotent on `deduction_id`.
    Explicit { deduction_id: String, units: i64 },
    /// EndUsageSession: `max(0, ceil(duration/interval) - auto) + manual`.
    End { manual: i64 },
}

#[derive(Debug, Clone)]
pub struct Charged {
    pub view: SessionView,
    /// Units paid from the balance by this call.
    pub charged: i64,
    /// Units that found no credits and were recorded as unpaid.
    pub unpaid: i64,
    pub replayed: bool,
}

/// One item's row of `billing_charge_many` (and `billing_charge_batch`):
/// an error, or the charge and the session after it.
#[derive(QueryableByName)]
struct ChargeRow {
    #[diesel(sql_type = sql_types::Integer)]
    r_item: i32,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    r_error: Option<ChargeError>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    r_charged: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    r_unpaid: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Bool>)]
    r_replayed: Option<bool>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    r_credits_remaining: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    s_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    s_user_id: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    s_subscription_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    s_kind: Option<crate::usage::Kind>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    s_status: Option<crate::usage::Status>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Timestamptz>)]
    s_started_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Timestamptz>)]
    s_ended_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Integer>)]
    s_deduction_interval_seconds: Option<i32>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    s_auto_deductions_processed: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    s_units_charged: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    s_units_unpaid: Option<i64>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
    s_final_units_charged: Option<i64>,
}

/// The one mapping of an item's row to the caller's answer: the same
/// statuses and details whether the item ran alone or in a batch. `None`:
/// someone else holds the session (AUTO: skipped until the next tick), or,
/// for a batch item, its session, its subscription or the user's live
/// subscription (charged on its own, waiting for the lock).
fn outcome(row: ChargeRow, session_id: Uuid, mode: ChargeMode) -> Result<Option<Charged>> {
    match row.r_error {
        None => {}
        Some(ChargeError::Busy) => return Ok(None),
        Some(ChargeError::NotFound) => return Err(Error::not_found("usage_session", session_id)),
        Some(ChargeError::SessionEnded) => {
            return Err(Error::precondition(
                ErrorReason::SessionEnded,
                format!("usage_session:{session_id}"),
                "the usage session has ended",
            ));
        }
        Some(ChargeError::DeductionIdReused) => return Err(ServiceError::IdempotencyKeyReused.into()),
        Some(e @ ChargeError::BadMode) => return Err(Error::internal(format!("billing_charge_many: {e}"))),
    }
    let missing = || Error::internal("billing_charge returned no session");
    let session = UsageSession {
        id: row.s_id.ok_or_else(missing)?,
        user_id: row.s_user_id.ok_or_else(missing)?,
        subscription_id: row.s_subscription_id.ok_or_else(missing)?,
        kind: row.s_kind.ok_or_else(missing)?,
        status: row.s_status.ok_or_else(missing)?,
        started_at: row.s_started_at.ok_or_else(missing)?,
        ended_at: row.s_ended_at,
        deduction_interval_seconds: row.s_deduction_interval_seconds.ok_or_else(missing)?,
        auto_deductions_processed: row.s_auto_deductions_processed.unwrap_or_default(),
        units_charged: row.s_units_charged.unwrap_or_default(),
        units_unpaid: row.s_units_unpaid.unwrap_or_default(),
        final_units_charged: row.s_final_units_charged,
    };
    shared::metrics::credits_charged(mode.as_str(), row.r_charged, row.r_unpaid, row.r_replayed);
    Ok(Some(Charged {
        view: SessionView { session, credits_remaining: row.r_credits_remaining.unwrap_or_default() },
        charged: row.r_charged.unwrap_or_default(),
        unpaid: row.r_unpaid.unwrap_or_default(),
        replayed: row.r_replayed.unwrap_or_default(),
    }))
}

/// One charge on its own, admitted like any call on a usage session: the
/// per-row gate, then a pooled connection, then the statement, which waits
/// for the session's lock within the bound (Deduct without coalescing, a
/// coalesced call whose rows were held, EndUsageSession).
pub async fn charge_admitted(gate: &Gate, pool: &db::Pool, clock: &Clock, session_id: Uuid, mode: &Mode) -> Result<Charged> {
    let _pass = gate.enter(&format!("usage_session:{session_id}")).await?;
    let mut conn = db::conn(pool).await?;
    charge(&mut conn, session_id, mode, clock.now()).await
}

/// Applies one deduction in one statement (its own transaction unless the
/// caller has one open).
pub async fn charge(conn: &mut Conn, session_id: Uuid, mode: &Mode, now: DateTime<Utc>) -> Result<Charged> {
    charge_inner(conn, session_id, mode, now).await?.ok_or_else(|| Error::internal("only AUTO charges are skipped"))
}

/// Like [`charge`]; `None` when an AUTO charge skipped a session held by
/// someone else.
async fn charge_inner(conn: &mut Conn, session_id: Uuid, mode: &Mode, now: DateTime<Utc>) -> Result<Option<Charged>> {
    let (name, units, deduction_id) = match mode {
        Mode::Auto => (ChargeMode::Auto, 0, None),
        Mode::Explicit { deduction_id, units } => (ChargeMode::Explicit, *units, Some(deduction_id.as_str())),
        Mode::End { manual } => (ChargeMode::End, *manual, None),
    };
    // One statement, its own transaction; inside a caller's transaction
    // (reconcile's repair) it runs once. AUTO never waits for a session.
    let mut rows: Vec<ChargeRow> = shared::retry_statement!(conn, Races::ConflictsAndUnique, |c| {
        diesel::sql_query("SELECT * FROM billing_charge_many(ARRAY[$1], ARRAY[$2], ARRAY[$3], ARRAY[$4], $5, $6)")
            .bind::<sql_types::Uuid, _>(session_id)
            .bind::<sql_types::Text, _>(name)
            .bind::<sql_types::BigInt, _>(units)
            .bind::<sql_types::Nullable<sql_types::Text>, _>(deduction_id)
            .bind::<sql_types::Timestamptz, _>(now)
            .bind::<sql_types::Bool, _>(matches!(mode, Mode::Auto))
            .load(c)
            .await
            .map_err(Error::from)
    })?;
    let row = rows.pop().filter(|_| rows.is_empty()).ok_or_else(|| Error::internal("billing_charge_many: not one row"))?;
    match outcome(row, session_id, name)? {
        Some(c) => Ok(Some(c)),
        None if matches!(mode, Mode::Auto) => Ok(None),
        None => Err(Error::internal("billing_charge_many: a waiting charge was busy")),
    }
}

/// The auto-deduction job's iteration: charges every ACTIVE session with a
/// complete interval due, on one connection, one statement per session. Each
/// charge locks its session with SKIP LOCKED, so replicas share the work and
/// the job never queues behind a hang-up; it never pre-marks anything: the
/// same function computes and charges under the locks.
/// Returns (sessions charged, credits charged).
pub async fn auto_deduct_due(conn: &mut Conn, now: DateTime<Utc>, batch: i64) -> Result<(usize, i64)> {
    let (mut sessions, mut credits) = (0, 0);
    let mut after = (DateTime::<Utc>::UNIX_EPOCH, Uuid::nil());
    loop {
        let due: Vec<(DateTime<Utc>, Uuid)> = usage_sessions::table
            .filter(usage_sessions::status.eq(crate::usage::Status::Active))
            .filter(
                usage_sessions::started_at
                    .gt(after.0)
                    .or(usage_sessions::started_at.eq(after.0).and(usage_sessions::id.gt(after.1))),
            )
            .filter(
                diesel::dsl::sql::<sql_types::Bool>(
                    "started_at + make_interval(secs => deduction_interval_seconds * (auto_deductions_processed + 1)) <= ",
                )
                .bind::<sql_types::Timestamptz, _>(now),
            )
            .select((usage_sessions::started_at, usage_sessions::id))
            .order((usage_sessions::started_at, usage_sessions::id))
            .limit(batch)
            .load(conn)
            .await?;
        let Some(last) = due.last().copied() else { break };
        after = last;
        for (_, id) in &due {
            if let Some(c) = charge_inner(conn, *id, &Mode::Auto, now).await?
                && c.charged + c.unpaid > 0
            {
                sessions += 1;
                credits += c.charged;
            }
        }
        if (due.len() as i64) < batch {
            break;
        }
    }
    Ok((sessions, credits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the charge functions write into `r_error` is one
    /// [`ChargeError`] knows, and every mode the Rust side sends is one they
    /// handle: the SQL and the enums cannot drift apart unnoticed.
    #[test]
    fn the_charge_functions_and_the_enums_agree() {
        let mut codes = std::collections::BTreeSet::new();
        let mut sql = String::new();
        for f in crate::app::FUNCTIONS.iter().filter(|f| f.name.starts_with("billing_charge")) {
            sql.push_str(f.sql);
            for part in f.sql.split("r_error := '").skip(1) {
                codes.insert(part.split('\'').next().unwrap_or_default().to_owned());
            }
        }
        assert!(codes.len() >= 5, "{codes:?}");
        for code in &codes {
            assert!(
                code.parse::<ChargeError>().is_ok(),
                "billing_charge_*.sql writes r_error {code}, ChargeError does not know it"
            );
        }
        for e in ChargeError::ALL {
            assert!(codes.contains(e.as_str()), "ChargeError::{e:?} is never written by the SQL functions");
        }
        for m in ChargeMode::ALL {
            assert!(sql.contains(&format!("mode = '{m}'")), "no charge function handles mode {m}");
        }
        assert!("SOMETHING_NEW".parse::<ChargeError>().is_err());
    }
}
