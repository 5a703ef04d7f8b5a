//! Price versions: a plan's terms as one immutable row each (the database
//! refuses to change or delete one). A purchase pins the version it was
//! priced at; its renewals charge it and its periods grant its credits
//! within its limits (docs/design.md, "Catalogue").
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;

use super::Period;
use crate::{Error, Result, money::Money, schema::plan_versions};

/// How the plans row's old `max_upload_bytes` column spells unlimited
/// uploads (it had no word for it: 0 there is "none allowed").
pub const UNLIMITED_UPLOAD_BYTES: i64 = i64::MAX;

/// What a plan allows per billing period; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub sessions_per_period: Option<i32>,
    pub minutes_per_period: Option<i32>,
    /// Largest single upload in bytes (`Some(0)`: no uploads).
    pub upload_bytes: Option<i64>,
}

impl Limits {
    /// From the plans row's old columns: 0 sessions or minutes meant
    /// unlimited, [`UNLIMITED_UPLOAD_BYTES`] means unlimited uploads.
    pub fn from_columns(sessions: i32, minutes: i32, upload_bytes: i64) -> Self {
        Limits {
            sessions_per_period: (sessions > 0).then_some(sessions),
            minutes_per_period: (minutes > 0).then_some(minutes),
            upload_bytes: (upload_bytes != UNLIMITED_UPLOAD_BYTES).then_some(upload_bytes),
        }
    }

    /// The plans row's old columns (sessions, minutes, upload bytes): the
    /// inverse of [`Limits::from_columns`]. A version never holds a limit
    /// of 0 sessions or minutes (CHECK), which those columns cannot say.
    pub fn to_columns(self) -> (i32, i32, i64) {
        (
            self.sessions_per_period.unwrap_or(0),
            self.minutes_per_period.unwrap_or(0),
            self.upload_bytes.unwrap_or(UNLIMITED_UPLOAD_BYTES),
        )
    }
}

/// A version's terms without its identity: what a change compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub price_minor: i64,
    pub currency: String,
    pub period: Period,
    pub credits_per_period: i64,
    pub limits: Limits,
    /// Days of the trial a first purchase may start (StartTrial); None: no
    /// trial.
    pub trial_days: Option<i32>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = plan_versions, check_for_backend(diesel::pg::Pg))]
pub struct Version {
    pub plan_id: String,
    pub version: i32,
    pub price_minor: i64,
    pub currency: String,
    pub period: Period,
    pub credits_per_period: i64,
    pub max_sessions_per_period: Option<i32>,
    pub max_minutes_per_period: Option<i32>,
    pub max_upload_bytes: Option<i64>,
    /// Days of the trial a first purchase may start (StartTrial); None: no
    /// trial.
    pub trial_days: Option<i32>,
    pub created_at: DateTime<Utc>,
}

impl Version {
    pub fn limits(&self) -> Limits {
        Limits {
            sessions_per_period: self.max_sessions_per_period,
            minutes_per_period: self.max_minutes_per_period,
            upload_bytes: self.max_upload_bytes,
        }
    }

    pub fn terms(&self) -> Terms {
        Terms {
            price_minor: self.price_minor,
            currency: self.currency.clone(),
            period: self.period,
            credits_per_period: self.credits_per_period,
            limits: self.limits(),
            trial_days: self.trial_days,
        }
    }

    /// What one period of this version costs.
    pub fn price(&self) -> Money<'_> {
        Money { minor: self.price_minor, currency: &self.currency }
    }
}

/// Version `version` of plan `plan_id`.
pub async fn version(conn: &mut Conn, plan_id: &str, version: i32) -> Result<Version> {
    plan_versions::table
        .find((plan_id, version))
        .select(Version::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("plan_version", format!("{plan_id}/{version}")))
}

/// Every version of the given plans, by plan then version.
pub async fn versions_of(conn: &mut Conn, plan_ids: &[&str]) -> Result<Vec<Version>> {
    Ok(plan_versions::table
        .filter(plan_versions::plan_id.eq_any(plan_ids))
        .select(Version::as_select())
        .order((plan_versions::plan_id, plan_versions::version))
        .load(conn)
        .await?)
}

/// Inserts the next version of `plan_id` with `terms` (the caller holds the
/// plan's row lock, so versions of one plan are numbered one at a time:
/// consecutive, never twice the same).
pub(super) async fn insert_next(conn: &mut Conn, plan_id: &str, terms: &Terms, now: DateTime<Utc>) -> Result<Version> {
    let last: Option<i32> = plan_versions::table
        .filter(plan_versions::plan_id.eq(plan_id))
        .select(diesel::dsl::max(plan_versions::version))
        .first(conn)
        .await?;
    let l = terms.limits;
    Ok(diesel::insert_into(plan_versions::table)
        .values((
            plan_versions::plan_id.eq(plan_id),
            plan_versions::version.eq(last.unwrap_or(0) + 1),
            plan_versions::price_minor.eq(terms.price_minor),
            plan_versions::currency.eq(&terms.currency),
            plan_versions::period.eq(terms.period),
            plan_versions::credits_per_period.eq(terms.credits_per_period),
            plan_versions::max_sessions_per_period.eq(l.sessions_per_period),
            plan_versions::max_minutes_per_period.eq(l.minutes_per_period),
            plan_versions::max_upload_bytes.eq(l.upload_bytes),
            plan_versions::trial_days.eq(terms.trial_days),
            plan_versions::created_at.eq(now),
        ))
        .returning(Version::as_returning())
        .get_result(conn)
        .await?)
}
