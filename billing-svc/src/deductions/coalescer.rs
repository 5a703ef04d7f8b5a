//! Group commit of Deduct calls (docs/design.md, Performance): the queue,
//! its drainers, and the answer of each call from its batch's row.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use diesel::sql_types;
use diesel_async::RunQueryDsl;
use shared::{
    Clock,
    db::{self, Races},
    gate::Gate,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{ChargeMode, ChargeRow, Charged, Mode, charge_admitted, outcome};
use crate::{Error, Result};

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
    /// next batch; the answer is the one [`charge`](super::charge) would give.
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
    // Batch sizes and times, for tuning (RUST_LOG=billing_svc::deductions=trace).
    let started = std::time::Instant::now();
    let result = charge_batch(ctx, &batch).await;
    tracing::trace!(items = batch.len(), micros = started.elapsed().as_micros() as u64, "deduction batch");
    let rows = match result {
        Ok(rows) if rows.len() == batch.len() => rows,
        Ok(rows) => {
            tracing::error!(items = batch.len(), rows = rows.len(), "billing_charge_batch answered the wrong number of rows");
            for item in batch {
                let _ = item.reply.send(Err(Error::internal("billing_charge_batch: wrong number of rows")));
            }
            return;
        }
        Err(e) => {
            // The statement failed as a whole (the database gone, a value
            // PostgreSQL refused): each call runs on its own, so only a bad
            // one fails.
            tracing::debug!(error = %e, items = batch.len(), "deduction batch failed; charging its calls one by one");
            for item in batch {
                tokio::spawn(single(ctx.clone(), item));
            }
            return;
        }
    };
    let mut requeue = Vec::new();
    for (mut item, row) in batch.into_iter().zip(rows) {
        match outcome(row, item.session_id, ChargeMode::Explicit) {
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

/// One call on its own, admitted like a single Deduct.
async fn single(ctx: Arc<Ctx>, item: Item) {
    let mode = Mode::Explicit { deduction_id: item.deduction_id, units: item.units };
    let result = charge_admitted(&ctx.gate, &ctx.pool, &ctx.clock, item.session_id, &mode).await;
    let _ = item.reply.send(result);
}
