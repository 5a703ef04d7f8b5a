//! The catalogue's changes (billing.v1.PlanCatalogService; docs/design.md,
//! "Catalogue"): create a plan, change its name or its terms, give it a new
//! price, archive it and put it back on sale; and its read side, a plan
//! with every version.
//!
//! Every change runs in one transaction with its request's idempotency key
//! (a replay answers the stored response, never applies twice), under the
//! plan's row lock (so concurrent changes of one plan queue, and its
//! versions are numbered one at a time), checks the caller's etag under
//! that lock and only when it would change something (docs/design.md, "API
//! contract: lists, views, etags"), and answers the plan as committed. A
//! change that only validates runs the same steps in a transaction that is
//! always rolled back, with no key: its answer is what the change would do.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{
    db::{Conn, Races},
    etag::Etag,
    idempotency::{Encode, Key, Outcome},
    ids::PlanId,
    status::ErrorReason,
};

use super::{
    Plan, Terms, Version,
    versions::{self, insert_next},
};
use crate::{Error, Result, schema::plans};

/// A new plan, checked at the edge.
#[derive(Debug, Clone)]
pub struct NewPlan {
    pub id: PlanId,
    pub name: String,
    pub deduction_interval_seconds: i32,
    pub terms: Terms,
}

/// UpdatePlan's changes: the fields its update mask names. A limit is
/// `Some(None)` for "unlimited".
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub name: Option<String>,
    pub credits_per_period: Option<i64>,
    pub sessions_per_period: Option<Option<i32>>,
    pub minutes_per_period: Option<Option<i32>>,
    pub upload_bytes: Option<Option<i64>>,
}

/// CreatePriceVersion's price (the other terms stay the current version's).
#[derive(Debug, Clone)]
pub struct NewPrice {
    pub price_minor: i64,
    pub currency: String,
    /// The new version's trial: None keeps the current version's, Some(None)
    /// offers none.
    pub trial_days: Option<Option<i32>>,
}

/// A plan with every version, oldest first (the last is the current one).
#[derive(Debug, Clone)]
pub struct CatalogPlan {
    pub plan: Plan,
    pub versions: Vec<Version>,
}

/// What a change came to: the plan as committed (or as it would be), and
/// the version the change created, if it created one.
#[derive(Debug, Clone)]
pub struct Changed {
    pub plan: CatalogPlan,
    pub version: Option<Version>,
}

/// How a change runs: under its request's key, or only validated.
pub struct Run<'a> {
    pub key: &'a Key,
    pub validate_only: bool,
    /// The RPC's response for the key store.
    pub encode: Encode<'a, Changed>,
    pub now: DateTime<Utc>,
}

/// Runs `$body` (a `Result<Changed>` expression over the connection `$c`)
/// as [`Run`] says: keyed in a transaction retried on lost races, or in a
/// transaction always rolled back.
macro_rules! change {
    ($conn:expr, $run:expr, |$c:ident| $body:expr) => {{
        let conn: &mut Conn = $conn;
        let run: &Run<'_> = $run;
        if run.validate_only {
            use diesel_async::{AsyncConnection, TransactionManager};
            type Tm = <Conn as AsyncConnection>::TransactionManager;
            Tm::begin_transaction(conn).await?;
            let verdict: Result<Changed> = {
                let $c = &mut *conn;
                $body
            };
            // Rolled back whatever the verdict: validating never writes.
            Tm::rollback_transaction(conn).await?;
            verdict.map(Outcome::Fresh)
        } else {
            shared::retry_tx!(conn, Races::Conflicts, |$c| shared::keyed!($c, Some(run.key), run.now, run.encode, $body?))
        }
    }};
}

/// CreatePlan: the plan and its version 1. An id in use is ALREADY_EXISTS
/// (a concurrent create of the same id waits for the first and then finds
/// it).
pub async fn create(conn: &mut Conn, run: &Run<'_>, p: &NewPlan) -> Result<Outcome<Changed>> {
    change!(conn, run, |c| create_in(c, p, run.now).await)
}

async fn create_in(c: &mut Conn, p: &NewPlan, now: DateTime<Utc>) -> Result<Changed> {
    let t = &p.terms;
    let (sessions, minutes, upload) = t.limits.to_columns();
    let inserted = diesel::insert_into(plans::table)
        .values((
            plans::id.eq(p.id.as_str()),
            plans::name.eq(&p.name),
            plans::price_minor.eq(t.price_minor),
            plans::currency.eq(&t.currency),
            plans::period.eq(t.period),
            plans::credits_per_period.eq(t.credits_per_period),
            plans::deduction_interval_seconds.eq(p.deduction_interval_seconds),
            plans::max_sessions_per_period.eq(sessions),
            plans::max_minutes_per_period.eq(minutes),
            plans::max_upload_bytes.eq(upload),
            plans::active.eq(true),
            plans::created_at.eq(now),
            // Its version 1, inserted next (the key is checked at commit).
            plans::current_version.eq(1),
        ))
        .on_conflict_do_nothing()
        .execute(c)
        .await?;
    if inserted == 0 {
        return Err(Error::PlanExists { id: p.id.to_string() });
    }
    let version = insert_next(c, p.id.as_str(), t, now).await?;
    Ok(Changed { plan: get(c, p.id.as_str()).await?, version: Some(version) })
}

/// UpdatePlan: a new name applies at once (it is display only); new credits
/// or limits are a new version, which new purchases buy (existing
/// subscriptions keep theirs). Values equal to the current ones change
/// nothing (no version, no etag check).
pub async fn update(
    conn: &mut Conn,
    run: &Run<'_>,
    id: &PlanId,
    etag: Option<&Etag>,
    changes: &Changes,
) -> Result<Outcome<Changed>> {
    change!(conn, run, |c| update_in(c, id.as_str(), etag, changes, run.now).await)
}

async fn update_in(c: &mut Conn, id: &str, etag: Option<&Etag>, ch: &Changes, now: DateTime<Utc>) -> Result<Changed> {
    let plan = lock(c, id).await?;
    let current = versions::version(c, id, plan.current_version).await?;
    let mut terms = current.terms();
    if let Some(credits) = ch.credits_per_period {
        terms.credits_per_period = credits;
    }
    if let Some(l) = ch.sessions_per_period {
        terms.limits.sessions_per_period = l;
    }
    if let Some(l) = ch.minutes_per_period {
        terms.limits.minutes_per_period = l;
    }
    if let Some(l) = ch.upload_bytes {
        terms.limits.upload_bytes = l;
    }
    if terms.price_minor > 0 && terms.credits_per_period == 0 {
        return Err(Error::invalid("credits_per_period", "must be > 0: a plan with a price grants credits"));
    }
    let rename = ch.name.as_deref().filter(|n| *n != plan.name);
    let new_terms = (terms != current.terms()).then_some(terms);
    if rename.is_none() && new_terms.is_none() {
        return Ok(Changed { plan: with_versions(c, plan).await?, version: None });
    }
    Etag::check(etag, &[&plan.etag()], "plan", id)?;
    if let Some(name) = rename {
        diesel::update(plans::table.find(id)).set(plans::name.eq(name)).execute(c).await?;
    }
    let version = match new_terms {
        Some(t) => Some(new_current(c, id, &t, now).await?),
        None => None,
    };
    Ok(Changed { plan: get(c, id).await?, version })
}

/// CreatePriceVersion: a new version at `price`, with the current version's
/// other terms; new purchases pay it, existing subscriptions keep theirs.
/// The free plan has no price (FAILED_PRECONDITION `FREE_PLAN`).
pub async fn reprice(
    conn: &mut Conn,
    run: &Run<'_>,
    id: &PlanId,
    etag: Option<&Etag>,
    price: &NewPrice,
) -> Result<Outcome<Changed>> {
    change!(conn, run, |c| reprice_in(c, id.as_str(), etag, price, run.now).await)
}

async fn reprice_in(c: &mut Conn, id: &str, etag: Option<&Etag>, price: &NewPrice, now: DateTime<Utc>) -> Result<Changed> {
    let plan = lock(c, id).await?;
    if plan.is_free() {
        return Err(Error::precondition(
            ErrorReason::FreePlan,
            format!("plan:{id}"),
            "the free plan is every user's plan on first use and has no price",
        ));
    }
    let current = versions::version(c, id, plan.current_version).await?;
    let mut terms = Terms { price_minor: price.price_minor, currency: price.currency.clone(), ..current.terms() };
    if let Some(trial_days) = price.trial_days {
        terms.trial_days = trial_days;
    }
    if terms.credits_per_period == 0 {
        return Err(Error::invalid("price_minor", "the plan grants no credits: give it credits (UpdatePlan) before a price"));
    }
    Etag::check(etag, &[&plan.etag()], "plan", id)?;
    let version = new_current(c, id, &terms, now).await?;
    Ok(Changed { plan: get(c, id).await?, version: Some(version) })
}

/// Where a plan is (docs/design.md, "Catalogue": archived ⇄ on sale);
/// ArchivePlan and UnarchivePlan move it, through [`put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sale {
    /// Sold: CreateOrder prices an order at its current version.
    OnSale,
    /// Off sale: CreateOrder answers FAILED_PRECONDITION
    /// `PLAN_NOT_PURCHASABLE`; existing subscriptions renew as before, and
    /// an order made before is still paid.
    Archived,
}

/// ArchivePlan (`to` Archived) and UnarchivePlan (`to` OnSale), one code
/// path: a plan already there changes nothing (and its etag is not asked);
/// otherwise `archived_at` and `active` move together. Its versions and
/// subscribers are untouched either way. The free plan is always on sale
/// (FAILED_PRECONDITION `FREE_PLAN`): every user falls back to it.
pub async fn put(conn: &mut Conn, run: &Run<'_>, id: &PlanId, etag: Option<&Etag>, to: Sale) -> Result<Outcome<Changed>> {
    change!(conn, run, |c| put_in(c, id.as_str(), etag, to, run.now).await)
}

async fn put_in(c: &mut Conn, id: &str, etag: Option<&Etag>, to: Sale, now: DateTime<Utc>) -> Result<Changed> {
    let plan = lock(c, id).await?;
    if plan.is_free() {
        return Err(Error::precondition(
            ErrorReason::FreePlan,
            format!("plan:{id}"),
            "the free plan is every user's plan on first use and after a paid one ends; it is always on sale, never archived",
        ));
    }
    let now_in = if plan.archived_at.is_some() { Sale::Archived } else { Sale::OnSale };
    if now_in == to {
        return Ok(Changed { plan: with_versions(c, plan).await?, version: None });
    }
    Etag::check(etag, &[&plan.etag()], "plan", id)?;
    let archived_at = (to == Sale::Archived).then_some(now);
    diesel::update(plans::table.find(id))
        .set((plans::active.eq(archived_at.is_none()), plans::archived_at.eq(archived_at)))
        .execute(c)
        .await?;
    Ok(Changed { plan: get(c, id).await?, version: None })
}

/// The plan row, locked for the change.
async fn lock(c: &mut Conn, id: &str) -> Result<Plan> {
    plans::table
        .find(id)
        .select(Plan::as_select())
        .for_update()
        .first(c)
        .await
        .optional()?
        .ok_or_else(|| Error::not_found("plan", id))
}

/// The plan's next version with `terms`, made current: the plan's own
/// columns take its terms (in their old encoding), in the statement that
/// moves the pointer.
async fn new_current(c: &mut Conn, id: &str, terms: &Terms, now: DateTime<Utc>) -> Result<Version> {
    let v = insert_next(c, id, terms, now).await?;
    let (sessions, minutes, upload) = v.limits().to_columns();
    diesel::update(plans::table.find(&v.plan_id))
        .set((
            plans::current_version.eq(v.version),
            plans::price_minor.eq(v.price_minor),
            plans::currency.eq(&v.currency),
            plans::period.eq(v.period),
            plans::credits_per_period.eq(v.credits_per_period),
            plans::max_sessions_per_period.eq(sessions),
            plans::max_minutes_per_period.eq(minutes),
            plans::max_upload_bytes.eq(upload),
        ))
        .execute(c)
        .await?;
    Ok(v)
}

/// One plan with its versions.
pub async fn get(conn: &mut Conn, id: &str) -> Result<CatalogPlan> {
    let plan = super::get(conn, id).await?;
    with_versions(conn, plan).await
}

async fn with_versions(conn: &mut Conn, plan: Plan) -> Result<CatalogPlan> {
    with_versions_all(conn, vec![plan]).await?.into_iter().next().ok_or_else(|| Error::internal("a plan went missing"))
}

async fn with_versions_all(conn: &mut Conn, plans: Vec<Plan>) -> Result<Vec<CatalogPlan>> {
    let ids: Vec<&str> = plans.iter().map(|p| p.id.as_str()).collect();
    let mut versions = versions::versions_of(conn, &ids).await?;
    Ok(plans
        .into_iter()
        .map(|plan| {
            let mine = versions.extract_if(.., |v| v.plan_id == plan.id).collect();
            CatalogPlan { plan, versions: mine }
        })
        .collect())
}

/// A page of the catalogue by plan id, after `after`, with or without the
/// archived plans, and the id to continue after when more follow.
pub async fn page(
    conn: &mut Conn,
    size: i64,
    after: Option<String>,
    show_archived: bool,
) -> Result<(Vec<CatalogPlan>, Option<String>)> {
    let mut q = plans::table.select(Plan::as_select()).order(plans::id).into_boxed();
    if let Some(id) = after {
        q = q.filter(plans::id.gt(id));
    }
    if !show_archived {
        q = q.filter(plans::archived_at.is_null());
    }
    let mut rows: Vec<Plan> = q.limit(size + 1).load(conn).await?;
    let next = if rows.len() as i64 > size {
        rows.truncate(size as usize);
        rows.last().map(|p| p.id.clone())
    } else {
        None
    };
    Ok((with_versions_all(conn, rows).await?, next))
}
