//! A subscription's saved payment method and the limits of its recurring
//! mandate: saving, completing and forgetting it.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use super::{SavedMethod, Subscription};
use crate::{
    Result,
    orders::{self, MandateLimits},
    schema::subscriptions,
};

/// Remembers the payment method saved with a payment (the newest one is
/// charged next time), with the limits of the mandate its order registered.
/// A renewal charged with the same token registers nothing new: the
/// mandate's limits, and any email or contact the payment left out, stay.
pub async fn save_method(
    conn: &mut Conn,
    id: Uuid,
    m: &SavedMethod,
    limits: Option<MandateLimits>,
    now: DateTime<Utc>,
) -> Result<()> {
    let current: Option<String> =
        subscriptions::table.find(id).select(subscriptions::gateway_token_id).first(conn).await.optional()?.flatten();
    let same_token = current.as_deref() == Some(m.token_id.as_str());
    let (max, expires) = match (limits, same_token) {
        (Some(l), _) => (Some(l.max_amount_minor), Some(l.expires_at)),
        (None, true) => {
            let old: (Option<i64>, Option<DateTime<Utc>>) = subscriptions::table
                .find(id)
                .select((subscriptions::mandate_max_amount_minor, subscriptions::mandate_expires_at))
                .first(conn)
                .await?;
            old
        }
        (None, false) => (None, None),
    };
    let (old_email, old_contact): (Option<String>, Option<String>) = if same_token {
        subscriptions::table.find(id).select((subscriptions::gateway_email, subscriptions::gateway_contact)).first(conn).await?
    } else {
        (None, None)
    };
    diesel::update(subscriptions::table.find(id))
        .set((
            subscriptions::gateway_customer_id.eq(&m.customer_id),
            subscriptions::gateway_token_id.eq(&m.token_id),
            subscriptions::gateway_email.eq(m.email.clone().or(old_email)),
            subscriptions::gateway_contact.eq(m.contact.clone().or(old_contact)),
            subscriptions::mandate_max_amount_minor.eq(max),
            subscriptions::mandate_expires_at.eq(expires),
            subscriptions::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets a saved method whose token can no longer be charged (revoked,
/// rejected, paused or expired at the gateway) on every subscription that
/// holds it, and stops the automatic collection of their open renewal
/// orders: the customer pays through a renewal checkout instead. Returns the
/// subscriptions that held it.
///
/// Lock order as in a renewal capture: the open renewal orders first, then
/// the subscriptions (each set in id order), so the two cannot deadlock.
pub async fn forget_method(conn: &mut Conn, token_id: &str, why: &str, now: DateTime<Utc>) -> Result<Vec<Uuid>> {
    orders::lock_open_renewals_of_token(conn, token_id).await?;
    let holders: Vec<Uuid> = subscriptions::table
        .filter(subscriptions::gateway_token_id.eq(token_id))
        .order(subscriptions::id)
        .select(subscriptions::id)
        .for_update()
        .load(conn)
        .await?;
    if holders.is_empty() {
        return Ok(holders);
    }
    let ids: Vec<Uuid> = diesel::update(subscriptions::table.filter(subscriptions::id.eq_any(&holders)))
        .set((
            subscriptions::gateway_customer_id.eq(None::<String>),
            subscriptions::gateway_token_id.eq(None::<String>),
            subscriptions::gateway_email.eq(None::<String>),
            subscriptions::gateway_contact.eq(None::<String>),
            subscriptions::mandate_max_amount_minor.eq(None::<i64>),
            subscriptions::mandate_expires_at.eq(None::<DateTime<Utc>>),
            subscriptions::updated_at.eq(now),
        ))
        .returning(subscriptions::id)
        .get_results(conn)
        .await?;
    if !ids.is_empty() {
        orders::stop_collecting(conn, &ids, why, now).await?;
        tracing::warn!(
            token_id,
            subscriptions = ids.len(),
            why,
            "saved payment method forgotten; renewals are paid through checkout"
        );
    }
    Ok(ids)
}

/// Fills in the email and contact of a saved method that has none (saved
/// before they were stored), on every subscription holding `token_id`;
/// values already stored stay.
pub async fn complete_contact(conn: &mut Conn, token_id: &str, email: &str, contact: &str, now: DateTime<Utc>) -> Result<()> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Nullable, Text};
    diesel::update(subscriptions::table.filter(subscriptions::gateway_token_id.eq(token_id)))
        .set((
            subscriptions::gateway_email.eq(sql::<Nullable<Text>>("coalesce(gateway_email, ").bind::<Text, _>(email).sql(")")),
            subscriptions::gateway_contact
                .eq(sql::<Nullable<Text>>("coalesce(gateway_contact, ").bind::<Text, _>(contact).sql(")")),
            subscriptions::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The saved payment method of a subscription, if any.
pub fn saved_method(s: &Subscription) -> Option<SavedMethod> {
    match (&s.gateway_customer_id, &s.gateway_token_id) {
        (Some(c), Some(t)) => Some(SavedMethod {
            customer_id: c.clone(),
            token_id: t.clone(),
            email: s.gateway_email.clone(),
            contact: s.gateway_contact.clone(),
        }),
        _ => None,
    }
}

/// The mandate limits of a subscription's saved method, when known.
pub fn mandate_limits(s: &Subscription) -> Option<MandateLimits> {
    match (s.mandate_max_amount_minor, s.mandate_expires_at) {
        (Some(max_amount_minor), Some(expires_at)) => Some(MandateLimits { max_amount_minor, expires_at }),
        _ => None,
    }
}
