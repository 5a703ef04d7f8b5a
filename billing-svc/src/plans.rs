//! Plans: price, period, credits per period, deduction interval and limits.
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;

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

pub async fn list(conn: &mut Conn) -> Result<Vec<Plan>> {
    Ok(plans::table.select(Plan::as_select()).order((plans::price_minor, plans::id)).load(conn).await?)
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Plan> {
    plans::table.find(id).select(Plan::as_select()).first(conn).await.optional()?.ok_or_else(|| Error::not_found("plan", id))
}
