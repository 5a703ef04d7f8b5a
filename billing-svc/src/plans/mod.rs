//! Plans: what can be bought (docs/design.md, "Catalogue"). A plan's terms
//! (price, currency, period, credits per period, limits) live in immutable
//! price versions ([`Version`]); the plan points at its current one, which
//! new purchases buy, and keeps that version's terms in its own columns in
//! their old encoding, so BillingService's ListPlans and GetPlan read one
//! row. A subscription is pinned to the version it was bought at. The
//! catalogue's changes are [`catalogue`].
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{db::Conn, etag::Etag};

use crate::{Error, Result, schema::plans};

pub mod catalogue;
pub mod migrations;
mod versions;

pub use versions::{Limits, Terms, UNLIMITED_UPLOAD_BYTES, Version, version, versions_of};

pub const FREE_PLAN_ID: &str = "free";

/// The version of a subscription or order stored before versions existed
/// (an event payload of then): the migration pinned every such row to 1.
pub fn version_before_the_catalogue() -> i32 {
    1
}

shared::text_enum! {
    /// Length of a billing period: a paid subscription's periods are this
    /// many months from its anchor ([`Period::months`]).
    pub enum Period {
        Monthly = "monthly",
        Yearly = "yearly",
    }
}

impl Period {
    /// Months per period, as `billing_period_at` takes them.
    pub fn months(self) -> i32 {
        match self {
            Period::Monthly => 1,
            Period::Yearly => 12,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = plans, check_for_backend(diesel::pg::Pg))]
pub struct Plan {
    pub id: String,
    pub name: String,
    /// The current version's terms, in the old encoding (see [`Plan::limits`]).
    pub price_minor: i64,
    pub currency: String,
    pub period: Period,
    pub credits_per_period: i64,
    pub deduction_interval_seconds: i32,
    pub max_sessions_per_period: i32,
    pub max_minutes_per_period: i32,
    pub max_upload_bytes: i64,
    /// False exactly when archived: no new purchases.
    pub active: bool,
    pub created_at: DateTime<Utc>,
    /// The version new purchases buy.
    pub current_version: i32,
    pub archived_at: Option<DateTime<Utc>>,
}

impl Plan {
    /// The plan's etag: a digest of every stored field (docs/design.md,
    /// "API contract: lists, views, etags"); a new version moves
    /// `current_version`, so it changes the etag even when the terms repeat.
    pub fn etag(&self) -> Etag {
        shared::etag_of!(
            "plan",
            self,
            Plan {
                id,
                name,
                price_minor,
                currency,
                period,
                credits_per_period,
                deduction_interval_seconds,
                max_sessions_per_period,
                max_minutes_per_period,
                max_upload_bytes,
                active,
                current_version,
                archived_at
            },
            // Fixed at creation: it tells no two states of a plan apart.
            skip { created_at }
        )
    }

    /// The current version's limits, read from the old columns.
    pub fn limits(&self) -> Limits {
        Limits::from_columns(self.max_sessions_per_period, self.max_minutes_per_period, self.max_upload_bytes)
    }

    /// The free plan: every user's plan on first use. Never bought, so it
    /// has no price to change and is never archived (nor unarchived).
    pub fn is_free(&self) -> bool {
        self.id == FREE_PLAN_ID
    }
}

/// A page of plans by (price, id), after the given (price, id), and the key
/// to continue after when more follow. `page_size` None reads them all.
pub async fn page(
    conn: &mut Conn,
    page_size: Option<i64>,
    after: Option<(i64, String)>,
) -> Result<(Vec<Plan>, Option<(i64, String)>)> {
    let mut q = plans::table.select(Plan::as_select()).order((plans::price_minor, plans::id)).into_boxed();
    if let Some((price, id)) = after {
        q = q.filter(plans::price_minor.gt(price).or(plans::price_minor.eq(price).and(plans::id.gt(id))));
    }
    let Some(size) = page_size else {
        return Ok((q.load(conn).await?, None));
    };
    let mut rows: Vec<Plan> = q.limit(size + 1).load(conn).await?;
    let next = if rows.len() as i64 > size {
        rows.truncate(size as usize);
        rows.last().map(|p| (p.price_minor, p.id.clone()))
    } else {
        None
    };
    Ok((rows, next))
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Plan> {
    plans::table.find(id).select(Plan::as_select()).first(conn).await.optional()?.ok_or_else(|| Error::not_found("plan", id))
}

/// The plan, locked against changes (a new version, archiving) until the
/// caller's transaction ends, while other readers and share-lockers go on:
/// a purchase's order is inserted under it, so it is never made for a plan
/// archived meanwhile.
pub async fn get_shared(conn: &mut Conn, id: &str) -> Result<Plan> {
    plans::table
        .find(id)
        .select(Plan::as_select())
        .for_share()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("plan", id))
}
