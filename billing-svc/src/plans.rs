//! Plans: price, period, credits per period, deduction interval and limits.
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{db::Conn, etag::Etag};

use crate::{Error, Result, schema::plans};

pub const FREE_PLAN_ID: &str = "free";

shared::text_enum! {
    /// Length of a billing period (a CHECK allows only monthly).
    pub enum Period {
        Monthly = "monthly",
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = plans, check_for_backend(diesel::pg::Pg))]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
    pub period: Period,
    pub credits_per_period: i64,
    pub deduction_interval_seconds: i32,
    pub max_sessions_per_period: i32,
    pub max_minutes_per_period: i32,
    pub max_upload_bytes: i64,
    pub active: bool,
}

impl Plan {
    /// The plan's etag: a digest of every stored field (docs/design.md,
    /// "API contract: lists, views, etags").
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
                active
            }
        )
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
