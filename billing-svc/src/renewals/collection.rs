//! Step 3 of the renewal job: charging the saved payment methods of the
//! renewal orders that are due, and settling what the gateway reports.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::db::Conn;

use super::{Settings, opening::receipt};
use crate::{
    App, Result,
    discrepancies::Source,
    gateway::{GatewayError, GatewayPayment, METHOD_UNUSABLE, PaymentStatus},
    money::Money,
    orders::{Order, Status as OrderStatus},
    payments::{self, Capture, Payment},
    schema::orders as o,
    subscriptions::{self, SavedMethod, Subscription},
};

/// Claims the renewal orders whose charge is due: each claim counts the
/// attempt and moves the next one `retry` ahead, in one statement, so the
/// order is not claimed again (by this or another replica) before then.
async fn claim_due(conn: &mut Conn, now: DateTime<Utc>, st: Settings, batch: i64) -> Result<Vec<Order>> {
    conn.transaction(async |c| {
        let ids: Vec<String> = o::table
            .filter(o::status.eq(OrderStatus::Created))
            .filter(o::next_charge_at.le(now))
            .order(o::next_charge_at)
            .select(o::id)
            .limit(batch)
            .for_update()
            .skip_locked()
            .load(c)
            .await?;
        Ok(diesel::update(o::table.filter(o::id.eq_any(&ids)))
            .set((o::charge_attempts.eq(o::charge_attempts + 1), o::next_charge_at.eq(now + st.retry), o::updated_at.eq(now)))
            .returning(Order::as_returning())
            .get_results(c)
            .await?)
    })
    .await
}

/// Charges the claimed renewal orders' saved payment methods. Returns
/// (captured, declined).
pub(super) async fn collect_due(app: &App, now: DateTime<Utc>, st: Settings, batch: i64) -> Result<(usize, usize)> {
    let claimed = claim_due(&mut *app.conn().await?, now, st, batch).await?;
    let (mut charged, mut declined) = (0, 0);
    for order in claimed {
        match collect_one(app, &order, now).await {
            Ok(true) => charged += 1,
            Ok(false) => declined += 1,
            Err(e) => {
                declined += 1;
                tracing::warn!(order_id = %order.id, error = %e, "renewal charge failed; retried on schedule");
            }
        }
    }
    Ok((charged, declined))
}

async fn collect_one(app: &App, order: &Order, now: DateTime<Utc>) -> Result<bool> {
    let Some(sub_id) = order.renews_subscription_id else { return Ok(false) };
    let sub = subscriptions::get(&mut *app.conn().await?, sub_id).await?;
    let Some(method) = subscriptions::saved_method(&sub).filter(|_| sub.status.is_live()) else {
        stop_charging(app, &order.id, "no saved payment method, or the subscription ended", now).await?;
        return Ok(false);
    };
    // The card mandate's rules: never a debit above what the customer
    // consented to, nor after the mandate ended. The renewal is then paid
    // through a renewal checkout.
    if let Some(limits) = subscriptions::mandate_limits(&sub) {
        if order.amount_minor > limits.max_amount_minor {
            let why = format!(
                "the renewal ({} {}) exceeds the mandate's maximum ({}); pay through a renewal checkout",
                order.amount_minor, order.currency, limits.max_amount_minor
            );
            stop_charging(app, &order.id, &why, now).await?;
            return Ok(false);
        }
        if limits.expires_at <= now {
            stop_charging(app, &order.id, "the recurring mandate has ended; pay through a renewal checkout", now).await?;
            return Ok(false);
        }
    }
    // A charge made before and not captured since (its capture failed, or
    // it was still processing): ask about it instead of charging again.
    if let Some(pending) = &order.pending_payment_id {
        match app.gateway.fetch_payment(pending).await? {
            Some(p) => match settle_known(app, order, &p, now).await? {
                Known::Done(captured) => return Ok(captured),
                // Failed (or refunded): charge again below.
                Known::ChargeAgain => {}
            },
            // A gateway without readable records (the sandbox) captures its
            // charges at once: the payment is captured.
            None => return capture_charge(app, order, pending, order.amount(), now).await,
        }
    }
    if order.charge_attempts > 1 {
        // An earlier attempt's outcome may be unknown (a timeout or 5xx
        // after the request reached the gateway, a crash before its answer
        // was stored), even when the payment remembered above failed: a
        // later charge may have been made since. Any payment of the order
        // that did not fail settles it before a new charge is tried, so the
        // customer is never charged twice for one period (Invariants 24).
        for p in app.gateway.payments_of_order(&order.id).await?.unwrap_or_default() {
            if let Known::Done(captured) = settle_known(app, order, &p, now).await? {
                return Ok(captured);
            }
        }
    }
    let method =
        if method.email.is_none() || method.contact.is_none() { complete_contact(app, &sub, method, now).await? } else { method };
    let receipt = receipt(sub.id, order.renews_period_start.unwrap_or(sub.period_end));
    let payment = match app.gateway.charge_saved_method(&method, order.amount_minor, &order.currency, &order.id, &receipt).await {
        Ok(p) => p,
        Err(GatewayError::Refused { code, message }) if code == METHOD_UNUSABLE => {
            // Revoked, rejected, paused or expired mandate: retrying would
            // be refused until the subscription expires. Forget the method;
            // the subscription takes the normal PAST_DUE / checkout path.
            let why = format!("the saved payment method can no longer be charged: {message}; pay through a renewal checkout");
            tracing::warn!(order_id = %order.id, subscription_id = %sub.id, %why, "automatic renewal stopped");
            subscriptions::forget_method(&mut *app.conn().await?, &method.token_id, &why, now).await?;
            stop_charging(app, &order.id, &why, now).await?;
            return Ok(false);
        }
        Err(e) => {
            let why = match &e {
                GatewayError::Refused { code, message } => format!("declined ({code}): {message}"),
                // It may have reached the gateway: the next attempt looks
                // the order's payments up first.
                GatewayError::Unavailable { message, .. } => format!("outcome unknown, gateway unavailable: {message}"),
            };
            tracing::warn!(order_id = %order.id, subscription_id = %sub.id, attempt = order.charge_attempts, %why, "renewal charge not captured");
            note_failure(app, &order.id, &why, now).await?;
            return Ok(false);
        }
    };
    remember_pending(app, &order.id, &payment.id, now).await?;
    match settle_known(app, order, &payment, now).await? {
        Known::Done(captured) => Ok(captured),
        Known::ChargeAgain => {
            note_failure(app, &order.id, &format!("payment {} failed at the gateway", payment.id), now).await?;
            Ok(false)
        }
    }
}

/// Paid orders of a subscription whose payments are asked for a saved
/// method's email and contact.
const CONTACT_LOOKUPS: i64 = 3;

/// A method saved before its email and contact were stored (a recurring
/// charge must send both): read them from the payments of the subscription
/// that carry its token (the purchase, then paid renewals, newest first),
/// store them, and charge with them. Still missing, the charge is refused as
/// METHOD_UNUSABLE and the renewal paid through checkout. A gateway that
/// cannot answer now is retried on schedule, never taken as "missing".
async fn complete_contact(app: &App, sub: &Subscription, method: SavedMethod, now: DateTime<Utc>) -> Result<SavedMethod> {
    let payment_ids: Vec<Option<String>> = {
        let mut conn = app.conn().await?;
        o::table
            .filter(o::status.eq(OrderStatus::Paid))
            .filter(o::renews_subscription_id.eq(sub.id).or(o::id.eq(sub.order_id.clone().unwrap_or_default())))
            .order(o::paid_at.desc())
            .select(o::payment_id)
            .limit(CONTACT_LOOKUPS)
            .load(&mut conn)
            .await?
    };
    for payment_id in payment_ids.into_iter().flatten() {
        let saved = match app.gateway.fetch_payment(&payment_id).await {
            Ok(p) => p.and_then(|p| p.saved_method).filter(|m| m.token_id == method.token_id),
            // Razorpay does not know it (or refuses to show it): try another.
            Err(GatewayError::Refused { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(saved) = saved else { continue };
        if let (Some(email), Some(contact)) = (method.email.clone().or(saved.email), method.contact.clone().or(saved.contact)) {
            subscriptions::complete_contact(&mut *app.conn().await?, &method.token_id, &email, &contact, now).await?;
            tracing::info!(subscription_id = %sub.id, payment_id, "saved method's email and contact read from the payment that saved it");
            return Ok(SavedMethod { email: Some(email), contact: Some(contact), ..method });
        }
    }
    Ok(method)
}

/// What a payment the gateway reports for a renewal order means for it.
enum Known {
    /// Captured (true), or still on its way (false: pending, or captured at
    /// the gateway but refused by the capture path): never charge again now.
    Done(bool),
    /// Failed or refunded: nothing was taken, another charge may be tried.
    ChargeAgain,
}

/// Settles a payment the gateway reports for `order`: a captured one goes
/// through the capture path; an authorized one (auto-capture off or failed)
/// is captured at the gateway first; a created or pending one (a card
/// mandate debits about 36 hours after Razorpay's pre-debit notification) is
/// remembered and waited for.
async fn settle_known(app: &App, order: &Order, p: &GatewayPayment, now: DateTime<Utc>) -> Result<Known> {
    if p.order_id.as_deref().is_some_and(|o| o != order.id) {
        return Ok(Known::ChargeAgain);
    }
    match p.status {
        PaymentStatus::Captured => {
            remember_pending(app, &order.id, &p.id, now).await?;
            Ok(Known::Done(capture_charge(app, order, &p.id, Money { minor: p.amount_minor, currency: &p.currency }, now).await?))
        }
        PaymentStatus::Authorized => {
            remember_pending(app, &order.id, &p.id, now).await?;
            let captured = app.gateway.capture_payment(&p.id, order.amount_minor, &order.currency).await?;
            Ok(Known::Done(
                capture_charge(
                    app,
                    order,
                    &captured.id,
                    Money { minor: captured.amount_minor, currency: &captured.currency },
                    now,
                )
                .await?,
            ))
        }
        PaymentStatus::Created => {
            remember_pending(app, &order.id, &p.id, now).await?;
            note_failure(app, &order.id, &format!("payment {} is still processing; waiting for its capture", p.id), now).await?;
            Ok(Known::Done(false))
        }
        PaymentStatus::Failed | PaymentStatus::Refunded => Ok(Known::ChargeAgain),
    }
}

/// Remembered before any capture, so a capture that fails is captured by the
/// next attempt instead of charging the customer twice.
async fn remember_pending(app: &App, order_id: &str, payment_id: &str, now: DateTime<Utc>) -> Result<()> {
    diesel::update(o::table.find(order_id))
        .set((o::pending_payment_id.eq(payment_id), o::updated_at.eq(now)))
        .execute(&mut *app.conn().await?)
        .await?;
    Ok(())
}

async fn capture_charge(app: &App, order: &Order, payment_id: &str, paid: Money<'_>, now: DateTime<Utc>) -> Result<bool> {
    let p = Payment { order_id: &order.id, payment_id, paid: Some(paid), saved_method: None, source: Source::RenewalCharge };
    match payments::capture(&mut *app.conn().await?, p, now).await? {
        Capture::Captured(_) => Ok(true),
        Capture::Discrepancy(d) => {
            tracing::warn!(order_id = %order.id, kind = d.kind.as_str(), "renewal charge became a discrepancy");
            Ok(false)
        }
    }
}

async fn note_failure(app: &App, order_id: &str, why: &str, now: DateTime<Utc>) -> Result<()> {
    diesel::update(o::table.find(order_id))
        .set((o::last_charge_error.eq(why), o::updated_at.eq(now)))
        .execute(&mut *app.conn().await?)
        .await?;
    Ok(())
}

async fn stop_charging(app: &App, order_id: &str, why: &str, now: DateTime<Utc>) -> Result<()> {
    diesel::update(o::table.find(order_id))
        .set((o::next_charge_at.eq(None::<DateTime<Utc>>), o::last_charge_error.eq(why), o::updated_at.eq(now)))
        .execute(&mut *app.conn().await?)
        .await?;
    Ok(())
}
