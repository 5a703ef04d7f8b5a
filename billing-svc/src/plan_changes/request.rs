//! ChangeSubscriptionPlan and CancelPlanChange (docs/design.md, "Plan
//! changes"). An upgrade asked for IMMEDIATELY is priced under the
//! subscription's lock, its gateway order created with no pooled connection
//! held, and recorded under the lock again only if the subscription is
//! still as priced; a change at period end is one transaction.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::{
    db::{Conn, DbError, Races},
    error::ServiceError,
    etag::Etag,
    ids::{PlanId, UserId},
    status::ErrorReason,
};
use uuid::Uuid;

use super::{
    ChangeView, PlanChange, Status, Timing, apply::apply_in, being_charged, cancel_uncharged_renewals, close, lock_open,
    lock_open_orders, prorate, renewal_in_collection,
};
use crate::{
    App, Error, Result, checkout_orders,
    gateway::NewOrder,
    orders::{self, Order},
    plans::{self, Version},
    schema::{orders as o, plan_changes as pc},
    subscriptions::{self, Subscription},
};

/// ChangeSubscriptionPlan's input, checked at the edge (the proration
/// choice is checked there against the timing: each timing has one).
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub subscription_id: Uuid,
    pub user_id: UserId,
    pub plan_id: PlanId,
    pub timing: Timing,
    pub etag: Option<Etag>,
}

/// What ChangeSubscriptionPlan came to.
#[derive(Debug, Clone)]
pub struct Changed {
    pub subscription: Subscription,
    /// The change made (or found, when replayed); None for a change to the
    /// plan the subscription is on (a no-op).
    pub change: Option<ChangeView>,
    /// Nothing new was done: the same change was already open, or the
    /// subscription is already on the plan.
    pub replayed: bool,
}

/// What the first, locked look decided.
enum Decision {
    Done(Box<Changed>),
    /// An upgrade to charge: create its gateway order, then record it.
    Charge(Box<Quote>),
}

#[derive(Debug, Clone)]
struct Quote {
    change_id: Uuid,
    from: Version,
    to: Version,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    amount_minor: i64,
}

/// Re-pricings tried when the subscription changes between pricing an
/// upgrade and recording it.
const ATTEMPTS: usize = 3;

/// ChangeSubscriptionPlan: see the module doc.
pub async fn change(app: &App, r: &ChangeRequest) -> Result<Changed> {
    let now = app.clock.now();
    for _ in 0..ATTEMPTS {
        let decision = {
            let mut conn = app.conn().await?;
            shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| decide(c, r, now).await)?
        };
        let quote = match decision {
            Decision::Done(changed) => return Ok(*changed),
            Decision::Charge(q) => *q,
        };
        let receipt = quote.change_id.to_string();
        let at_gateway = app
            .gateway
            .create_order(&NewOrder {
                amount_minor: quote.amount_minor,
                currency: &quote.to.currency,
                receipt: &receipt,
                user_id: r.user_id.as_str(),
                plan_id: &quote.to.plan_id,
                mandate: None,
            })
            .await?;
        let mut conn = app.conn().await?;
        let recorded =
            shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| record(c, r, &quote, &at_gateway.id, now).await)?;
        if let Some(changed) = recorded {
            return Ok(changed);
        }
        // The subscription moved since it was priced (its gateway order is
        // never paid and lapses): price it again.
    }
    // ABORTED CONCURRENT_UPDATE with RetryInfo: the caller retries.
    Err(ServiceError::Db(DbError::Conflict(format!(
        "subscription {} kept changing while the plan change was priced",
        r.subscription_id
    )))
    .into())
}

/// Locks the subscription (after its open orders) as it reads now, checking
/// whose it is and that it can change plan at all.
async fn lock_changeable(c: &mut Conn, r: &ChangeRequest, now: DateTime<Utc>) -> Result<Subscription> {
    lock_open_orders(c, r.subscription_id).await?;
    let mut sub = subscriptions::lock(c, r.subscription_id).await?;
    if sub.user_id != r.user_id.as_str() {
        return Err(Error::not_found("subscription", r.subscription_id));
    }
    if subscriptions::roll_if_due(c, &sub, now).await? {
        sub = subscriptions::get(c, sub.id).await?;
    }
    let subject = format!("subscription:{}", sub.id);
    let not_allowed = |why: String| Err(Error::precondition(ErrorReason::PlanChangeNotAllowed, subject.clone(), why));
    match sub.status {
        subscriptions::Status::Active => {}
        subscriptions::Status::PastDue => {
            return Err(Error::precondition(
                ErrorReason::SubscriptionPastDue,
                subject,
                "the subscription is past due: pay its open renewal order first (a renewal checkout), then change the plan",
            ));
        }
        status => {
            return Err(Error::precondition(ErrorReason::SubscriptionEnded, subject, format!("the subscription is {status}")));
        }
    }
    if sub.is_free() {
        return not_allowed("the free plan has no period to prorate: buy the plan through checkout".into());
    }
    if sub.trial_end.is_some_and(|end| now < end) {
        return not_allowed("a running trial cannot change plan: start the other plan's trial or buy it through checkout".into());
    }
    if sub.cancel_at_period_end {
        return not_allowed("the subscription is cancelled at period end: it has no next period to change".into());
    }
    Ok(sub)
}

async fn decide(c: &mut Conn, r: &ChangeRequest, now: DateTime<Utc>) -> Result<Decision> {
    let sub = lock_changeable(c, r, now).await?;
    let open = lock_open(c, sub.id).await?;
    // Share lock: no new version or archive until the change is in.
    let plan = plans::get_shared(c, r.plan_id.as_str()).await?;
    if plan.id == sub.plan_id {
        // Staying on the plan: a change to it is a no-op, and withdraws a
        // pending change to another plan (the customer's latest word).
        let Some(open) = open else {
            return Ok(Decision::Done(Box::new(Changed { subscription: sub, change: None, replayed: true })));
        };
        Etag::check(r.etag.as_ref(), &[&sub.etag()], "subscription", sub.id)?;
        withdraw_in(c, &sub, &open, now).await?;
        return Ok(Decision::Done(Box::new(Changed { subscription: sub, change: None, replayed: false })));
    }
    checkout_orders::not_purchasable(&plan)?;
    let from = plans::version(c, &sub.plan_id, sub.plan_version).await?;
    let to = plans::version(c, &plan.id, plan.current_version).await?;
    if let Some(open) = open.as_ref().filter(|o| o.to_plan_id == to.plan_id && o.to_version == to.version && o.timing == r.timing)
    {
        let change = with_order(c, open.clone()).await?;
        return Ok(Decision::Done(Box::new(Changed { subscription: sub, change: Some(change), replayed: true })));
    }
    let subject = format!("subscription:{}", sub.id);
    if orders::renewal_paid(c, sub.id, sub.period_end).await? {
        return Err(Error::precondition(
            ErrorReason::PlanChangeNotAllowed,
            subject,
            "the next period is already paid at the current plan's price: change the plan once it has begun",
        ));
    }
    not_while_collecting(c, &sub).await?;
    if to.currency != from.currency {
        return Err(Error::precondition(
            ErrorReason::PlanChangeNotAllowed,
            subject,
            format!(
                "{} is priced in {} and {} in {}: a change between currencies is not supported; cancel at period end and buy the other plan",
                to.plan_id, to.currency, from.plan_id, from.currency
            ),
        ));
    }
    if to.period != from.period {
        return Err(Error::precondition(
            ErrorReason::PlanChangeNotAllowed,
            subject,
            format!(
                "{} has {} periods and {} {}: a change between period lengths is not supported; cancel at period end and buy the other plan",
                to.plan_id,
                to.period.as_str(),
                from.plan_id,
                from.period.as_str()
            ),
        ));
    }
    Etag::check(r.etag.as_ref(), &[&sub.etag()], "subscription", sub.id)?;
    match r.timing {
        Timing::AtPeriodEnd => {
            let change = insert(c, open.as_ref(), Uuid::new_v4(), &sub, &from, &to, Timing::AtPeriodEnd, 0, now).await?;
            // The next period's renewal order was priced at the current
            // plan: the renewal job opens it again at the new one (unless
            // the job claimed it for a charge meanwhile: refused, rolled
            // back).
            if !cancel_uncharged_renewals(c, sub.id, now).await? {
                return Err(being_charged(sub.id));
            }
            tracing::info!(subscription_id = %sub.id, plan_id = %to.plan_id, at = %sub.period_end, "plan change scheduled at period end");
            Ok(Decision::Done(Box::new(Changed {
                subscription: sub,
                change: Some(ChangeView { change, order: None }),
                replayed: false,
            })))
        }
        Timing::Immediately => {
            if to.price_minor <= from.price_minor {
                return Err(Error::precondition(
                    ErrorReason::PlanChangeNotAllowed,
                    subject,
                    format!(
                        "only an upgrade (a higher price) takes effect now: {} at {} {} is not one from {} at {} {}; ask AT_PERIOD_END",
                        to.plan_id, to.price_minor, to.currency, from.plan_id, from.price_minor, from.currency
                    ),
                ));
            }
            let amount_minor = prorate(from.price_minor, to.price_minor, sub.period_start, sub.period_end, now);
            if amount_minor == 0 {
                // Nothing left to charge (the period is over to the
                // millisecond): the upgrade takes effect at once.
                let change = insert(c, open.as_ref(), Uuid::new_v4(), &sub, &from, &to, Timing::Immediately, 0, now).await?;
                let Ok(subscription) = apply_in(c, &sub, &change, now).await? else {
                    return Err(being_charged(sub.id));
                };
                let change = pc::table.find(change.id).select(PlanChange::as_select()).first(c).await?;
                return Ok(Decision::Done(Box::new(Changed {
                    subscription,
                    change: Some(ChangeView { change, order: None }),
                    replayed: false,
                })));
            }
            let (period_start, period_end) = (sub.period_start, sub.period_end);
            Ok(Decision::Charge(Box::new(Quote { change_id: Uuid::new_v4(), from, to, period_start, period_end, amount_minor })))
        }
    }
}

/// Records a priced upgrade with its gateway order, if the subscription is
/// still as priced (None: price it again). A concurrent identical request
/// that recorded first is answered as a replay.
async fn record(c: &mut Conn, r: &ChangeRequest, q: &Quote, order_id: &str, now: DateTime<Utc>) -> Result<Option<Changed>> {
    let sub = lock_changeable(c, r, now).await?;
    let open = lock_open(c, sub.id).await?;
    if let Some(open) =
        open.as_ref().filter(|o| o.to_plan_id == q.to.plan_id && o.to_version == q.to.version && o.timing == Timing::Immediately)
    {
        let change = with_order(c, open.clone()).await?;
        return Ok(Some(Changed { subscription: sub, change: Some(change), replayed: true }));
    }
    let current: (&str, i32, DateTime<Utc>) = (&sub.plan_id, sub.plan_version, sub.period_start);
    if current != (q.from.plan_id.as_str(), q.from.version, q.period_start) || sub.period_end != q.period_end {
        return Ok(None);
    }
    if orders::renewal_paid(c, sub.id, sub.period_end).await? || renewal_in_collection(c, sub.id).await? {
        return Ok(None);
    }
    let change = insert(c, open.as_ref(), q.change_id, &sub, &q.from, &q.to, Timing::Immediately, q.amount_minor, now).await?;
    let order: Order = diesel::insert_into(o::table)
        .values((
            o::id.eq(order_id),
            o::user_id.eq(&sub.user_id),
            o::plan_id.eq(&q.to.plan_id),
            o::plan_version.eq(q.to.version),
            o::amount_minor.eq(q.amount_minor),
            o::currency.eq(&q.to.currency),
            o::plan_change_id.eq(change.id),
            o::created_at.eq(now),
            o::updated_at.eq(now),
        ))
        .returning(Order::as_returning())
        .get_result(c)
        .await?;
    tracing::info!(subscription_id = %sub.id, plan_id = %q.to.plan_id, order_id, amount_minor = q.amount_minor, "upgrade priced; applies once its order is paid");
    Ok(Some(Changed { subscription: sub, change: Some(ChangeView { change, order: Some(order) }), replayed: false }))
}

async fn with_order(c: &mut Conn, change: PlanChange) -> Result<ChangeView> {
    let order = o::table.filter(o::plan_change_id.eq(change.id)).select(Order::as_select()).first(c).await.optional()?;
    Ok(ChangeView { change, order })
}

/// Inserts an OPEN change, closing `replacing`, the subscription's open
/// change as the caller locked it (superseded: a customer changing their
/// mind). Caller holds the locks.
#[allow(clippy::too_many_arguments)]
async fn insert(
    c: &mut Conn,
    replacing: Option<&PlanChange>,
    id: Uuid,
    sub: &Subscription,
    from: &Version,
    to: &Version,
    timing: Timing,
    amount_minor: i64,
    now: DateTime<Utc>,
) -> Result<PlanChange> {
    if let Some(open) = replacing {
        close(c, open, Status::Cancelled, now).await?;
    }
    let change = PlanChange {
        id,
        subscription_id: sub.id,
        timing,
        status: Status::Open,
        from_plan_id: from.plan_id.clone(),
        from_version: from.version,
        to_plan_id: to.plan_id.clone(),
        to_version: to.version,
        period_start: sub.period_start,
        period_end: sub.period_end,
        amount_minor,
        currency: to.currency.clone(),
        created_at: now,
        updated_at: now,
        applied_at: None,
    };
    Ok(diesel::insert_into(pc::table).values(&change).returning(PlanChange::as_returning()).get_result(c).await?)
}

/// Refuses a change while the next period's renewal is being charged to
/// the saved method (see [`renewal_in_collection`]).
async fn not_while_collecting(c: &mut Conn, sub: &Subscription) -> Result<()> {
    if renewal_in_collection(c, sub.id).await? {
        return Err(being_charged(sub.id));
    }
    Ok(())
}

/// Withdraws `open` (CancelPlanChange, or a change back to the plan the
/// subscription is on). A change at period end whose renewal order at the
/// new plan is paid already stands (it takes effect at period end), and
/// one whose renewal is being charged waits for that charge.
async fn withdraw_in(c: &mut Conn, sub: &Subscription, open: &PlanChange, now: DateTime<Utc>) -> Result<()> {
    if open.timing == Timing::AtPeriodEnd && orders::renewal_paid(c, sub.id, sub.period_end).await? {
        return Err(Error::precondition(
            ErrorReason::PlanChangeNotAllowed,
            format!("subscription:{}", sub.id),
            "the next period is already paid at the new plan's price: the change takes effect at period end",
        ));
    }
    close(c, open, Status::Cancelled, now).await?;
    tracing::info!(subscription_id = %sub.id, change_id = %open.id, "plan change withdrawn");
    Ok(())
}

/// CancelPlanChange: withdraws the subscription's open change (a scheduled
/// change, or an upgrade not paid yet, whose order is cancelled: a late
/// payment of it is a refundable discrepancy). The next period's renewal
/// order, if already opened at the changed plan, is cancelled too and
/// opened again at the subscription's own. Nothing open: replayed.
pub async fn withdraw(app: &App, subscription_id: Uuid, user_id: &UserId) -> Result<(Subscription, bool)> {
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    shared::retry_tx!(&mut conn, Races::Conflicts, |c| {
        lock_open_orders(c, subscription_id).await?;
        let mut sub = subscriptions::lock(c, subscription_id).await?;
        if sub.user_id != user_id.as_str() {
            return Err(Error::not_found("subscription", subscription_id));
        }
        if subscriptions::roll_if_due(c, &sub, now).await? {
            sub = subscriptions::get(c, sub.id).await?;
        }
        let Some(open) = lock_open(c, sub.id).await? else { return Ok((sub, true)) };
        withdraw_in(c, &sub, &open, now).await?;
        Ok::<_, Error>((sub, false))
    })
}
