//! CheckoutEventService: WatchEvents and ListEvents over the shared event
//! stream (docs/design.md, "Events"), and the decoding of checkout's stored
//! events into their messages.
use proto::checkout::v1 as pb;
use shared::{
    events::{Cursor, Hub, StoredEvent},
    time::to_proto,
};

use super::convert;
use crate::{App, sessions::Session};

/// The hub's message type.
pub type Event = pb::CheckoutEvent;

shared::event_service!(
    CheckoutEventGrpc,
    App,
    pb,
    checkout_event_service_server::CheckoutEventService,
    CheckoutEvent,
    CheckoutEventType,
    "CHECKOUT_EVENT_TYPE_"
);

/// A stored checkout event as its message. A payload that does not decode
/// (a bug) is logged and left out; the event itself is still sent.
pub fn decode(e: &StoredEvent, cursor: Cursor) -> Event {
    let ty = pb::CheckoutEventType::from_str_name(&format!("{}{}", TYPES.prefix, e.event_type))
        .unwrap_or(pb::CheckoutEventType::Unspecified);
    let payload = serde_json::from_value::<Session>(e.payload.clone())
        .inspect_err(|err| tracing::error!(error = %err, event_id = %e.event_id, "event payload does not decode"))
        .ok()
        .map(|s| pb::checkout_event::Payload::Session(convert::session(&s)));
    pb::CheckoutEvent {
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

/// Checkout's event hub over `pool`.
pub fn hub(pool: shared::db::Pool, config: &shared::config::EventsConfig) -> Hub<Event> {
    let options = shared::events::HubOptions { ring: 4096, poll: config.poll, max_watchers: config.max_watchers };
    Hub::new("checkout", pool, std::sync::Arc::new(decode), options)
}

#[cfg(test)]
mod tests {
    /// Every type the migration lets the triggers write has a proto value,
    /// and every proto value (but UNSPECIFIED) is one the triggers may write.
    #[test]
    fn stored_types_and_proto_types_are_the_same_list() {
        let (proto, stored) = super::TYPES.lists(include_str!("../../migrations/2026-12-07-000003_events/up.sql"));
        assert!(!proto.is_empty());
        assert_eq!(proto, stored);
    }
}
