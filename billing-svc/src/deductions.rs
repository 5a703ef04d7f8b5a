//! Credit deductions. Every path that changes a balance (the Deduct RPC, the
//! auto-deduction job, EndUsageSession, reconcile's repair of stuck sessions)
//! runs the SQL function `billing_charge_many`: one statement that locks the
//! usage sessions and then their subscriptions, reads the fresh rows, and
//! writes ledger rows and the balance together. Nothing is marked before it
//! is charged, so a tick and a hang-up can never both charge one unit
//! (docs/design.md, Deductions). [`charge`] runs one item; concurrent Deduct
//! calls are coalesced by [`Coalescer`] into one statement and one commit
//! (docs/design.md, Performance).
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::{
    Clock,
    db::{self, Conn, Races},
    error::ServiceError,
    gate::Gate,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{
    Error, Result,
    schema::usage_sessions,
    usage::{SessionView, UsageSession},
};

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

/// One item's row of `billing_charge_many` (and `billing_charge_batch`):
/// an error, or the charge and the session after it.
#[derive(QueryableByName)]
struct ChargeRow {
    #[diesel(sql_type = sql_types::Integer)]
    r_item: i32,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    r_error: Option<String>,
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
/// someone else holds the session (AUTO: skipped until the next tick; a
/// batch item: charged on its own, waiting for the lock).
fn outcome(row: ChargeRow, session_id: Uuid, mode: &'static str) -> Result<Option<Charged>> {
    match row.r_error.as_deref() {
        None => {}
        Some("BUSY") => return Ok(None),
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
    shared::metrics::credits_charged(mode, row.r_charged, row.r_unpaid, row.r_replayed);
    Ok(Some(Charged {
        view: SessionView { session, credits_remaining: row.r_credits_remaining.unwrap_or_default() },
        charged: row.r_charged.unwrap_or_default(),
        unpaid: row.r_unpaid.unwrap_or_default(),
        replayed: row.r_replayed.unwrap_or_default(),
    }))
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

/// One Deduct call waiting for its batch.
struct Item {
    session_id: Uuid,
    deduction_id: String,
    units: i64,
    reply: oneshot::Sender<Result<Charged>>,
    /// Batches that found its session held by someone else.
    busy: u8,
}

/// Batches an item may find its session held in (most often by the batch
/// just before, on a hot subscription) before it is charged on its own.
const BUSY_REQUEUES: u8 = 2;

/// Calls that may wait for a batch at once; more are refused (ABORTED,
/// retry later) instead of queueing without bound (docs/design.md,
/// Invariants 18).
const MAX_WAITING: usize = 4096;

/// What a batch needs.
#[derive(Debug)]
struct Ctx {
    pool: db::Pool,
    gate: Arc<Gate>,
    clock: Clock,
    batch_max: usize,
    in_flight: usize,
}

/// Calls waiting for a batch, and how many drainers are running.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Item>,
    drainers: usize,
}

/// Group commit of Deduct calls (docs/design.md, Performance): a call joins
/// the queue and, when fewer than `in_flight` drainers run, starts one. A
/// drainer takes whatever calls are queued (at most `batch_max`), runs them
/// as one `billing_charge_batch` statement (one transaction, one commit, a
/// result per call), and takes the next batch when it is free, until the
/// queue is empty. A lone call goes at once; batches form only while earlier
/// ones are in the database.
pub struct Coalescer {
    ctx: Arc<Ctx>,
    queue: Arc<Mutex<Queue>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").field("ctx", &self.ctx).finish_non_exhaustive()
    }
}

impl Coalescer {
    pub fn new(pool: db::Pool, gate: Arc<Gate>, clock: Clock, batch_max: usize, in_flight: usize) -> Self {
        let ctx = Ctx { pool, gate, clock, batch_max: batch_max.max(1), in_flight: in_flight.max(1) };
        Self { ctx: Arc::new(ctx), queue: Arc::default() }
    }

    /// Charges `units` on `session_id` idempotently on `deduction_id`, in the
    /// next batch; the answer is the one [`charge`] would give.
    pub async fn deduct(&self, session_id: Uuid, deduction_id: String, units: i64) -> Result<Charged> {
        let (reply, answer) = oneshot::channel();
        let start_drainer = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.waiting.len() >= MAX_WAITING {
                return Err(Error::from(db::DbError::Timeout(format!("{MAX_WAITING} deductions are waiting for the database"))));
            }
            q.waiting.push_back(Item { session_id, deduction_id, units, reply, busy: 0 });
            let start = q.drainers < self.ctx.in_flight;
            if start {
                q.drainers += 1;
            }
            start
        };
        if start_drainer {
            // Its own task: a caller that goes away cannot stop a batch halfway.
            tokio::spawn(drain(self.ctx.clone(), self.queue.clone()));
        }
        // Waits as long as the call's own deadline allows: an answer of
        // ABORTED must mean nothing was charged, so the wait is not cut
        // short here (the queue is bounded instead).
        match answer.await {
            Ok(result) => result,
            // The batch task ended without answering (a panic): whether it
            // committed is unknown, so the caller retries with the same
            // deduction id, which replays a committed charge.
            Err(_) => Err(Error::from(db::DbError::Conflict("the deduction batch did not answer; retry".into()))),
        }
    }
}

/// Runs batches while calls are queued. The check for an empty queue and
/// the drainer's exit happen under the lock a call takes to join the queue,
/// so no call is left waiting without a drainer.
async fn drain(ctx: Arc<Ctx>, queue: Arc<Mutex<Queue>>) {
    // If the task ends any other way (a panic), the calls still queued must
    // not wait for a drainer that never comes: the slot passes to a new
    // drainer, or is given back when nothing waits.
    struct Slot(Option<(Arc<Ctx>, Arc<Mutex<Queue>>)>);
    impl Drop for Slot {
        fn drop(&mut self) {
            if let Some((ctx, queue)) = self.0.take() {
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    q.drainers -= 1;
                } else {
                    drop(q);
                    tokio::spawn(drain(ctx, queue));
                }
            }
        }
    }
    let mut slot = Slot(Some((ctx.clone(), queue.clone())));
    loop {
        let batch: Vec<Item> = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.waiting.is_empty() {
                q.drainers -= 1;
                slot.0 = None;
                return;
            }
            let n = q.waiting.len().min(ctx.batch_max);
            q.waiting.drain(..n).collect()
        };
        run_batch(&ctx, &queue, batch).await;
    }
}

async fn run_batch(ctx: &Arc<Ctx>, queue: &Mutex<Queue>, batch: Vec<Item>) {
    let rows = match charge_batch(ctx, &batch).await {
        Ok(rows) if rows.len() == batch.len() => rows,
        Ok(rows) => {
            tracing::error!(items = batch.len(), rows = rows.len(), "billing_charge_batch answered the wrong number of rows");
            for item in batch {
                let _ = item.reply.send(Err(Error::internal("billing_charge_batch: wrong number of rows")));
            }
            return;
        }
        Err(e) => {
            // The statement failed as a whole (a subscription held past the
            // lock bound, the database gone, a value PostgreSQL refused):
            // each call runs on its own, so only a bad one fails.
            tracing::debug!(error = %e, items = batch.len(), "deduction batch failed; charging its calls one by one");
            for item in batch {
                tokio::spawn(single(ctx.clone(), item));
            }
            return;
        }
    };
    let mut requeue = Vec::new();
    for (mut item, row) in batch.into_iter().zip(rows) {
        match outcome(row, item.session_id, "EXPLICIT") {
            Ok(Some(c)) => {
                let _ = item.reply.send(Ok(c));
            }
            // Held by someone else: usually another batch that has just
            // committed or is about to, so the item goes to the front of the
            // queue for the next batch; held again, it waits for the lock on
            // its own, like a single Deduct.
            Ok(None) if item.busy < BUSY_REQUEUES => {
                item.busy += 1;
                requeue.push(item);
            }
            Ok(None) => {
                tokio::spawn(single(ctx.clone(), item));
            }
            Err(e) => {
                let _ = item.reply.send(Err(e));
            }
        }
    }
    if !requeue.is_empty() {
        // This drainer is still running and takes them next (it exits only
        // once the queue is empty).
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        for item in requeue.into_iter().rev() {
            q.waiting.push_front(item);
        }
    }
}

/// The batch as one statement, retried as a whole when it loses a race
/// (deadlock, serialization failure).
async fn charge_batch(ctx: &Ctx, batch: &[Item]) -> Result<Vec<ChargeRow>> {
    let sessions: Vec<Uuid> = batch.iter().map(|i| i.session_id).collect();
    let ids: Vec<&str> = batch.iter().map(|i| i.deduction_id.as_str()).collect();
    let units: Vec<i64> = batch.iter().map(|i| i.units).collect();
    let mut conn = db::conn(&ctx.pool).await?;
    // The time is read per attempt, after the connection wait: a period end
    // passed meanwhile must roll, not be charged as the old period.
    let mut rows: Vec<ChargeRow> = shared::retry_statement!(&mut conn, Races::ConflictsAndUnique, |c| {
        diesel::sql_query("SELECT * FROM billing_charge_batch($1, $2, $3, $4)")
            .bind::<sql_types::Array<sql_types::Uuid>, _>(&sessions)
            .bind::<sql_types::Array<sql_types::Text>, _>(&ids)
            .bind::<sql_types::Array<sql_types::BigInt>, _>(&units)
            .bind::<sql_types::Timestamptz, _>(ctx.clock.now())
            .load(c)
            .await
            .map_err(Error::from)
    })?;
    rows.sort_by_key(|r| r.r_item);
    Ok(rows)
}

/// One call on its own, admitted like a single Deduct (per-row gate, then a
/// pooled connection, waiting for the session's lock within the bound).
async fn single(ctx: Arc<Ctx>, item: Item) {
    let result = async {
        let _pass = ctx.gate.enter(&format!("usage_session:{}", item.session_id)).await?;
        let mut conn = db::conn(&ctx.pool).await?;
        let mode = Mode::Explicit { deduction_id: item.deduction_id, units: item.units };
        charge(&mut conn, item.session_id, &mode, ctx.clock.now()).await
    }
    .await;
    let _ = item.reply.send(result);
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
