//! The rows billing admits at most `GATE_PER_KEY` requests for at once
//! (docs/design.md, "Bounded lock waits and per-row admission"), as typed
//! keys: a handler names the row, never spells its key.
use std::fmt;

use shared::{
    gate::{Busy, Gate, Pass},
    ids::UserId,
};
use uuid::Uuid;

use crate::orders::OrderId;

/// A row whose lock the admitted requests would wait on.
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    /// StartUsageSession, CancelSubscription: the user's live subscription.
    User(&'a UserId),
    /// Deduct, EndUsageSession.
    UsageSession(Uuid),
    /// VerifyPayment, RefundPayment.
    Order(&'a OrderId),
    /// CreateOrder.
    CheckoutSession(Uuid),
}

impl fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Row::User(id) => write!(f, "user:{id}"),
            Row::UsageSession(id) => write!(f, "usage_session:{id}"),
            Row::Order(id) => write!(f, "order:{id}"),
            Row::CheckoutSession(id) => write!(f, "checkout_session:{id}"),
        }
    }
}

/// Waits for a slot of `row` (see [`Gate::enter`]).
pub async fn admit(gate: &Gate, row: Row<'_>) -> Result<Pass, Busy> {
    gate.enter(&row.to_string()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spelled_as_documented() {
        let user = UserId::parse("u1").map_err(|e| e.to_string());
        let order = OrderId::parse("order_1").map_err(|e| e.to_string());
        let id = Uuid::nil();
        assert_eq!(user.as_ref().map(|u| Row::User(u).to_string()), Ok("user:u1".to_owned()));
        assert_eq!(order.as_ref().map(|o| Row::Order(o).to_string()), Ok("order:order_1".to_owned()));
        assert_eq!(Row::UsageSession(id).to_string(), format!("usage_session:{id}"));
        assert_eq!(Row::CheckoutSession(id).to_string(), format!("checkout_session:{id}"));
    }
}
