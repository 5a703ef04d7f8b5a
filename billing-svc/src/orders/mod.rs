//! Gateway orders: one per checkout session (the natural idempotency key),
//! and one renewal order per (subscription, period it pays for). The lowest
//! layer of the payment path with plans: it knows the subscriptions table
//! only through SQL, never the subscriptions module (docs/design.md,
//! Components). Creating a checkout session's order is `checkout_orders`;
//! an order with its subscription and refunds is a `views::OrderView`.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Conn;
use uuid::Uuid;

use crate::{Error, Result, money::Money, schema::orders};

mod cancel;
mod renewals;

pub use cancel::cancel_unpaid;
pub use renewals::{
    billing_renewal_paid, cancel_renewals_of, lock_open_renewals_of_token, open_renewals, paid_renewals_from, renewal_paid,
    stop_collecting,
};

pub const MAX_BATCH: usize = 500;

shared::text_id! {
    /// A gateway order's id, as a caller names it (checked at the edge).
    OrderId
}

shared::text_enum! {
    /// Where an order is: CREATED moves to PAID or CANCELLED, both final.
    pub enum Status {
        Created = "CREATED",
        Paid = "PAID",
        /// Withdrawn before payment: its checkout session was cleaned up,
        /// or the subscription it renews ended.
        Cancelled = "CANCELLED",
    }
}

#[derive(serde::Deserialize)] // an event's payload (crate::events)
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
pub struct Order {
    pub id: String,
    /// None for a renewal order nobody opened a checkout for.
    pub checkout_session_id: Option<Uuid>,
    pub user_id: String,
    pub plan_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: Status,
    pub payment_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Creation order, strictly increasing.
    pub seq: i64,
    /// A renewal order: the subscription it renews and the start of the
    /// period it pays for.
    pub renews_subscription_id: Option<Uuid>,
    pub renews_period_start: Option<DateTime<Utc>>,
    pub charge_attempts: i32,
    /// When the saved payment method is charged next (renewals only).
    pub next_charge_at: Option<DateTime<Utc>>,
    pub last_charge_error: Option<String>,
    /// A charge's payment not captured yet (asked about before charging
    /// again).
    pub pending_payment_id: Option<String>,
    /// The recurring mandate this purchase order registers (its payment
    /// saves a token later renewals charge within these limits).
    pub mandate_max_amount_minor: Option<i64>,
    pub mandate_expires_at: Option<DateTime<Utc>>,
    /// The price version the order buys or renews: its amount is that
    /// version's price (a foreign key says so).
    #[serde(default = "crate::plans::version_before_the_catalogue")]
    pub plan_version: i32,
    /// The plan change whose prorated charge this order is (an upgrade
    /// taking effect now; docs/design.md, "Plan changes"); its amount is
    /// that charge, not a version's price.
    #[serde(default)]
    pub plan_change_id: Option<Uuid>,
}

/// The limits of a recurring mandate a purchase order registered (its
/// payment saves a token that later renewals charge within them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MandateLimits {
    pub max_amount_minor: i64,
    pub expires_at: DateTime<Utc>,
}

impl Order {
    pub fn is_paid(&self) -> bool {
        self.status == Status::Paid
    }

    /// What the order costs.
    pub fn amount(&self) -> Money<'_> {
        Money { minor: self.amount_minor, currency: &self.currency }
    }

    pub fn mandate_limits(&self) -> Option<MandateLimits> {
        match (self.mandate_max_amount_minor, self.mandate_expires_at) {
            (Some(max_amount_minor), Some(expires_at)) => Some(MandateLimits { max_amount_minor, expires_at }),
            _ => None,
        }
    }
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Order> {
    orders::table.find(id).select(Order::as_select()).first(conn).await.optional()?.ok_or_else(|| Error::not_found("order", id))
}

/// Locks the order row, if it exists, for the rest of the transaction.
pub async fn lock_optional(conn: &mut Conn, id: &str) -> Result<Option<Order>> {
    Ok(orders::table.find(id).select(Order::as_select()).for_update().first(conn).await.optional()?)
}
