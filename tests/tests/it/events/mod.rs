//! The event streams (docs/design.md, "Events"): every change an outside
//! service cares about is an event written in the change's transaction,
//! handed out in an order no late commit can break, with per-entity
//! versions that only go up; WatchEvents follows the stream with bookmarks,
//! ListEvents pages it.
mod checkout_stream;
mod consumer;
mod credit_thresholds;
mod credits_moved;
mod idle_tail;
mod lifecycle;
mod many_watchers;
mod ordering;
mod page_cost;
mod purged_under_a_watcher;
mod restart;
mod retention;
mod shutdown;
mod slow_watcher;
mod watching;

use std::time::Duration;

use futures::StreamExt;
use proto::billing::v1::{self as bpb, watch_events_response::Item};
use tests::{
    TestApp,
    clients::{BillingEventsClient, billing_events_client},
    harness::SERVICE_TOKEN,
};

pub(crate) fn billing_events(app: &TestApp) -> BillingEventsClient {
    billing_events_client(&app.billing_addr.to_string(), SERVICE_TOKEN).unwrap()
}

/// Every billing event kept, paging ListEvents from the oldest until it is
/// caught up. Events settle once every older transaction of the cluster
/// ended (docs/design.md, Events): the other tests' transactions may hold
/// the last ones back for a moment, so an empty page that is not caught up
/// is asked again.
pub(crate) async fn list_all(app: &TestApp) -> Vec<bpb::BillingEvent> {
    list_after(app, String::new()).await.0
}

/// The events after `after` until caught up, and the cursor reached.
pub(crate) async fn list_after(app: &TestApp, mut after: String) -> (Vec<bpb::BillingEvent>, String) {
    let mut c = billing_events(app);
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .list_events(bpb::ListEventsRequest { after_cursor: after.clone(), page_size: 1000, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.next_cursor.is_empty(), "ListEvents always answers a cursor");
        let empty = r.events.is_empty();
        out.extend(r.events);
        after = r.next_cursor;
        if empty && r.caught_up {
            return (out, after);
        }
        if empty {
            assert!(tokio::time::Instant::now() < deadline, "events never settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A cursor after every event committed so far.
pub(crate) async fn settled_cursor(app: &TestApp) -> String {
    list_after(app, String::new()).await.1
}

pub(crate) fn type_name(e: &bpb::BillingEvent) -> &'static str {
    bpb::BillingEventType::try_from(e.r#type).map(|t| t.as_str_name()).unwrap_or("?").trim_start_matches("BILLING_EVENT_TYPE_")
}

/// Versions go 1, 2, 3... per entity in stream order, and no event id
/// repeats.
pub(crate) fn assert_versions_climb(events: &[bpb::BillingEvent]) {
    let mut last = std::collections::HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for e in events {
        assert!(ids.insert(e.event_id.clone()), "event {} sent twice", e.event_id);
        let v = last.entry((e.entity_kind.clone(), e.entity_id.clone())).or_insert(0);
        assert_eq!(e.entity_version, *v + 1, "{} {} {}: versions must climb by one", e.entity_kind, e.entity_id, type_name(e));
        *v = e.entity_version;
    }
}

/// Reads a watch stream until `want` events came (bookmarks skipped), at
/// most `within`.
pub(crate) async fn next_events(
    stream: &mut tonic::Streaming<bpb::WatchEventsResponse>,
    want: usize,
    within: Duration,
) -> Vec<bpb::BillingEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < want {
        let msg = tokio::time::timeout_at(deadline, stream.next()).await;
        match msg {
            Ok(Some(Ok(m))) => {
                if let Some(Item::Event(e)) = m.item {
                    out.push(e);
                }
            }
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!(
                "only {} of {want} events within {within:?}: {:?}",
                out.len(),
                out.iter().map(type_name).collect::<Vec<_>>()
            ),
        }
    }
    out
}

/// Every billing event kept (see [`list_all`]).
pub(crate) async fn list_settled(app: &TestApp) -> Vec<bpb::BillingEvent> {
    list_all(app).await
}

/// The types of `user`'s events, in stream order.
pub(crate) fn types_of<'a>(events: &'a [bpb::BillingEvent], user: &str) -> Vec<&'a str> {
    events.iter().filter(|e| e.user_id == user).map(type_name).collect()
}
