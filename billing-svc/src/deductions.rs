//! Credit deductions. Every path that changes a balance (the Deduct RPC, the
//! auto-deduction job, EndUsageSession, reconcile's repair of stuck sessions)
//! calls [`charge`], which runs the `billing_charge` SQL function: one
//! statement that locks the usage session and then its subscription, reads
//! the fresh rows, and writes ledger rows and the balance together. Nothing
//! is marked before it is charged, so a tick and a hang-up can never both
//! charge one unit (docs/design.md, Deductions).
use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use serde::Deserialize;
use shared::{
    db::{Conn, Races},
    error::ServiceError,
};
use uuid::Uuid;

use crate::{
    Error, Result,
    schema::usage_sessions,
    usage::{SessionView, UsageSession},
};

diesel::define_sql_function! {
    /// See migrations/*_functions/up.sql.
    fn billing_charge(session: sql_types::Uuid, mode: sql_types::Text, units: sql_types::BigInt, deduction_id: sql_types::Nullable<sql_types::Text>, now: sql_types::Timestamptz) -> sql_types::Jsonb;
}

pub const MAX_UNITS: i64 = 1000;

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

#[derive(Deserialize)]
struct Reply {
    error: Option<String>,
    #[serde(default)]
    skipped: bool,
    charged: Option<i64>,
    unpaid: Option<i64>,
    replayed: Option<bool>,
    session: Option<UsageSession>,
    credits_remaining: Option<i64>,
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
        Mode::Auto => ("AUTO", 0, None),
        Mode::Explicit { deduction_id, units } => ("EXPLICIT", *units, Some(deduction_id.as_str())),
        Mode::End { manual } => ("END", *manual, None),
    };
    // One statement, its own transaction; inside a caller's transaction
    // (reconcile's repair) it runs once.
    let json: serde_json::Value = shared::retry_statement!(conn, Races::ConflictsAndUnique, |c| {
        diesel::select(billing_charge(session_id, name, units, deduction_id, now)).get_result(c).await.map_err(Error::from)
    })?;
    let reply: Reply = serde_json::from_value(json).map_err(|e| Error::internal(format!("billing_charge reply: {e}")))?;
    if reply.skipped {
        return Ok(None);
    }
    match reply.error.as_deref() {
        None => {}
        Some("NOT_FOUND") => return Err(Error::not_found("usage_session", session_id)),
        Some("SESSION_ENDED") => {
            return Err(Error::precondition(
                "SESSION_ENDED",
                format!("usage_session:{session_id}"),
                "the usage session has ended",
            ));
        }
        Some("DEDUCTION_ID_REUSED") => return Err(ServiceError::IdempotencyKeyReused.into()),
        Some(other) => return Err(Error::internal(format!("billing_charge: {other}"))),
    }
    let session = reply.session.ok_or_else(|| Error::internal("billing_charge returned no session"))?;
    shared::metrics::credits_charged(name, reply.charged, reply.unpaid, reply.replayed);
    Ok(Some(Charged {
        view: SessionView { session, credits_remaining: reply.credits_remaining.unwrap_or_default() },
        charged: reply.charged.unwrap_or_default(),
        unpaid: reply.unpaid.unwrap_or_default(),
        replayed: reply.replayed.unwrap_or_default(),
    }))
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
            .filter(usage_sessions::status.eq("ACTIVE"))
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
