//! Migrations of a plan's subscribers from one price version to another
//! (PlanCatalogService.MigrateSubscribers; docs/design.md, "Catalogue").
//!
//! A migration schedules the change on every live (ACTIVE or PAST_DUE)
//! paid subscription pinned to `from_version`: it sets
//! `subscriptions.next_plan_version`, under the rows' locks, in the same
//! transaction that records the migration and its request_id. The change
//! takes effect through renewal orders not yet created: the renewal opening
//! reads `next_plan_version` under the subscription's lock, so an order
//! opened after the migration charges `to_version` and the period it pays
//! pins `to_version` (billing_roll_steps); an order opened before keeps its
//! version, and so does the period it pays (the change then waits for the
//! next renewal). Progress is read, not kept: how many of the scheduled
//! subscriptions run on `to_version` now.
use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::{
    db::{Conn, Races},
    idempotency::{Encode, Key, Outcome},
    ids::PlanId,
    status::ErrorReason,
};
use uuid::Uuid;

use super::{Plan, versions};
use crate::{Error, Result, schema::plans};

/// MigrateSubscribers' input, checked at the edge (versions >= 1, distinct).
#[derive(Debug, Clone)]
pub struct NewMigration {
    pub plan_id: PlanId,
    pub from_version: i32,
    pub to_version: i32,
}

/// A migration with its progress.
#[derive(Debug, Clone, QueryableByName)]
pub struct Migration {
    #[diesel(sql_type = sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = sql_types::Text)]
    pub plan_id: String,
    #[diesel(sql_type = sql_types::Integer)]
    pub from_version: i32,
    #[diesel(sql_type = sql_types::Integer)]
    pub to_version: i32,
    #[diesel(sql_type = sql_types::Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// Position in the list of migrations (the page key).
    #[diesel(sql_type = sql_types::BigInt)]
    pub seq: i64,
    /// Subscriptions it scheduled the change on.
    #[diesel(sql_type = sql_types::BigInt)]
    pub scheduled: i64,
    /// Of those, the ones whose current period runs on `to_version`.
    #[diesel(sql_type = sql_types::BigInt)]
    pub applied: i64,
    /// Of those, the ones that ended (or were replaced, or changed to
    /// another plan) before reaching it.
    #[diesel(sql_type = sql_types::BigInt)]
    pub ended: i64,
}

impl Migration {
    /// Every scheduled subscription reached `to_version` or ended.
    pub fn completed(&self) -> bool {
        self.applied + self.ended >= self.scheduled
    }
}

/// How a migration runs: under its request's key, or only validated.
pub struct Run<'a> {
    pub key: &'a Key,
    pub validate_only: bool,
    /// The RPC's response for the key store.
    pub encode: Encode<'a, Migration>,
    pub now: DateTime<Utc>,
}

/// MigrateSubscribers: records the migration and schedules it on the
/// subscriptions pinned to `from_version`, in one transaction with the
/// request's key; validate_only runs the same steps and rolls them back.
pub async fn migrate(conn: &mut Conn, run: &Run<'_>, m: &NewMigration) -> Result<Outcome<Migration>> {
    if run.validate_only {
        use diesel_async::{AsyncConnection, TransactionManager};
        type Tm = <Conn as AsyncConnection>::TransactionManager;
        Tm::begin_transaction(conn).await?;
        let verdict = migrate_in(conn, m, run.now).await;
        // Rolled back whatever the verdict: validating never writes.
        Tm::rollback_transaction(conn).await?;
        return verdict.map(Outcome::Fresh);
    }
    shared::retry_tx!(conn, Races::Conflicts, |c| shared::keyed!(
        c,
        Some(run.key),
        run.now,
        run.encode,
        migrate_in(c, m, run.now).await?
    ))
}

async fn migrate_in(c: &mut Conn, m: &NewMigration, now: DateTime<Utc>) -> Result<Migration> {
    let id = m.plan_id.as_str();
    // The plan's lock: a migration and the plan's other changes queue. Not
    // FOR UPDATE: that would also stop the renewal orders being inserted
    // (their key share on the plan) while their openers hold subscription
    // rows this migration waits for.
    let plan: Plan = plans::table
        .find(id)
        .select(Plan::as_select())
        .for_no_key_update()
        .first(c)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("plan", id))?;
    if plan.is_free() {
        return Err(Error::precondition(
            ErrorReason::FreePlan,
            format!("plan:{id}"),
            "the free plan's months open on its current version already: there is nothing to migrate",
        ));
    }
    let from = versions::version(c, id, m.from_version).await?;
    let to = versions::version(c, id, m.to_version).await?;
    if from.currency != to.currency {
        // A subscriber is never moved to another currency (a saved card's
        // mandate and every total of theirs are in the one they bought in).
        return Err(Error::invalid(
            "to_version",
            format!(
                "is priced in {}, from_version in {}: a migration keeps the subscribers' currency",
                to.currency, from.currency
            ),
        ));
    }
    let migration_id = Uuid::new_v4();
    diesel::sql_query(
        "INSERT INTO plan_migrations (id, plan_id, from_version, to_version, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind::<sql_types::Uuid, _>(migration_id)
    .bind::<sql_types::Text, _>(id)
    .bind::<sql_types::Integer, _>(m.from_version)
    .bind::<sql_types::Integer, _>(m.to_version)
    .bind::<sql_types::Timestamptz, _>(now)
    .execute(c)
    .await?;
    // Every live paid subscription pinned to from_version, locked in id
    // order (the order other multi-row lockers use), scheduled at once: a
    // renewal opening waits for the commit and then reads the change.
    diesel::sql_query(
        "WITH due AS (
           SELECT id FROM subscriptions
            WHERE plan_id = $2 AND plan_version = $3 AND status IN ('ACTIVE', 'PAST_DUE') AND NOT calendar_periods
            ORDER BY id FOR UPDATE),
         scheduled AS (
           UPDATE subscriptions s SET next_plan_version = $4, updated_at = $5
             FROM due WHERE s.id = due.id
           RETURNING s.id)
         INSERT INTO plan_migration_subscriptions (migration_id, subscription_id) SELECT $1, id FROM scheduled",
    )
    .bind::<sql_types::Uuid, _>(migration_id)
    .bind::<sql_types::Text, _>(id)
    .bind::<sql_types::Integer, _>(m.from_version)
    .bind::<sql_types::Integer, _>(m.to_version)
    .bind::<sql_types::Timestamptz, _>(now)
    .execute(c)
    .await?;
    get(c, migration_id).await
}

const SELECT: &str = "SELECT m.id, m.plan_id, m.from_version, m.to_version, m.created_at, m.seq,
        count(ms.subscription_id) AS scheduled,
        count(ms.subscription_id) FILTER (WHERE s.plan_id = m.plan_id AND s.plan_version = m.to_version AND s.status IN ('ACTIVE', 'PAST_DUE')) AS applied,
        count(ms.subscription_id) FILTER (WHERE s.status NOT IN ('ACTIVE', 'PAST_DUE') OR s.plan_id <> m.plan_id) AS ended
   FROM plan_migrations m
   LEFT JOIN plan_migration_subscriptions ms ON ms.migration_id = m.id
   LEFT JOIN subscriptions s ON s.id = ms.subscription_id";

/// One migration with its progress; NOT_FOUND when there is none.
pub async fn get(c: &mut Conn, id: Uuid) -> Result<Migration> {
    diesel::sql_query(format!("{SELECT} WHERE m.id = $1 GROUP BY m.id"))
        .bind::<sql_types::Uuid, _>(id)
        .get_result(c)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("plan_migration", id.to_string()))
}

/// A page of a plan's migrations, oldest first, after position `after`, and
/// the position to continue after when more follow. NOT_FOUND for an
/// unknown plan.
pub async fn page(c: &mut Conn, plan_id: &str, size: i64, after: Option<i64>) -> Result<(Vec<Migration>, Option<i64>)> {
    let exists: i64 = plans::table.filter(plans::id.eq(plan_id)).count().get_result(c).await?;
    if exists == 0 {
        return Err(Error::not_found("plan", plan_id));
    }
    let mut rows: Vec<Migration> =
        diesel::sql_query(format!("{SELECT} WHERE m.plan_id = $1 AND m.seq > $2 GROUP BY m.id ORDER BY m.seq LIMIT $3"))
            .bind::<sql_types::Text, _>(plan_id)
            .bind::<sql_types::BigInt, _>(after.unwrap_or(0))
            .bind::<sql_types::BigInt, _>(size + 1)
            .load(c)
            .await?;
    let next = if rows.len() as i64 > size {
        rows.truncate(size as usize);
        rows.last().map(|m| m.seq)
    } else {
        None
    };
    Ok((rows, next))
}
