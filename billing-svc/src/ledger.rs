//! The credit ledger: every credit that leaves a balance has a row, so
//! `sum(ledger of a period) == credits_granted - credits_remaining`
//! (docs/design.md, Invariants 10). Usage rows are written by the `billing_charge` SQL function (see
//! `deductions`); carry-overs are written here.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;

use crate::{
    Result,
    schema::{ledger, subscriptions},
    subscriptions::Subscription,
};

/// Moves a subscription's remaining credits out (to its replacement) with a
/// CARRY_OVER ledger row and a zero balance, in the caller's transaction.
pub async fn carry_over(conn: &mut Conn, from: &Subscription, now: DateTime<Utc>) -> Result<()> {
    diesel::insert_into(ledger::table)
        .values((
            ledger::subscription_id.eq(from.id),
            ledger::period_start.eq(from.period_start),
            ledger::kind.eq("CARRY_OVER"),
            ledger::credits.eq(from.credits_remaining),
            ledger::created_at.eq(now),
        ))
        .execute(conn)
        .await?;
    diesel::update(subscriptions::table.find(from.id))
        .set((subscriptions::credits_remaining.eq(0), subscriptions::updated_at.eq(now)))
        .execute(conn)
        .await?;
    Ok(())
}
