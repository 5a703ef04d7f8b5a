//! BillingEventService: WatchEvents and ListEvents over the shared event
//! stream (docs/design.md, "Events"), and the decoding of billing's stored
//! events into their messages.
use chrono::{DateTime, Utc};
use proto::billing::v1 as pb;
use shared::{
    events::{Cursor, Hub, StoredEvent},
    time::{opt_to_proto, to_proto},
};

use super::convert;
use crate::{
    App, orders::Order, plan_changes::PlanChange, refunds::Refund, subscriptions::Subscription, usage::UsageSession,
    views::OrderView,
};

/// The hub's message type.
pub type Event = pb::BillingEvent;

shared::event_service!(
    BillingEventGrpc,
    App,
    pb,
    billing_event_service_server::BillingEventService,
    BillingEvent,
    BillingEventType,
    "BILLING_EVENT_TYPE_"
);

/// A discrepancy row as its event carries it.
#[derive(serde::Deserialize)]
struct DiscrepancyRow {
    id: i64,
    payment_id: String,
    order_id: Option<String>,
    kind: String,
    amount_minor: Option<i64>,
    currency: Option<String>,
    status: String,
    detail: String,
    created_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

/// A subscription row with the pending plan change its trigger added (on
/// SUBSCRIPTION_CHANGE_SCHEDULED of a plan change).
#[derive(serde::Deserialize)]
struct SubscriptionRow {
    #[serde(flatten)]
    subscription: Subscription,
    pending_change: Option<ChangeRow>,
}

#[derive(serde::Deserialize)]
struct ChangeRow {
    #[serde(flatten)]
    change: PlanChange,
    order_id: Option<String>,
}

/// A usage session row with the balance its trigger added.
#[derive(serde::Deserialize)]
struct SessionRow {
    #[serde(flatten)]
    session: UsageSession,
    credits_remaining: Option<i64>,
}

fn payload(e: &StoredEvent) -> Result<pb::billing_event::Payload, serde_json::Error> {
    use pb::billing_event::Payload as P;
    let v = e.payload.clone();
    Ok(match e.entity_kind.as_str() {
        "order" | "payment" => {
            let order: Order = serde_json::from_value(v)?;
            P::Order(convert::order(&OrderView { order, subscription_id: None, refunds: Vec::new() }))
        }
        "subscription" => {
            let s: SubscriptionRow = serde_json::from_value(v)?;
            let pending_change = s.pending_change.map(|c| convert::plan_change_with(&c.change, c.order_id.as_deref()));
            P::Subscription(pb::Subscription { pending_change, ..convert::subscription(&s.subscription) })
        }
        "refund" => P::Refund(convert::refund(&serde_json::from_value::<Refund>(v)?)),
        "usage_session" => {
            let s: SessionRow = serde_json::from_value(v)?;
            P::UsageSession(convert::session_proto(&s.session, s.credits_remaining.unwrap_or_default()))
        }
        _ => {
            let d: DiscrepancyRow = serde_json::from_value(v)?;
            P::Discrepancy(pb::PaymentDiscrepancy {
                id: d.id.to_string(),
                payment_id: d.payment_id,
                order_id: d.order_id.unwrap_or_default(),
                kind: d.kind,
                amount_minor: d.amount_minor.unwrap_or_default(),
                currency: d.currency.unwrap_or_default(),
                status: d.status,
                detail: d.detail,
                created_at: Some(to_proto(d.created_at)),
                resolved_at: opt_to_proto(d.resolved_at),
            })
        }
    })
}

/// A stored billing event as its message. A payload that does not decode
/// (a bug) is logged and left out; the event itself is still sent.
pub fn decode(e: &StoredEvent, cursor: Cursor) -> Event {
    let ty = pb::BillingEventType::from_str_name(&format!("{}{}", TYPES.prefix, e.event_type))
        .unwrap_or(pb::BillingEventType::Unspecified);
    let payload =
        payload(e).inspect_err(|err| tracing::error!(error = %err, event_id = %e.event_id, "event payload does not decode")).ok();
    pb::BillingEvent {
        event_id: e.event_id.to_string(),
        r#type: ty as i32,
        time: Some(to_proto(e.occurred_at)),
        entity_kind: e.entity_kind.clone(),
        entity_id: e.entity_id.clone(),
        entity_version: e.entity_version,
        user_id: e.user_id.clone(),
        cursor: cursor.to_string(),
        payload,
    }
}

/// Billing's event hub over `app`'s pool.
pub fn hub(pool: shared::db::Pool, config: &shared::config::EventsConfig) -> Hub<Event> {
    let options = shared::events::HubOptions { ring: 4096, poll: config.poll, max_watchers: config.max_watchers };
    Hub::new("billing", pool, std::sync::Arc::new(decode), options)
}

#[cfg(test)]
mod tests {
    /// Every type the migrations let the triggers write has a proto value,
    /// and every proto value (but UNSPECIFIED) is one the triggers may write.
    /// The check's newest definition is the plan changes migration's.
    #[test]
    fn stored_types_and_proto_types_are_the_same_list() {
        let (proto, stored) = super::TYPES.lists(include_str!("../../migrations/2026-12-09-000023_plan_changes/up.sql"));
        assert!(!proto.is_empty());
        assert_eq!(proto, stored);
    }
}
