//! The event streams' errors (docs/design.md, Events): a cursor of another
//! stream is CURSOR_EXPIRED, a watcher past the replica's cap is
//! WATCHERS_EXHAUSTED.
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tests::{
    clients::{billing_events_client, checkout_events_client},
    harness::{Options, SERVICE_TOKEN},
    spawn_app_with,
};

use super::*;

pub(super) async fn walk_the_event_streams(w: &mut Walk) {
    let mut events = Options::default().events;
    events.max_watchers = 1;
    let app = spawn_app_with(Options { events, ..Options::default() }).await;
    let mut billing = billing_events_client(&app.billing_addr.to_string(), SERVICE_TOKEN).unwrap();
    let mut checkout = checkout_events_client(&app.checkout_addr.to_string(), SERVICE_TOKEN).unwrap();

    // A cursor checkout handed out means nothing to billing's stream.
    let theirs = checkout.list_events(cpb::ListEventsRequest::default()).await.unwrap().into_inner().next_cursor;
    let r = billing.list_events(bpb::ListEventsRequest { after_cursor: theirs, ..Default::default() }).await;
    let s = w.saw(R::CursorExpired, "billing ListEvents with checkout's cursor", r);
    assert!(Walk::metadata(&s, "oldest_cursor").starts_with("ev1-"), "{s:?}");

    // One watcher is all this replica takes.
    let first = billing.watch_events(bpb::WatchEventsRequest::default()).await.unwrap();
    let r = billing.watch_events(bpb::WatchEventsRequest::default()).await;
    w.saw(R::WatchersExhausted, "a second WatchEvents with EVENTS_MAX_WATCHERS=1", r.map(|_| ()));
    drop(first);
}
